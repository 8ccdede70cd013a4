"""Storage Commitment Push Model against the real SCP, with pynetdicom as the requester (SCU)
that also listens for the N-EVENT-REPORT."""

import contextlib
import queue
import threading

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from archive.models import Instance
from routing.models import CommitmentTransaction, RemoteAE
from tests.conftest import free_port, sample_file
from tests.peers import eventually, scu, send_files

INSTANCE = "1.2.840.10008.1.20.1.1"


class Requester:
    """A modality asking for commitment: its SCP receives the N-EVENT-REPORTs."""

    def __init__(self, title: str = "COMMITTER") -> None:
        self.title = title
        self.reports: queue.Queue = queue.Queue()
        self.ae = AE(ae_title=title)
        # We are the SCU of Storage Commitment on the association the archive opens.
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.port = free_port()
        self.server = None

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._report)],
        )

    def _report(self, event):
        self.reports.put((event.request.EventTypeID, event.event_information))
        return 0x0000, None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def request(self, port: int, references: list[tuple[str, str]], uid: str) -> int:
        ae = scu(self.title)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
        assert assoc.is_established
        info = Dataset()
        info.TransactionUID = uid
        info.ReferencedSOPSequence = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            info.ReferencedSOPSequence.append(item)
        try:
            status, reply = assoc.send_n_action(info, 1, StorageCommitmentPushModel, INSTANCE)
            assert not reply  # no dataset in the N-ACTION-RSP
            return status.Status
        finally:
            assoc.release()


@pytest.fixture
def requester():
    peer = Requester()
    peer.start()
    RemoteAE.objects.create(ae_title=peer.title, host="127.0.0.1", port=peer.port)
    yield peer
    peer.stop()


def _stored(scp) -> list[tuple[str, str]]:
    return stored_at(scp.port)


def stored_at(port: int) -> list[tuple[str, str]]:
    """Store two sample files at `port`; their (class, instance) references."""
    names = ["CT_small.dcm", "MR_small.dcm"]
    assert send_files(port, [sample_file(n) for n in names]) == [0, 0]
    return [
        (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        for ds in (dcmread(sample_file(n), stop_before_pixels=True) for n in names)
    ]


def test_stored_instances_are_committed(scp, requester):
    references = _stored(scp)
    uid = generate_uid()
    assert requester.request(scp.port, references, uid) == 0x0000
    event_type, info = requester.reports.get(timeout=20)
    assert event_type == 1
    assert info.TransactionUID == uid
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == {
        r[1] for r in references
    }
    assert "FailedSOPSequence" not in info
    assert eventually(
        lambda: (
            CommitmentTransaction.objects.get(transaction_uid=uid).state
            == CommitmentTransaction.DELIVERED
        )
    )
    assert CommitmentTransaction.objects.get(transaction_uid=uid).failures == []


def test_unknown_and_damaged_instances_fail_with_their_reasons(scp, requester, storage_dir):
    references = _stored(scp)
    damaged = Instance.objects.get(sop_instance_uid=references[1][1])
    path = storage_dir / damaged.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different SHA-256
    path.write_bytes(bytes(data))
    unknown = (references[0][0], generate_uid())
    uid = generate_uid()
    assert requester.request(scp.port, [*references, unknown], uid) == 0x0000
    event_type, info = requester.reports.get(timeout=20)
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [references[0][1]]
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason for i in info.FailedSOPSequence}
    assert reasons == {references[1][1]: 0x0110, unknown[1]: 0x0112}


def test_a_request_without_transaction_uid_is_refused(scp, requester):
    ae = scu(requester.title)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    info = Dataset()
    info.ReferencedSOPSequence = []
    try:
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, INSTANCE)
        assert status.Status == 0x0115
        status, _ = assoc.send_n_action(info, 7, StorageCommitmentPushModel, INSTANCE)
        assert status.Status == 0x0123
    finally:
        assoc.release()


