"""C-STORE requests stored and answered in the thread that reads the connection.

pynetdicom passes each P-DATA-TF PDU through its state machine to a DIMSE provider that
reassembles the message and queues it for the association's reactor thread; that thread runs
the handler, encodes the response with pydicom and queues it back to the reading thread, which
sends it. For a 12 KB instance those hand-offs and encodings cost more time than storing the
instance (bench/run.py, py-spy: about 2.5 ms of 4). Here, once an association is established,
the reading (DUL) thread looks at each PDV itself:

- a C-STORE-RQ on an accepted presentation context whose abstract syntax is the request's SOP
  class has its dataset collected (receiver.transport.spool: in memory, or in a file once large), is
  stored by the store function given to `enable`, and is answered at once with a C-STORE-RSP
  encoded here (PS3.7 9.3.1.2, command set in implicit VR little endian, E.1);
- while we send C-GET sub-operations on the association (receiver.transport.accepted), the
  peer's C-STORE-RSPs are put in a queue for the thread sending them (`store_responses_take`)
  instead of crossing pynetdicom's state machine, DIMSE provider and pydicom's command-set
  decoding (about half a millisecond per sub-operation);
- every other message (C-ECHO, C-CANCEL, a C-STORE on another context, a command we cannot
  read) goes to pynetdicom unchanged, as a P-DATA-TF PDU of its PDVs, and is served by the
  event handlers.
  After anything out of sequence, the association is left to pynetdicom entirely.

A P-DATA-TF whose items do not add up, or a message we serve that is broken off by another,
gets what pynetdicom gives an invalid PDU: an A-ABORT (PS3.8 9.2, AA-8).

This reaches into pynetdicom's DUL: `DULServiceProvider._read_pdu_data` is replaced while an
association we serve is established (it reads PDUs as pynetdicom does and feeds its event and
PDU queues for everything it does not serve). tests/receiver/test_fastpath.py checks both paths
against the pinned version.
"""

import logging
import queue
from collections.abc import Callable
from typing import Any, Protocol

from pynetdicom import dul as _dul

from archive import dicom_bytes
from archive.dimse_codec import command_parse
from receiver.transport import spool
from receiver.transport.pdu_guard import pdu_check

logger = logging.getLogger(__name__)

P_DATA_TF = dicom_bytes.P_DATA_TF
_PDU_TYPES = dicom_bytes.PDU_TYPES
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101
_COMMAND_FRAGMENT, _LAST_FRAGMENT = dicom_bytes.PDV_COMMAND, dicom_bytes.PDV_LAST

_ELEMENT = dicom_bytes.ELEMENT_IMPLICIT
_ITEM = dicom_bytes.PDV_ITEM_HEADER
_PDU = dicom_bytes.PDU_HEADER


class Store(Protocol):
    def __call__(
        self,
        assoc: Any,
        *,
        received: spool.SpoolBuffer,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
    ) -> int: ...


class ProtocolError(Exception):
    """The peer's PDVs break PS3.8 / PS3.7 framing."""


def enable(ae: Any, store: Store) -> None:
    """Serve C-STORE requests to `ae`'s associations with `store` (returns the status)."""
    ae.__dict__["_receiver_store"] = store


def install(on_thread_exit: Callable[[], None]) -> None:
    """Replace pynetdicom's PDU reading (once per process); `on_thread_exit()` runs in each DUL
    thread as it ends (the store function may have opened resources there)."""
    if getattr(_dul.DULServiceProvider._read_pdu_data, "fastpath", False):
        return
    original = _dul.DULServiceProvider._read_pdu_data

    def _read_pdu_data(self: Any) -> None:
        store = _store_of(self)
        if store is None:
            original(self)
        else:
            _pdu_read(self, store)

    _read_pdu_data.fastpath = True  # type: ignore[attr-defined]
    _dul.DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]

    run_reactor = _dul.DULServiceProvider.run_reactor

    def _run_reactor(self: Any) -> None:
        try:
            run_reactor(self)
        finally:
            receiver = self.__dict__.pop("_receiver_fastpath", None)
            if receiver is not None:
                receiver.interrupt()
                on_thread_exit()

    _dul.DULServiceProvider.run_reactor = _run_reactor  # type: ignore[method-assign]


