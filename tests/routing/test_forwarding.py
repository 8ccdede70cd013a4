"""Forwarding: rules select received instances, the queue holds them, C-STORE delivers them to
real peers (DCMTK storescp, a pynetdicom SCP that answers with failures)."""

import copy
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.db.models import Sum
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from archive.models import Instance
from archive.storage import Storage
from receiver.config import ConfigError, ForwardingEntry, RemoteAEEntry, resolve
from receiver.management.commands.scpstatus import status_text
from receiver.metrics import metrics_text
from receiver.status import receiver_status
from routing import forwarding
from routing.forwarding import forward_claim, forward_once, forward_queue_summary
from routing.models import ForwardCount, ForwardingRule, ForwardItem, RemoteAE
from tests.conftest import free_port, sample_file
from tests.peers import dataset_bytes, dcmtk_tool, eventually, scu


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(forwarding, "FIRST_BACKOFF", 0.2)
    monkeypatch.setattr(forwarding, "MAX_BACKOFF", 1.0)
    forwarding._down.clear()
    yield
    forwarding.forwarding_rules_forget()


class StoreSCP:
    """DCMTK's storescp on a free loopback port, writing what it receives into `folder` exactly
    as received (+B: it would otherwise recompute group lengths)."""

    def __init__(self, folder: Path, *args: str, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                dcmtk_tool("storescp"),
                "-aet",
                "DEST",
                "-od",
                str(folder),
                "+B",
                *args,
                str(self.port),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert eventually(self._listening, timeout=10), "storescp did not start"

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def received(self) -> dict[str, Path]:
        """SOP instance UID → file (complete files only: storescp writes them in place)."""
        found = {}
        for path in self.folder.iterdir():
            try:
                found[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
            except Exception:
                continue
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def datasets(count: int, name: str = "CT_small.dcm") -> list[Dataset]:
    """`count` instances of one new study, one series."""
    base = dcmread(sample_file(name))
    study, series = generate_uid(), generate_uid()
    result = []
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        result.append(ds)
    return result


def send(port: int, items: list[Dataset], calling: str = "MODALITY") -> list[int]:
    """C-STORE each dataset in its own transfer syntax on one association."""
    ae = scu(calling)
    for ds in items[:1]:
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in items]
    finally:
        assoc.release()


def forwarder(port: int, **rule) -> dict:
    """runscp options for one remote AE DEST on `port` and one rule to it."""
    return {
        "remote_aes": (RemoteAEEntry("DEST", "127.0.0.1", port),),
        "forwarding": (ForwardingEntry("DEST", **rule),),
    }


def stored_dataset(storage_dir: Path, sop_instance_uid: str) -> bytes:
    path = Instance.objects.get(sop_instance_uid=sop_instance_uid).path
    with Storage(storage_dir).open(path) as stream:
        raw = stream.read()
    tmp = storage_dir.parent / "stored.dcm"
    tmp.write_bytes(raw)
    return dataset_bytes(tmp)


def all_sent() -> bool:
    return not ForwardItem.objects.exclude(state=ForwardItem.SENT).exists()


def test_each_instance_arrives_at_storescp_bit_for_bit(start_scp, storage_dir, tmp_path):
    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(**forwarder(dest.port))
        items = datasets(5)
        assert send(scp.port, items) == [0] * 5
        assert ForwardItem.objects.count() == 5  # queued with the index rows
        assert eventually(lambda: len(dest.received()) == 5 and all_sent(), timeout=20)
        for uid, path in dest.received().items():
            assert dataset_bytes(path) == stored_dataset(storage_dir, uid)
        counts = dict(ForwardCount.objects.values_list("outcome", "count"))
        assert counts == {"sent": 5}
        metrics = metrics_text(storage_dir).decode()
        assert 'dicom_forwarded_total{destination="DEST",outcome="sent"} 5.0' in metrics
        assert 'dicom_forward_queue_depth{destination="DEST"} 0.0' in metrics
        status = receiver_status(timezone.now())
        assert status["forwarding"][0]["destination"] == "DEST"
        assert "DEST" in status_text(status)
    finally:
        dest.stop()


def test_compressed_instance_goes_as_stored_or_decompressed_when_refused(
    start_scp, storage_dir, tmp_path
):
    rle = datasets(1, "SC_rgb_rle.dcm")
    accepting = StoreSCP(tmp_path / "all", "+xa")
    plain = StoreSCP(tmp_path / "plain")  # DCMTK's default: uncompressed syntaxes only
    try:
        scp = start_scp(
            remote_aes=(
                RemoteAEEntry("DEST", "127.0.0.1", accepting.port),
                RemoteAEEntry("PLAIN", "127.0.0.1", plain.port),
            ),
            forwarding=(ForwardingEntry("DEST"), ForwardingEntry("PLAIN")),
        )
        assert send(scp.port, rle) == [0]
        assert eventually(lambda: accepting.received() and plain.received(), timeout=20)
        (as_stored,) = accepting.received().values()
        assert dcmread(as_stored).file_meta.TransferSyntaxUID == RLELossless
        assert dataset_bytes(as_stored) == stored_dataset(storage_dir, rle[0].SOPInstanceUID)
        (converted,) = plain.received().values()
        received = dcmread(converted)
        assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (received.pixel_array == rle[0].pixel_array).all()
    finally:
        accepting.stop()
        plain.stop()


def test_rule_filters_by_modality_and_calling_ae(start_scp, tmp_path):
    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(**forwarder(dest.port, modalities=("MR",), calling_aes=("MODALITY",)))
        assert send(scp.port, datasets(2)) == [0, 0]  # CT: not forwarded
        mr = datasets(2, "MR_small.dcm")
        assert send(scp.port, mr[:1], calling="OTHER") == [0]  # another sender: not forwarded
        assert send(scp.port, mr[1:]) == [0]
        assert list(ForwardItem.objects.values_list("instance__sop_instance_uid", flat=True)) == [
            mr[1].SOPInstanceUID
        ]
        assert eventually(lambda: len(dest.received()) == 1, timeout=20)
    finally:
        dest.stop()


def test_no_rule_means_no_receiver_in_the_ingest_transaction(start_scp):
    from archive import ingest_hooks
    from archive.signals import instance_stored_in_transaction

    scp = start_scp()
    assert send(scp.port, datasets(1)) == [0]
    assert not instance_stored_in_transaction.receivers
    assert not ingest_hooks.hooks
    assert not ForwardItem.objects.exists()


@pytest.mark.slow
def test_destination_down_while_200_arrive_then_all_delivered(start_scp, tmp_path):
    port = free_port()
    scp = start_scp(**forwarder(port))
    items = datasets(200)
    assert send(scp.port, items) == [0] * 200
    assert ForwardItem.objects.count() == 200
    # Retried against nothing for a while: the destination backs off, nothing is given up.
    time.sleep(2)
    assert not ForwardItem.objects.filter(state=ForwardItem.DEAD).exists()
    assert "no connection" in ForwardItem.objects.first().last_error
    dest = StoreSCP(tmp_path / "dest", port=port)
    try:
        assert eventually(lambda: all_sent(), timeout=60)
        received = dest.received()
        assert set(received) == {ds.SOPInstanceUID for ds in items}
        repeats = ForwardItem.objects.aggregate(n=Sum("repeats"))["n"]
        counts = dict(ForwardCount.objects.values_list("outcome", "count"))
        assert counts["sent"] == 200 + repeats
    finally:
        dest.stop()


def test_study_stable_rule_sends_the_study_once_stable(start_scp, tmp_path):
    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(**forwarder(dest.port, when="study_stable"), stable_age=0.5)
        items = datasets(3)
        assert send(scp.port, items) == [0] * 3
        assert not ForwardItem.objects.exists()  # not before the study is stable
        assert eventually(lambda: len(dest.received()) == 3, timeout=20)
        assert all_sent()
    finally:
        dest.stop()


class FailingSCP:
    """A pynetdicom storage SCP that answers every C-STORE 0xA700 with an error comment."""

    def __init__(self) -> None:
        def refuse(event):
            status = Dataset()
            status.Status = 0xA700
            status.ErrorComment = "Out of disk space"
            return status

        ae = AE(ae_title="DEST")
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)]
        )

    def stop(self) -> None:
        self.server.shutdown()


