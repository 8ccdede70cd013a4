"""The association log: one row per association attempt, written by real associations."""

import time

from django.urls import reverse
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, Verification

from receiver.config import AllowedPeer
from receiver.models import AssociationLog
from tests.conftest import sample_file
from tests.peers import dataset_bytes, scu, send_files, send_partial_then_abort, send_raw


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def _ended() -> bool:
    return not AssociationLog.objects.filter(outcome=AssociationLog.ACCEPTED).exists()


def test_released_association_is_logged_with_its_counts(scp):
    path = sample_file("CT_small.dcm")
    assert send_files(scp.port, [path, path], calling="MODALITY") == [0x0000, 0x0000]
    send_raw(scp.port, sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3", payload=b"junk")
    _wait_for(_ended)
    first, second = AssociationLog.objects.order_by("started_at")
    assert first.calling_ae_title == "MODALITY"
    assert first.called_ae_title == "TEST_SCP"
    assert first.peer_address == "127.0.0.1"
    assert first.peer_port > 0
    assert first.outcome == AssociationLog.RELEASED
    assert (first.instances_stored, first.duplicates, first.failures) == (1, 1, {})
    assert first.bytes_received == 2 * len(dataset_bytes(path))
    assert first.ended_at >= first.started_at
    assert second.failures == {"0xC000": 1}


def test_rejected_association_is_logged_with_the_reason(start_scp):
    server = start_scp(require_known_ae=True, allowed_aes=(AllowedPeer("KNOWN"),))
    ae = scu("STRANGER")
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assert ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP").is_rejected
    row = AssociationLog.objects.get()
    assert row.outcome == AssociationLog.REJECTED
    assert "STRANGER" in row.reason and "not allowed" in row.reason


def test_aborted_association_is_logged(scp):
    ds = dcmread(sample_file("CT_small.dcm"), stop_before_pixels=True)
    send_partial_then_abort(
        scp.port,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        payload=dataset_bytes(sample_file("CT_small.dcm")),
    )
    _wait_for(_ended)
    assert AssociationLog.objects.get().outcome == AssociationLog.ABORTED


def test_idle_association_is_logged_as_timed_out(start_scp):
    server = start_scp(network_timeout=1.0)
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    _wait_for(_ended)
    assert AssociationLog.objects.get().outcome == AssociationLog.TIMED_OUT


def test_dropped_connection_is_logged_as_aborted(scp):
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    assert assoc.is_established
    assoc.dul.socket.socket.close()  # no release, no abort: the connection just goes
    _wait_for(_ended)
    assert AssociationLog.objects.get().outcome == AssociationLog.ABORTED


def test_log_is_read_only_newest_first_and_filterable_in_the_admin(admin_client, scp):
    assert send_files(scp.port, [sample_file("CT_small.dcm")], calling="FIRST") == [0]
    assert send_files(scp.port, [sample_file("MR_small.dcm")], calling="SECOND") == [0]
    _wait_for(_ended)
    url = reverse("admin:receiver_associationlog_changelist")
    page = admin_client.get(url).content.decode()
    assert page.index("SECOND") < page.index("FIRST")
    filtered = admin_client.get(url, {"calling_ae_title": "FIRST"})
    assert [row.calling_ae_title for row in filtered.context["cl"].result_list] == ["FIRST"]
    outcome = admin_client.get(url, {"outcome": "released"})
    assert outcome.context["cl"].result_count == 2
    row = AssociationLog.objects.first()
    change = admin_client.get(reverse("admin:receiver_associationlog_change", args=[row.pk]))
    assert 'name="outcome"' not in change.content.decode()