# Put in a store_responses queue: the association ended (no more responses will come), or
# pynetdicom serves the association from now on (wait for them with dimse.get_msg instead).
ENDED = None
FALLBACK = "fallback"


def store_responses_take(assoc: Any) -> "queue.SimpleQueue[dict[int, bytes] | str | None] | None":
    """A queue that receives the command set (elements by number) of every C-STORE-RSP the peer
    sends on `assoc`, an association it opened to us, until `store_responses_release`; then
    ENDED or FALLBACK. None when this module is not reading the association: take the
    responses from pynetdicom."""
    receiver = assoc.dul.__dict__.get("_receiver_fastpath")
    if receiver is None:
        return None
    responses: queue.SimpleQueue[dict[int, bytes] | str | None] = queue.SimpleQueue()
    # Set before the check: a reader giving up in between finds the queue and says FALLBACK.
    receiver.store_responses = responses
    if receiver.disabled:
        receiver.store_responses = None
        return None
    return responses


def store_responses_release(assoc: Any, responses: queue.SimpleQueue) -> None:
    """C-STORE-RSPs go to pynetdicom again."""
    receiver = assoc.dul.__dict__.get("_receiver_fastpath")
    if receiver is not None and receiver.store_responses is responses:
        receiver.store_responses = None


def _store_of(dul: Any) -> Store | None:
    assoc = dul.assoc
    if not assoc.is_acceptor or dul.state_machine.current_state != "Sta6":
        return None
    return assoc.ae.__dict__.get("_receiver_store")


def _pdu_read(dul: Any, store: Store) -> None:
    """Read one PDU in the data transfer state; what pynetdicom's `_read_pdu_data` does, except
    that the PDVs of C-STORE requests are served here."""
    sock = dul.socket
    try:
        header = _read_exactly(sock, 6)
        if len(header) < 6:
            dul.event_queue.put("Evt17")  # transport connection closed
            return
        pdu_type, _, length = _PDU.unpack(header)
        if pdu_type not in _PDU_TYPES:
            logger.warning("Unknown PDU type 0x%02X received", pdu_type)
            dul.event_queue.put("Evt19")  # unrecognised PDU
            return
        pdu_check(sock, pdu_type, length)
        body = _read_exactly(sock, length)
    except OSError:  # closed, reset, timed out, or refused by pdu_check
        dul.event_queue.put("Evt17")
        return
    if len(body) != length:
        dul.event_queue.put("Evt17")
        return

    receiver = dul.__dict__.get("_receiver_fastpath")
    if receiver is None:
        receiver = dul.__dict__["_receiver_fastpath"] = _Receiver(dul, store)
    if pdu_type != P_DATA_TF:
        receiver.interrupt()  # a release or abort ends a message in progress
        _forward(dul, header + body)
        return
    if receiver.disabled:
        _forward(dul, header + body)
        return
    try:
        forward = receiver.pdu_receive(memoryview(body))
    except ProtocolError as exc:
        logger.warning("Aborting association from %s: %s", dul.assoc.requestor.address, exc)
        dul.assoc.receiver_abort_reason = f"broken framing from the peer: {exc}"  # its log row
        receiver.interrupt()
        dul.event_queue.put("Evt19")  # invalid PDU: the state machine sends the A-ABORT
        return
    if forward is _WHOLE:
        _forward(dul, header + body)
    elif forward:
        items = b"".join(forward)
        _forward(dul, _PDU.pack(P_DATA_TF, 0, len(items)) + items)


