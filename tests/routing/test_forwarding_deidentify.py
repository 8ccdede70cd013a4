"""Forwarding rules with `deidentify`: compressed instances keep their pixel data as stored,
and a destination with such a rule gets only de-identified copies, the admin's sends too.
Real peers: DCMTK storescp. (Consistency across processes: tests/e2e.)"""

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from archive.models import Instance
from receiver.config import ForwardingEntry, RemoteAEEntry, resolve
from routing.forwarding import forward_enqueue
from routing.models import ForwardingRule, RemoteAE
from tests.peers import eventually
from tests.routing.test_forwarding import (  # noqa: F401 (fast_retries: autouse fixture)
    StoreSCP,
    all_sent,
    datasets,
    fast_retries,
    send,
)


def test_compressed_instance_is_deidentified_with_its_pixel_data_as_stored(start_scp, tmp_path):
    rle = datasets(1, "SC_rgb_rle.dcm")
    accepting = StoreSCP(tmp_path / "all", "+xa")
    plain = StoreSCP(tmp_path / "plain")  # uncompressed syntaxes only
    try:
        scp = start_scp(
            remote_aes=(
                RemoteAEEntry("DEST", "127.0.0.1", accepting.port),
                RemoteAEEntry("PLAIN", "127.0.0.1", plain.port),
            ),
            forwarding=(
                ForwardingEntry("DEST", deidentify=True),
                ForwardingEntry("PLAIN", deidentify=True),
            ),
        )
        assert send(scp.port, rle) == [0]
        assert eventually(lambda: accepting.received() and plain.received(), timeout=20)
        (as_stored,) = (dcmread(p) for p in accepting.received().values())
        (converted,) = (dcmread(p) for p in plain.received().values())
    finally:
        accepting.stop()
        plain.stop()
    original = rle[0]
    assert as_stored.file_meta.TransferSyntaxUID == RLELossless
    assert as_stored.PixelData == original.PixelData  # the compressed fragments, untouched
    assert converted.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (converted.pixel_array == original.pixel_array).all()
    for ds in (as_stored, converted):
        assert ds.SOPInstanceUID != original.SOPInstanceUID
        assert ds.PatientID != original.PatientID
        assert str(ds.PatientName) != str(original.PatientName)
    # Two destinations, one seed: the same pseudonyms.
    assert as_stored.SOPInstanceUID == converted.SOPInstanceUID
    assert as_stored.PatientID == converted.PatientID


def test_admin_send_to_a_deidentifying_destination_is_deidentified(start_scp, tmp_path):
    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(remote_aes=(RemoteAEEntry("DEST", "127.0.0.1", dest.port),))
        items = datasets(2)
        assert send(scp.port, items) == [0, 0]
        remote = RemoteAE.objects.get(ae_title="DEST")
        # A disabled rule queues nothing, but still says what this destination may receive.
        ForwardingRule.objects.create(destination=remote, deidentify=True, enabled=False)
        queued = forward_enqueue(
            instance_ids=Instance.objects.values_list("pk", flat=True),
            destination=remote,
            origin="admin",
        )
        assert queued == 2
        assert eventually(lambda: len(dest.received()) == 2 and all_sent(), timeout=20)
        received = [dcmread(p) for p in dest.received().values()]
    finally:
        dest.stop()
    original_uids = {str(ds.SOPInstanceUID) for ds in items}
    assert not {str(ds.SOPInstanceUID) for ds in received} & original_uids
    assert {ds.PatientID for ds in received} != {items[0].PatientID}
    assert len({ds.PatientID for ds in received}) == 1


def test_check_config_shows_which_rules_deidentify(tmp_path):
    path = tmp_path / "store_scp.yaml"
    path.write_text("forwarding:\n  - {destination: DEST, deidentify: true}\n")
    config = resolve({}, path)
    assert config.forwarding[0].deidentify is True
    assert "instance → DEST (de-identified)" in config.report()


def test_c_move_to_a_deidentifying_destination_is_refused(start_scp, tmp_path):
    """What a rule promises de-identified must not reach the destination identified by a
    C-MOVE: refused (0xC000), nothing sent beyond the forwarded copy."""
    original = datasets(1)[0]
    dest = StoreSCP(tmp_path / "dest")
    try:
        scp = start_scp(
            remote_aes=(RemoteAEEntry("DEST", "127.0.0.1", dest.port),),
            forwarding=(ForwardingEntry("DEST", deidentify=True),),
        )
        assert send(scp.port, [original]) == [0]
        assert eventually(lambda: len(dest.received()) == 1, timeout=20)
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = original.StudyInstanceUID
        try:
            statuses = [
                status.Status
                for status, _ in assoc.send_c_move(
                    query, "DEST", StudyRootQueryRetrieveInformationModelMove
                )
                if status
            ]
        finally:
            assoc.release()
        assert statuses == [0xC000]
        received = [dcmread(p) for p in dest.received().values()]
    finally:
        dest.stop()
    assert len(received) == 1
    assert received[0].PatientID != original.PatientID
