"""C-STOREs served on the connection's own thread (receiver.transport.fastpath), over real
associations: PDVs fragmented and grouped every way PS3.8 allows, messages it hands to
pynetdicom, and peers that break the framing."""

import struct
import time

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from archive.models import Instance
from receiver.transport import fastpath
from tests.conftest import sample_file, staging_files, stored_files
from tests.peers import _store_request, dataset_bytes, eventually, reactor_paused, scu

CT = sample_file("CT_small.dcm")


def _associate(port: int, maximum_pdu: int = 16384):
    ae = scu()
    ae.maximum_pdu_size = maximum_pdu
    for sop_class in (Verification, CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    return assoc


def _context_id(assoc, sop_class: str) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def _pdvs(assoc, sop_class: str, path, fragment: int, message_id: int = 1) -> list[list]:
    """The C-STORE-RQ for `path` as PDVs of at most `fragment` bytes: [context ID, control
    header + data] each, in order."""
    ds = dcmread(path, stop_before_pixels=True)
    request = _store_request(sop_class, ds.SOPInstanceUID, dataset_bytes(path))
    request.MessageID = message_id
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    cx_id = _context_id(assoc, CTImageStorage)
    return [
        [pdv[0], bytes(pdv[1])]
        for primitive in message.encode_msg(cx_id, fragment + 6)
        for pdv in primitive.presentation_data_value_list
    ]


def _send(assoc, groups: list[list]) -> None:
    """One P-DATA-TF PDU per group of PDVs."""
    for group in groups:
        primitive = P_DATA()
        primitive.presentation_data_value_list = group
        assoc.dul.send_pdu(primitive)


def _exchange(assoc, groups: list[list], timeout: float = 10):
    """Send `groups` (as _send) and return the next DIMSE message the peer sends us, or None
    if the association ended first. The association's reactor is paused before sending, as
    pynetdicom's own send_c_*() do: a reply arriving before the pause would be taken by the
    reactor as unexpected and dropped."""
    with reactor_paused(assoc):
        _send(assoc, groups)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not assoc.is_aborted:
            _, message = assoc.dimse.get_msg(block=False)
            if message is not None:
                return message
            time.sleep(0.001)
        return None


def _server_receiver(server):
    (served,) = server.ae.active_associations
    return served.dul.__dict__.get("_receiver_fastpath")


def test_c_store_is_served_on_the_reading_thread_and_answered_in_full(scp, storage_dir):
    assoc = _associate(scp.port)
    try:
        status = assoc.send_c_store(CT)
        receiver = _server_receiver(scp)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert receiver is not None and not receiver.disabled
    (instance,) = Instance.objects.all()
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(CT)


def _grouped(pdvs: list, how: str) -> list[list]:
    commands = [pdv for pdv in pdvs if pdv[1][0] & 1]
    data = [pdv for pdv in pdvs if not pdv[1][0] & 1]
    assert len(commands) >= 3 and len(data) >= 3  # both really fragmented
    if how == "one PDV per PDU":
        return [[pdv] for pdv in pdvs]
    if how == "everything in one PDU":
        return [pdvs]
    # The last command fragment shares its PDU with the first dataset fragment; pairs after.
    rest = data[1:]
    return [
        commands[:-1],
        [commands[-1], data[0]],
        *[rest[i : i + 2] for i in range(0, len(rest), 2)],
    ]


@pytest.mark.parametrize(
    "how", ["one PDV per PDU", "everything in one PDU", "command and data share a PDU"]
)
def test_fragments_in_any_grouping_are_stored_bit_for_bit(scp, storage_dir, how):
    assoc = _associate(scp.port)
    try:
        response = _exchange(assoc, _grouped(_pdvs(assoc, CTImageStorage, CT, fragment=48), how))
    finally:
        assoc.release()
    assert response is not None and response.Status == 0x0000
    assert response.MessageIDBeingRespondedTo == 1
    assert response.AffectedSOPClassUID == CTImageStorage
    assert response.AffectedSOPInstanceUID == dcmread(CT, stop_before_pixels=True).SOPInstanceUID
    (instance,) = Instance.objects.all()
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(CT)


def test_command_fragments_smaller_than_an_element_header(scp, storage_dir):
    assoc = _associate(scp.port)
    try:
        pdvs = _pdvs(assoc, CTImageStorage, CT, fragment=5)
        commands = [pdv for pdv in pdvs if pdv[1][0] & 1]
        cx_id = commands[0][0]
        # The commands in PDUs of their own, then the data set in one PDV.
        groups = [[pdv] for pdv in commands] + [[[cx_id, b"\x02" + dataset_bytes(CT)]]]
        response = _exchange(assoc, groups)
    finally:
        assoc.release()
    assert len(commands) > 20
    assert response is not None and response.Status == 0x0000
    (instance,) = Instance.objects.all()
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(CT)


def test_echo_and_a_store_on_the_wrong_context_go_to_pynetdicom_and_stores_continue(scp):
    assoc = _associate(scp.port)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        # A CT dataset announced as MR on the CT context: pynetdicom's path and our handler,
        # which finds the dataset's SOP class is not the request's.
        pdvs = _pdvs(assoc, MRImageStorage, CT, fragment=16000)
        response = _exchange(assoc, [pdvs])
        assert response is not None and response.Status == 0xA900
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(CT).Status == 0x0000
        receiver = _server_receiver(scp)
    finally:
        assoc.release()
    assert not receiver.disabled  # the C-STORE after them was served on the fast path
    assert Instance.objects.count() == 1


def _aborted(assoc) -> bool:
    return eventually(lambda: assoc.is_aborted)


def test_new_message_inside_a_served_dataset_aborts_and_leaves_nothing(scp, storage_dir):
    assoc = _associate(scp.port)
    pdvs = _pdvs(assoc, CTImageStorage, CT, fragment=4000)
    commands = [pdv for pdv in pdvs if pdv[1][0] & 1]
    data = [pdv for pdv in pdvs if not pdv[1][0] & 1]
    _send(assoc, [commands, data[:2], commands])
    assert _aborted(assoc)
    assert not Instance.objects.exists()
    assert eventually(lambda: staging_files(storage_dir) == [])
    assert stored_files(storage_dir) == []
    assert _store_and_release(scp.port) == 0x0000


def _store_and_release(port: int) -> int:
    assoc = _associate(port)
    try:
        return assoc.send_c_store(CT).Status
    finally:
        assoc.release()


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">LBB", 500, 1, 0x03) + b"\0" * 10,  # item longer than its PDU
        struct.pack(">LBB", 1, 1, 0x03),  # item too short for its own header
        b"\0\0\0",  # a PDU that ends inside an item header
    ],
    ids=["overlong item", "short item", "truncated header"],
)
def test_p_data_whose_items_do_not_add_up_is_aborted(scp, body):
    assoc = _associate(scp.port)
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(body)) + body)
    assert _aborted(assoc)
    assert _store_and_release(scp.port) == 0x0000