def _read_exactly(sock: Any, count: int) -> bytearray:
    """`count` bytes from the association's socket, fewer only if the peer closed it."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    raw = sock.socket
    received = 0
    while received < count:
        n = raw.recv_into(view[received:])
        if not n:
            return buffer[:received]
        received += n
    return buffer


def _forward(dul: Any, raw: bytes | bytearray) -> None:
    """Hand a PDU to pynetdicom as if it had read it itself."""
    try:
        pdu, event = dul._decode_pdu(bytearray(raw))
    except Exception as exc:  # pynetdicom's READ_PDU_EXC_F
        logger.warning("Unable to decode a PDU from %s: %s", dul.assoc.requestor.address, exc)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


_WHOLE: list[memoryview] = []  # "forward the PDU as received"


class _Receiver:
    """The message in progress on one association, as its DUL thread sees it.

    States: idle; collecting a command (its PDVs held back until it can be read); serving a
    C-STORE here (collecting its dataset); passing a message's dataset to pynetdicom.
    """

    def __init__(self, dul: Any, store: Store) -> None:
        self.dul = dul
        self.store = store
        self.disabled = False
        # Fixed once the association is established; pynetdicom looks them up item by item.
        self._syntaxes: dict[int, str] = {}
        self._peer_maximum: int | None = None
        # Where C-STORE-RSPs go while we send C-GET sub-operations (store_responses_take).
        self.store_responses: queue.SimpleQueue | None = None
        self._reset()

    def _reset(self) -> None:
        self.context_id: int | None = None
        self.command = bytearray()
        self.held: list[memoryview] = []
        self.serving = False  # collecting the dataset of a C-STORE served here
        self.passing = False  # forwarding the dataset of a message pynetdicom serves
        self.request: dict[int, bytes] = {}
        self.uids = ("", "")  # SOP class and instance of the C-STORE served here
        self.dataset: spool.SpoolBuffer | None = None

    def interrupt(self) -> None:
        """Drop the message in progress (the association is ending)."""
        if self.dataset is not None:
            self.dataset.close()
        self._reset()
        responses = self.store_responses
        if responses is not None:
            responses.put(ENDED)

    def pdu_receive(self, body: memoryview) -> list[memoryview]:
        """Take one P-DATA-TF PDU's items; return those pynetdicom must see (or _WHOLE)."""
        items = _items(body)
        forward: list[memoryview] = []
        for item, context_id, control, data in items:
            if self.disabled:
                forward.append(item)
            else:
                self._item(item, context_id, control, data, forward)
        if len(forward) == len(items) and all(
            f is i[0] for f, i in zip(forward, items, strict=True)
        ):
            return _WHOLE
        return forward

    def _item(
        self,
        item: memoryview,
        context_id: int,
        control: int,
        data: memoryview,
        forward: list[memoryview],
    ) -> None:
        is_command = control & _COMMAND_FRAGMENT
        last = control & _LAST_FRAGMENT
        if self.serving:
            if is_command or context_id != self.context_id:
                raise ProtocolError("a new message began before the C-STORE data set was complete")
            assert self.dataset is not None
            self.dataset.write(data)
            if last:
                self._serve()
            return
        if self.passing:
            if is_command or context_id != self.context_id:
                self._give_up(item, forward)
                return
            forward.append(item)
            if last:
                self._reset()
            return
        if not is_command or (self.context_id is not None and context_id != self.context_id):
            self._give_up(item, forward)
            return
        # A command fragment: held back until the command is complete and can be judged.
        self.context_id = context_id
        self.held.append(item)
        self.command += data
        if last:
            self._command_judge(forward)

    def _give_up(self, item: memoryview | None, forward: list[memoryview]) -> None:
        """Something out of the ordinary: pynetdicom serves the rest of this association."""
        forward.extend(self.held)
        if item is not None:
            forward.append(item)
        self.held = []
        self.disabled = True
        responses = self.store_responses
        if responses is not None:
            responses.put(FALLBACK)

    def _command_judge(self, forward: list[memoryview]) -> None:
        request = command_parse(self.command)
        if request is None:
            self._give_up(None, forward)
            return
        expects_dataset = _unsigned(request, 0x0800) != NO_DATASET
        responses = self.store_responses
        if (
            responses is not None
            and not expects_dataset
            and _unsigned(request, 0x0100) == C_STORE_RSP
        ):
            self._reset()
            responses.put(request)
            return
        uids = self._ours(request) if expects_dataset else None
        if uids is not None:
            self.held = []
            self.serving = True
            self.request = request
            self.uids = uids
            self.dataset = spool.new_buffer()
            return
        forward.extend(self.held)
        self.held = []
        if expects_dataset:
            self.passing = True
        else:
            self._reset()

    def _ours(self, request: dict[int, bytes]) -> tuple[str, str] | None:
        """The SOP class and instance UIDs of a C-STORE-RQ served here; None for the others."""
        if _unsigned(request, 0x0100) != C_STORE_RQ or _unsigned(request, 0x0110) is None:
            return None
        sop_class, sop_instance = _uid(request.get(0x0002)), _uid(request.get(0x1000))
        if not sop_class or not sop_instance:
            return None
        context = self.dul.assoc._accepted_cx.get(self.context_id)
        if context is None or context.abstract_syntax != sop_class:
            return None
        return sop_class, sop_instance

    def _serve(self) -> None:
        request, dataset, context_id = self.request, self.dataset, self.context_id
        sop_class_uid, sop_instance_uid = self.uids
        assert dataset is not None and context_id is not None
        self.dataset = None  # the store function closes it
        self._reset()
        assoc = self.dul.assoc
        syntax = self._syntaxes.get(context_id)
        if syntax is None:
            syntax = self._syntaxes[context_id] = str(
                assoc._accepted_cx[context_id].transfer_syntax[0]
            )
        timer = self.dul._idle_timer
        # A large instance may take longer to store than the network timeout allows between
        # PDUs; the peer is waiting for us, not idle.
        timer.restart()
        timer.stop()
        try:
            status = self.store(
                assoc,
                received=dataset,
                transfer_syntax_uid=syntax,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
            )
        finally:
            timer.restart()
        response = store_response(
            sop_class_uid=request[0x0002],
            sop_instance_uid=request[0x1000],
            message_id=request[0x0110],
            status=status,
        )
        if self._peer_maximum is None:
            self._peer_maximum = assoc.requestor.maximum_length
        self.dul.socket.send(p_data(context_id, response, self._peer_maximum))