def test_failure_status_ends_as_dead_letter_with_status_and_comment(
    monkeypatch, transactional_db, storage_dir
):
    monkeypatch.setattr(forwarding, "MAX_ATTEMPTS", 2)
    peer = FailingSCP()
    try:
        instance = _indexed_instance(storage_dir)
        remote = RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=peer.port)
        forwarding.forward_enqueue(instance_ids=[instance.pk], destination=remote, origin="test")
        storage = Storage(storage_dir)
        forward_once(storage=storage, ae_title="TEST_SCP")
        item = ForwardItem.objects.get()
        assert (item.state, item.attempts) == (ForwardItem.PENDING, 1)
        time.sleep(0.3)
        forward_once(storage=storage, ae_title="TEST_SCP")
        item.refresh_from_db()
        assert item.state == ForwardItem.DEAD
        assert item.last_status == 0xA700
        assert item.last_error == "C-STORE status 0xA700: Out of disk space"
        (summary,) = forward_queue_summary()
        assert (summary.destination, summary.dead) == ("DEST", 1)
        # The admin's requeue brings it back.
        assert forwarding.forward_requeue(items=[item.pk]) == 1
        assert ForwardItem.objects.get().state == ForwardItem.PENDING
    finally:
        peer.stop()


def _indexed_instance(storage_dir: Path, *, new_uid: bool = False) -> Instance:
    from archive.services import IngestSettings, instance_store
    from tests.peers import transfer_syntax

    path = sample_file("CT_small.dcm")
    ds = dcmread(path)
    if new_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = storage_dir.parent / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
    storage = Storage(storage_dir)
    storage.prepare()
    result = instance_store(
        dataset=dataset_bytes(path),
        transfer_syntax_uid=transfer_syntax(path),
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        calling_ae_title="MODALITY",
        remote_address="127.0.0.1",
        settings=IngestSettings(storage=storage),
    )
    return Instance.objects.get(pk=result.instance_id)