def test_pending_report_survives_a_restart_and_an_unreachable_requester(start_scp):
    peer = Requester("LATECOMER")
    RemoteAE.objects.create(ae_title=peer.title, host="127.0.0.1", port=peer.port)
    first = start_scp()
    references = _stored(first)
    uid = generate_uid()
    assert peer.request(first.port, references, uid) == 0x0000  # nobody listens yet

    def attempted() -> bool:
        row = CommitmentTransaction.objects.get(transaction_uid=uid)
        return row.attempts >= 1

    assert eventually(attempted, timeout=20)
    row = CommitmentTransaction.objects.get(transaction_uid=uid)
    assert row.state == CommitmentTransaction.PENDING
    assert row.last_error
    assert row.next_attempt_at > row.requested_at  # backoff
    first.stop(grace=1)

    peer.start()
    try:
        CommitmentTransaction.objects.filter(pk=row.pk).update(next_attempt_at=row.requested_at)
        start_scp()  # a new receiver process picks the row up
        event_type, info = peer.reports.get(timeout=20)
    finally:
        peer.stop()
    assert event_type == 1
    assert info.TransactionUID == uid


def _request_keeping_the_association(port: int, references, uid: str, *, scp_role: bool):
    """N-ACTION from a requester that proposes the SCP role (or not) and keeps its association
    open for 15 s at most, taking an N-EVENT-REPORT there; (status, reports received)."""
    from pynetdicom import build_role

    reports: queue.Queue = queue.Queue()

    def report(event):
        reports.put((event.request.EventTypeID, event.event_information))
        return 0x0000, None

    ae = scu("KEEPER")
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    roles = [role] if scp_role else []
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="TEST_SCP", ext_neg=roles,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, report)],
    )  # fmt: skip
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = uid
    info.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        info.ReferencedSOPSequence.append(item)
    try:
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, INSTANCE)
        received = []
        with contextlib.suppress(queue.Empty):
            received.append(reports.get(timeout=15 if scp_role else 3))
        return status.Status, received
    finally:
        _release_after_reports(assoc)


def _release_after_reports(assoc) -> None:
    """assoc.release() once pynetdicom's threads serving N-EVENT-REPORTs have ended.

    pynetdicom 3.0 serves an N-EVENT-REPORT in a thread of its own, which marks the reactor
    paused while it runs and not paused when it ends. Our handler hands the report over before
    that thread ends; if it ends after the reactor paused for release(), release() waits
    forever for a pause already taken (a hung CI run: the requester in release(), its reactor
    paused, the connection long closed by the receiver).
    """
    for thread in threading.enumerate():
        if thread.name.endswith("(_serve_request)"):
            thread.join(10)
    assoc.release()


def test_report_on_the_same_association_when_the_requester_took_the_scp_role(scp):
    # Not in the remote AE table: a new association to it would be impossible.
    references = _stored(scp)
    uid = generate_uid()
    status, received = _request_keeping_the_association(scp.port, references, uid, scp_role=True)
    assert status == 0x0000
    [(event_type, info)] = received
    assert event_type == 1
    assert info.TransactionUID == uid
    assert len(info.ReferencedSOPSequence) == 2
    assert eventually(
        lambda: (
            CommitmentTransaction.objects.get(transaction_uid=uid).state
            == CommitmentTransaction.DELIVERED
        )
    )


def test_without_the_scp_role_the_report_goes_on_a_new_association(scp):
    references = _stored(scp)
    requester = Requester("KEEPER")
    requester.start()
    RemoteAE.objects.create(ae_title="KEEPER", host="127.0.0.1", port=requester.port)
    try:
        uid = generate_uid()
        status, received = _request_keeping_the_association(
            scp.port, references, uid, scp_role=False
        )
        assert status == 0x0000
        assert received == []  # nothing on the requester's own association
        event_type, info = requester.reports.get(timeout=20)
        assert (event_type, info.TransactionUID) == (1, uid)
    finally:
        requester.stop()