def _items(body: memoryview) -> list[tuple[memoryview, int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body: (item, context ID, message control header, data)."""
    items = []
    offset, end = 0, len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF without presentation data values")
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("P-DATA-TF ends inside a PDV item header")
        length, context_id, control = _ITEM.unpack_from(body, offset)
        if length < 2 or length > end - offset - 4:
            raise ProtocolError(f"PDV item length {length} does not fit its P-DATA-TF")
        stop = offset + 4 + length
        items.append((body[offset:stop], context_id, control, body[offset + 6 : stop]))
        offset = stop
    return items


def _unsigned(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


_uid = dicom_bytes.uid_decode


def _element(element: int, value: bytes) -> bytes:
    return dicom_bytes.implicit_element(0x0000, element, value)


def store_response(
    *, sop_class_uid: bytes, sop_instance_uid: bytes, message_id: bytes, status: int
) -> bytes:
    """A C-STORE-RSP command set (PS3.7 Table 9.3-2), the UIDs as the request encoded them."""
    body = b"".join(
        (
            _element(0x0002, sop_class_uid),
            _element(0x0100, C_STORE_RSP.to_bytes(2, "little")),
            _element(0x0120, message_id),
            _element(0x0800, NO_DATASET.to_bytes(2, "little")),
            _element(0x0900, status.to_bytes(2, "little")),
            _element(0x1000, sop_instance_uid),
        )
    )
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


def p_data(context_id: int, command: bytes, max_length: int) -> bytes:
    """P-DATA-TF PDUs carrying a command set, fragmented to the peer's maximum PDU length
    (0: unlimited)."""
    room = max(max_length - 6, 2) if max_length else len(command)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        control = _COMMAND_FRAGMENT | (_LAST_FRAGMENT if start + room >= len(command) else 0)
        item = _ITEM.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_PDU.pack(P_DATA_TF, 0, len(item)) + item)
    return b"".join(pdus)
