"""Access control and limits over real associations (pynetdicom SCU, DCMTK tools)."""

import contextlib
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from archive.models import Instance
from receiver.config import AllowedPeer
from receiver.models import AllowedAE, SOPClassRule
from tests.conftest import sample_file
from tests.e2e.test_storescu import SAMPLE_STUDY
from tests.peers import (
    _store_request,
    dataset_bytes,
    eventually,
    reactor_paused,
    run_dcmtk,
    scu,
)


def associate(port: int, calling: str = "TEST_SCU", called: str = "TEST_SCP", contexts=None):
    ae = scu(calling)
    for sop_class in contexts or [Verification]:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called)


def rejection(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected, "association was not rejected"
    response = assoc.acceptor.primitive
    return response.result, response.result_source, response.diagnostic


def echo_ok(port: int, **kwargs) -> bool:
    assoc = associate(port, **kwargs)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0x0000


def test_known_ae_from_configuration_is_accepted_and_unknown_rejected_with_reason_3(start_scp):
    server = start_scp(require_known_ae=True, allowed_aes=(AllowedPeer("MODALITY"),))
    assert echo_ok(server.port, calling="MODALITY")
    assert rejection(associate(server.port, calling="STRANGER")) == (0x01, 0x01, 0x03)


def test_known_ae_from_another_host_is_rejected(start_scp):
    server = start_scp(
        require_known_ae=True,
        allowed_aes=(AllowedPeer("FAR_AWAY", "10.99.0.0/16"), AllowedPeer("LOCAL", "127.0.0.0/8")),
    )
    assert rejection(associate(server.port, calling="FAR_AWAY")) == (0x01, 0x01, 0x03)
    assert echo_ok(server.port, calling="LOCAL")


def test_admin_whitelist_changes_apply_to_the_next_association(start_scp):
    server = start_scp(require_known_ae=True)
    assert rejection(associate(server.port, calling="NEW_CT")) == (0x01, 0x01, 0x03)
    row = AllowedAE.objects.create(ae_title="NEW_CT", host="127.0.0.1")
    assert echo_ok(server.port, calling="NEW_CT")
    row.enabled = False
    row.save()
    assert rejection(associate(server.port, calling="NEW_CT")) == (0x01, 0x01, 0x03)
    row.enabled = True
    row.host = "192.0.2.7"
    row.save()
    assert rejection(associate(server.port, calling="NEW_CT")) == (0x01, 0x01, 0x03)


def test_whitelist_not_enforced_by_default(scp):
    assert echo_ok(scp.port, calling="ANYONE")


def test_wrong_called_ae_title_is_rejected_with_reason_7_when_required(start_scp):
    server = start_scp(require_called_ae_title=True)
    assert rejection(associate(server.port, called="NOT_US")) == (0x01, 0x01, 0x07)
    assert echo_ok(server.port, called="TEST_SCP")


def test_called_ae_title_is_not_checked_by_default(scp):
    assert echo_ok(scp.port, called="WHATEVER")


def test_echoscu_from_unknown_ae_reports_the_rejection(start_scp):
    server = start_scp(require_known_ae=True, allowed_aes=(AllowedPeer("MODALITY"),))
    result = run_dcmtk("echoscu", "-aet", "STRANGER", "-aec", "TEST_SCP", "127.0.0.1", server.port)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    allowed = run_dcmtk("echoscu", "-aet", "MODALITY", "-aec", "TEST_SCP", "127.0.0.1", server.port)
    assert allowed.returncode == 0, allowed.stderr


def test_filtered_sop_class_is_refused_at_negotiation(start_scp):
    server = start_scp(accepted_sop_classes=("1.2.840.10008.5.1.4.1.1.2",))
    assoc = associate(server.port, contexts=[CTImageStorage, MRImageStorage, Verification])
    assert assoc.is_established
    results = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {CTImageStorage, Verification}
    assert results == {MRImageStorage: 0x03}  # abstract syntax not supported


def test_storescu_reports_filtered_class_as_not_sent_and_accepted_ones_arrive(
    start_scp, storage_dir
):
    server = start_scp(accepted_sop_classes=tuple(_ct_classes()))
    result = run_dcmtk(
        "storescu", "-aec", "TEST_SCP", "127.0.0.1", server.port,
        SAMPLE_STUDY / "CT_small.dcm", SAMPLE_STUDY / "MR_small.dcm",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "No presentation context for: (MR)" in output
    assert list(Instance.objects.values_list("sop_class_uid", flat=True)) == [CTImageStorage]
    echo = run_dcmtk("echoscu", "-aec", "TEST_SCP", "127.0.0.1", server.port)
    assert echo.returncode == 0


def _ct_classes():
    from receiver.sop_classes import sop_classes_parse

    return sop_classes_parse(["CT"])


def test_admin_sop_class_rules_narrow_and_widen_without_restart(start_scp):
    server = start_scp(accepted_sop_classes=tuple(_ct_classes()))
    contexts = [CTImageStorage, MRImageStorage]

    def accepted() -> set[str]:
        assoc = associate(server.port, contexts=contexts)
        classes = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        if assoc.is_established:
            assoc.release()
        return classes

    assert accepted() == {CTImageStorage}
    rule = SOPClassRule.objects.create(sop_classes="MR", action=SOPClassRule.ACCEPT)
    assert accepted() == {CTImageStorage, MRImageStorage}
    SOPClassRule.objects.create(sop_classes="CT Image Storage", action=SOPClassRule.REFUSE)
    assert accepted() == {MRImageStorage}
    rule.delete()
    assert accepted() == set()  # nothing left: the requestor aborts, nothing accepted


def test_associations_beyond_the_limit_are_rejected_transient_and_others_unaffected(start_scp):
    server = start_scp(max_associations=2)
    held = [associate(server.port, contexts=[CTImageStorage]) for _ in range(2)]
    assert all(assoc.is_established for assoc in held)
    assert rejection(associate(server.port)) == (0x02, 0x03, 0x02)  # local limit exceeded
    ct = dcmread(sample_file("CT_small.dcm"))
    assert held[0].send_c_store(ct).Status == 0x0000
    for assoc in held:
        assoc.release()
    assert eventually(lambda: echo_ok(server.port))


def test_more_concurrent_senders_than_allowed_get_exactly_the_limit(start_scp):
    server = start_scp(max_associations=3)
    outcomes: list[tuple] = []
    start = threading.Barrier(8)

    def sender() -> None:
        start.wait()
        assoc = associate(server.port, contexts=[Verification])
        if assoc.is_established:
            time.sleep(2.0)  # hold the place while all the others try
            assoc.release()
            outcomes.append(("accepted",))
        else:
            outcomes.append(rejection(assoc))

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == {("accepted",): 3, (0x02, 0x03, 0x02): 5}
    assert echo_ok(server.port)


def test_idle_peer_is_dropped_after_the_network_timeout_and_frees_its_slot(start_scp):
    server = start_scp(max_associations=1, network_timeout=1.0)
    idle = associate(server.port)
    assert idle.is_established
    assert rejection(associate(server.port)) == (0x02, 0x03, 0x02)
    deadline = time.monotonic() + 10
    while idle.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not idle.is_established
    assert eventually(lambda: echo_ok(server.port))


@pytest.mark.parametrize(("pdu_type", "length"), [(0x04, 2**31), (0x04, 4097), (0x05, 2**24)])
def test_over_long_pdu_is_aborted_from_its_header(start_scp, pdu_type, length):
    """Only the header is sent: the abort comes before any of the announced body arrives, so
    nothing of that size is ever buffered."""
    server = start_scp(max_pdu=4096)
    assoc = associate(server.port, contexts=[CTImageStorage])
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", pdu_type, 0, length))
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert echo_ok(server.port)


def test_over_long_pdu_after_one_of_unknown_type_is_still_refused_from_its_header(
    start_scp, caplog
):
    """pynetdicom reads no body after a header of unknown type: the next header must be
    checked like any other, not taken for that body and let through unchecked. (The first
    unknown header aborts the association; pynetdicom reads the second while it waits for
    the connection to close.)"""
    server = start_scp(max_pdu=4096)
    assoc = associate(server.port, contexts=[CTImageStorage])
    assert assoc.is_established
    # Our side's reactor paused: it must not read the receiver's A-ABORT and close the
    # connection before the receiver has read what follows.
    with reactor_paused(assoc):
        raw = assoc.dul.socket.socket
        unknown = struct.pack(">BBL", 0xFF, 0, 0)
        raw.sendall(unknown + unknown + struct.pack(">BBL", 0x04, 0, 2**31))
        with contextlib.suppress(OSError):
            raw.sendall(bytes(2**20))  # what an unchecked reader would buffer
        assert eventually(lambda: "PDU of type 0x04 announces 2147483648 bytes" in caplog.text)
    assert echo_ok(server.port)


def test_peer_sending_pdus_larger_than_negotiated_is_aborted(start_scp, storage_dir):
    server = start_scp(max_pdu=4096)
    path = sample_file("CT_small.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    assoc = associate(server.port, contexts=[CTImageStorage])
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 4096
    message = C_STORE_RQ()
    message.primitive_to_message(
        _store_request(ds.SOPClassUID, ds.SOPInstanceUID, dataset_bytes(path))
    )
    for fragment in message.encode_msg(assoc.accepted_contexts[0].context_id, 32768):
        assoc.dul.send_pdu(fragment)
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert not Instance.objects.exists()
    assert echo_ok(server.port)


@pytest.mark.parametrize("max_pdu", [0, 65536])
def test_advertised_maximum_pdu_follows_the_setting(start_scp, max_pdu):
    server = start_scp(max_pdu=max_pdu)
    assoc = associate(server.port)
    assert assoc.acceptor.maximum_length == max_pdu
    assoc.release()


def test_silent_connection_is_dropped_after_the_acse_timeout(start_scp):
    server = start_scp(acse_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        silent.settimeout(10)
        start = time.monotonic()
        assert silent.recv(1) == b""  # the receiver closed it
        assert 0.5 < time.monotonic() - start < 8
    assert echo_ok(server.port)