def test_a_batch_whose_worker_died_is_claimed_again_after_its_lease(
    transactional_db, storage_dir, tmp_path
):
    dest = StoreSCP(tmp_path / "dest")
    try:
        instance = _indexed_instance(storage_dir)
        remote = RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=dest.port)
        forwarding.forward_enqueue(instance_ids=[instance.pk], destination=remote, origin="test")
        dead_worker = forward_claim(lease=0.5)  # claimed, then never finished
        assert dead_worker is not None
        assert forward_claim() is None  # nobody else takes it while the lease holds
        time.sleep(0.6)
        assert forward_once(storage=Storage(storage_dir), ae_title="TEST_SCP") == 1
        item = ForwardItem.objects.get()
        assert (item.state, item.repeats) == (ForwardItem.SENT, 1)
        assert dict(ForwardCount.objects.values_list("outcome", "count")) == {
            "sent": 1,
            "repeat": 1,
        }
    finally:
        dest.stop()


def test_a_batch_whose_process_is_gone_is_claimed_again_when_a_forwarder_starts(
    transactional_db, storage_dir
):
    import socket
    import subprocess
    import sys

    instance = _indexed_instance(storage_dir)
    remote = RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=9)
    forwarding.forward_enqueue(instance_ids=[instance.pk], destination=remote, origin="test")
    assert forward_claim() is not None  # by this process, which is alive: nothing to release
    assert forwarding.forward_orphans_release() == 0
    assert forward_claim() is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    host = socket.gethostname()
    ForwardItem.objects.update(claimed_by=f"{host}:{gone}")
    assert forwarding.forward_orphans_release() == 1
    again = forward_claim()
    assert again is not None and again.repeats == 1  # it may have been sent: a repeat
    # Another host's claimer cannot be checked from here: its lease decides.
    ForwardItem.objects.update(claimed_by=f"elsewhere-{host}:{gone}")
    assert forwarding.forward_orphans_release() == 0


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{destination: DEST, when: sometimes}", "forwarding[0].when: 'sometimes' is not one of"),
        ("{destination: DEST, modalities: [CT, XY]}", "forwarding[0].modalities: unknown modality"),
        ("{destination: DEST, sop_classes: [Nonsense]}", "forwarding[0].sop_classes"),
        ("{destination: DEST, colour: red}", "forwarding[0]: unknown key(s) colour"),
        (
            "{destination: DEST, deidentify: maybe}",
            "forwarding[0].deidentify: expected true or false, got 'maybe'",
        ),
        ("{when: instance}", "forwarding[0]: expected a rule with a destination"),
    ],
)
def test_bad_rule_is_one_error_naming_the_key(tmp_path, rule, message):
    path = tmp_path / "store_scp.yaml"
    path.write_text(f"forwarding:\n  - {rule}\n")
    with pytest.raises(ConfigError) as caught:
        resolve({}, path)
    assert message in str(caught.value)


def test_rule_naming_an_unknown_destination_stops_the_start(start_scp):
    from receiver.server import StartupError

    with pytest.raises(StartupError, match=r"forwarding\[0\]\.destination: 'NOWHERE' is not"):
        start_scp(forwarding=(ForwardingEntry("NOWHERE"),))
    assert not ForwardingRule.objects.exists()