def test_response_is_fragmented_to_the_peer_maximum_pdu(scp):
    assoc = _associate(scp.port, maximum_pdu=64)
    try:
        status = assoc.send_c_store(CT)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert Instance.objects.count() == 1


def test_response_encodes_as_pynetdicom_encodes_it():
    ds = dcmread(CT, stop_before_pixels=True)
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Status = 0xA700
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdu,) = message.encode_msg(1, 2**16)
    ((_, theirs),) = pdu.presentation_data_value_list

    uid = ds.SOPInstanceUID.encode()
    ours = fastpath.p_data(
        1,
        fastpath.store_response(
            sop_class_uid=ds.SOPClassUID.encode(),
            sop_instance_uid=uid,
            message_id=(7).to_bytes(2, "little"),
            status=0xA700,
        ),
        0,
    )
    assert ours[6:10] == struct.pack(">L", len(theirs) + 1)  # item length: context ID + data
    assert ours[11:] == theirs


def test_negotiation_leaves_the_ae_contexts_as_configured(scp):
    def snapshot():
        return [
            (cx.abstract_syntax, list(cx.transfer_syntax), cx.context_id, cx.result)
            for cx in scp.ae.supported_contexts
        ]

    before = snapshot()
    assert _store_and_release(scp.port) == 0x0000
    assoc = _associate(scp.port)  # MR and Verification too, each negotiated to one syntax
    assoc.release()
    assert snapshot() == before
    assert all(context_id is None and result is None for _, _, context_id, result in before)