def test_each_instance_arrives_at_orthanc_bit_for_bit(start_scp, storage_dir, tmp_path):
    import urllib.request

    from tests.orthanc import Orthanc

    orthanc = Orthanc(tmp_path / "orthanc", ae_title="ORTHANC", modalities={})
    try:
        scp = start_scp(
            remote_aes=(RemoteAEEntry("ORTHANC", "127.0.0.1", orthanc.dicom_port),),
            forwarding=(ForwardingEntry("ORTHANC"),),
        )
        items = datasets(3) + datasets(1, "SC_rgb_rle.dcm")
        assert send(scp.port, items[:3]) == [0] * 3
        assert send(scp.port, items[3:]) == [0]
        assert eventually(lambda: len(orthanc.get("/instances")) == 4 and all_sent(), timeout=30)
        for orthanc_id in orthanc.get("/instances"):
            with urllib.request.urlopen(orthanc.url(f"/instances/{orthanc_id}/file")) as answer:
                raw = answer.read()
            path = tmp_path / "from-orthanc.dcm"
            path.write_bytes(raw)
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert dataset_bytes(path) == stored_dataset(storage_dir, uid)
    finally:
        orthanc.stop()


def test_admin_sends_a_selected_study_through_the_queue(admin_client, start_scp, tmp_path):
    from archive.models import Study

    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(remote_aes=(RemoteAEEntry("DEST", "127.0.0.1", dest.port),))
        items = datasets(3)
        assert send(scp.port, items) == [0] * 3
        assert not ForwardItem.objects.exists()  # no rule
        study = Study.objects.get()
        url = "/admin/archive/study/"
        chosen = {"action": "forward_to_remote_ae", "_selected_action": [study.pk]}
        page = admin_client.post(url, chosen)
        assert page.status_code == 200
        assert b"Send 3 instances of 1 selected" in page.content
        remote = RemoteAE.objects.get(ae_title="DEST")
        answer = admin_client.post(url, {**chosen, "confirm": "yes", "destination": remote.pk})
        assert answer.status_code == 302
        assert set(ForwardItem.objects.values_list("origin", flat=True)) == {"admin"}
        assert eventually(lambda: len(dest.received()) == 3 and all_sent(), timeout=20)
        listing = admin_client.get("/admin/routing/forwarditem/?state=sent")
        assert listing.status_code == 200 and b"DEST" in listing.content
    finally:
        dest.stop()


def test_rows_of_instances_deleted_since_they_were_queued_are_dropped(
    transactional_db, storage_dir
):
    from archive.deletion import index_delete

    instance = _indexed_instance(storage_dir)
    remote = RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=free_port())
    forwarding.forward_enqueue(instance_ids=[instance.pk], destination=remote, origin="test")
    storage = Storage(storage_dir)
    index_delete(Instance.objects.filter(pk=instance.pk), storage)
    assert ForwardItem.objects.count() == 1  # deletion stays one DELETE, no cascade
    assert forward_once(storage=storage, ae_title="TEST_SCP") == 0
    assert not ForwardItem.objects.exists()


def test_rows_queued_while_the_destination_is_down_wait_out_its_backoff(
    transactional_db, storage_dir
):
    """After a failed association, rows queued for that destination are not claimed (and tried
    again, each a write transaction beside ingest) before its backoff ends; a requeued row is."""
    first = _indexed_instance(storage_dir)
    remote = RemoteAE.objects.create(ae_title="DOWN", host="127.0.0.1", port=free_port())
    storage = Storage(storage_dir)
    forwarding.forward_enqueue(instance_ids=[first.pk], destination=remote, origin="test")
    assert forward_once(storage=storage, ae_title="TEST_SCP") == 0
    failed = ForwardItem.objects.get()
    assert "no connection" in failed.last_error

    second = _indexed_instance(storage_dir, new_uid=True)
    forwarding.forward_enqueue(instance_ids=[second.pk], destination=remote, origin="rule")
    assert ForwardItem.objects.get(instance_id=second.pk).next_attempt_at <= timezone.now()
    assert forward_claim() is None  # due, but the destination is backing off

    assert forwarding.forward_requeue(items=[failed.pk]) == 1
    batch = forward_claim()
    assert batch is not None and batch.ids == (failed.pk,)
    third = _indexed_instance(storage_dir, new_uid=True)
    forwarding.forward_enqueue(instance_ids=[third.pk], destination=remote, origin="admin")
    by_hand = forward_claim()  # an admin's send is not held back
    assert by_hand is not None
    assert by_hand.ids == (ForwardItem.objects.get(instance_id=third.pk).pk,)

    time.sleep(forwarding.FIRST_BACKOFF + 0.1)
    later = forward_claim()
    assert later is not None and later.ids == (ForwardItem.objects.get(instance_id=second.pk).pk,)
