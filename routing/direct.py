"""Outbound C-STORE associations spoken directly on the socket (C-MOVE sub-operations).

pynetdicom's requestor runs two threads per association and encodes every command set with
pydicom; for a C-MOVE of small instances that cost about 3 ms per instance, three times what
Orthanc takes (bench/qr.py). Here one thread does it all: pynetdicom's PDU classes encode the
A-ASSOCIATE-RQ and decode the answer, and the C-STORE-RQ command sets (PS3.7 9.3.1.1, implicit
VR little endian, E.1), P-DATA-TF framing (PS3.8 9.3.5), A-RELEASE and A-ABORT are written
here. A stored file is sent from its bytes on disk, a piece at a time; nothing is decoded.
"""

import contextlib
import logging
import socket
import ssl
import struct
import time
from io import BytesIO
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import pdu as _pdu
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from archive.retrieval import StoredFile
from routing.scu import TIMEOUT, AssociationFailed, Peer, client_tls_context

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU = 131072
_PDU = struct.Struct(">BBL")
_ITEM = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")
_COMMAND, _LAST = 0x01, 0x02
_RELEASE_RQ = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_ABORT = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0))
C_STORE_RSP = 0x8001
_QUEUED_PDUS = 32


class DirectStoreAssociation:
    """One association to `peer` for C-STORE requests, used from one thread."""

    def __init__(
        self,
        peer: Peer,
        *,
        calling_ae_title: str,
        contexts: list[PresentationContext],
        timeout: float = TIMEOUT,
    ) -> None:
        self.peer = peer
        self.calling_ae_title = calling_ae_title
        self.contexts = contexts
        self.timeout = timeout
        self.sock: socket.socket | None = None
        # context ID → (abstract syntax, transfer syntax), accepted ones only.
        self.accepted: dict[int, tuple[str, str]] = {}
        self.peer_maximum = 0  # 0: no limit
        self.error_comment = ""  # the last C-STORE-RSP's Error Comment (0000,0902)

    @property
    def is_established(self) -> bool:
        return self.sock is not None

    def open(self) -> "DirectStoreAssociation":
        """Connect and negotiate; raises AssociationFailed saying why not."""
        where = f"{self.peer.ae_title}@{self.peer.host}:{self.peer.port}"
        try:
            sock = socket.create_connection((self.peer.host, self.peer.port), timeout=10)
        except OSError as exc:
            raise AssociationFailed(f"{where}: no connection ({exc.strerror or exc})") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.peer.tls:
                sock = client_tls_context().wrap_socket(sock, server_hostname=self.peer.host)
            sock.settimeout(self.timeout)
            self.sock = sock
            sock.sendall(self._request())
            kind, raw = self._read_pdu()
        except (OSError, ValueError) as exc:
            self._close()
            raise AssociationFailed(f"{where}: {exc}") from None
        if kind == 0x03:
            self._close()
            raise AssociationFailed(f"{where}: association rejected")
        if kind != 0x02:
            self.abort()
            raise AssociationFailed(f"{where}: unexpected answer (PDU type 0x{kind:02X})")
        answer = _pdu.A_ASSOCIATE_AC()
        answer.decode(raw)
        primitive = answer.to_primitive()
        proposed = {cx.context_id: str(cx.abstract_syntax) for cx in self.contexts}
        for result in primitive.presentation_context_definition_results_list:
            if result.result == 0 and result.context_id in proposed and result.transfer_syntax:
                self.accepted[result.context_id] = (
                    proposed[result.context_id],
                    str(result.transfer_syntax[0]),
                )
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_maximum = item.maximum_length_received or 0
        return self

    def _request(self) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = self.calling_ae_title
        primitive.called_ae_title = self.peer.ae_title
        for index, context in enumerate(self.contexts):
            context.context_id = 2 * index + 1
        primitive.presentation_context_definition_list = self.contexts
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = MAX_PDU
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        primitive.user_information = [maximum, implementation, version]
        request = _pdu.A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        return request.encode()

    def accepted_syntaxes(self) -> dict[str, set[str]]:
        """SOP class → transfer syntaxes the peer accepted."""
        accepted: dict[str, set[str]] = {}
        for sop_class, syntax in self.accepted.values():
            accepted.setdefault(sop_class, set()).add(syntax)
        return accepted

    def send(
        self,
        source: Dataset | StoredFile,
        *,
        message_id: int,
        originator_ae_title: str | None = None,
        originator_message_id: int | None = None,
    ) -> int | None:
        """Send one C-STORE-RQ and wait for its response; the status, or None when it could not
        be sent (no accepted context, unreadable file) or no response came (then the
        association is aborted)."""
        if self.sock is None:
            return None
        prepared = _prepare(
            source, self.accepted, message_id, originator_ae_title, originator_message_id
        )
        if prepared is None:
            return None
        context_id, command, stream, sop_instance = prepared
        try:
            with stream:
                message_send(self.sock, context_id, command, stream, self.peer_maximum)
            return self._response(message_id)
        except (OSError, ValueError) as exc:
            logger.warning("C-STORE of %s to %s broken off: %s", sop_instance, self.peer, exc)
            self.abort()
            return None

    def _response(self, message_id: int) -> int | None:
        command = bytearray()
        while True:
            kind, raw = self._read_pdu()
            if kind == 0x07:
                logger.warning("%s aborted the association", self.peer.ae_title)
                self._close()
                return None
            if kind != 0x04:
                raise ValueError(f"unexpected PDU type 0x{kind:02X} while waiting for C-STORE-RSP")
            body = memoryview(raw)[6:]
            offset = 0
            while offset < len(body):
                length, _, control = _ITEM.unpack_from(body, offset)
                data = body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if not control & _COMMAND:
                    continue  # a response has no data set; ignore one
                command += data
                if control & _LAST:
                    elements = command_parse(command)
                    command = bytearray()
                    if elements is None:
                        raise ValueError("unreadable response command set")
                    field = _unsigned(elements.get(0x0100))
                    answered = _unsigned(elements.get(0x0120))
                    status = _unsigned(elements.get(0x0900))
                    if field == C_STORE_RSP and answered == message_id and status is not None:
                        comment = elements.get(0x0902, b"")
                        self.error_comment = comment.decode("ascii", "replace").strip(" \0")
                        return status
                    logger.warning("Ignoring an unexpected DIMSE message from %s", self.peer)

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._read_exactly(6)
        kind, _, length = _PDU.unpack(header)
        if length > 64 * 2**20:
            raise ValueError(f"PDU of {length} bytes announced")
        return kind, header + self._read_exactly(length)

    def _read_exactly(self, count: int) -> bytes:
        assert self.sock is not None
        parts, received = [], 0
        while received < count:
            part = self.sock.recv(min(count - received, 2**20))
            if not part:
                raise ValueError("the peer closed the connection")
            parts.append(part)
            received += len(part)
        return b"".join(parts)

    def release(self) -> None:
        """A-RELEASE, waiting briefly for the answer; the connection is closed either way."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(_RELEASE_RQ)
            self.sock.settimeout(min(self.timeout, 10))
            while True:
                kind, _ = self._read_pdu()
                if kind in (0x06, 0x07):
                    break
        except (OSError, ValueError):
            pass
        self._close()

    def abort(self) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            self.sock.sendall(_ABORT)
        self._close()

    def _close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> "DirectStoreAssociation":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.sock is not None:
            self.release()


def _context(
    accepted: dict[int, tuple[str, str]], sop_class: str, syntax: str, *, convertible: bool
) -> tuple[int, str]:
    for context_id, (abstract, offered) in accepted.items():
        if abstract == sop_class and offered == syntax:
            return context_id, offered
    if convertible:
        for context_id, (abstract, offered) in accepted.items():
            uid = UID(offered)
            if abstract == sop_class and not uid.is_compressed and uid.is_little_endian:
                return context_id, offered
    raise ValueError(f"no accepted presentation context for {sop_class} in {syntax}")


def _prepare(
    source: Dataset | StoredFile,
    accepted: dict[int, tuple[str, str]],
    message_id: int,
    originator_ae_title: str | None,
    originator_message_id: int | None,
) -> tuple[int, bytes, BinaryIO, str] | None:
    """The context ID, command set, data set stream and SOP instance UID of one C-STORE-RQ;
    None (logged) when it cannot be sent."""
    stream: BinaryIO
    try:
        if isinstance(source, StoredFile):
            sop_class, sop_instance = source.sop_class_uid, source.sop_instance_uid
            context_id, _ = _context(
                accepted, sop_class, source.transfer_syntax_uid, convertible=False
            )
            stream = source.path.open("rb")
            stream.seek(source.offset)
        else:
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            context_id, syntax = _context(
                accepted, sop_class, str(source.file_meta.TransferSyntaxUID), convertible=True
            )
            uid = UID(syntax)
            encoded = encode(source, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
            if encoded is None:
                raise ValueError("the data set cannot be encoded")
            stream = BytesIO(encoded)
    except (ValueError, AttributeError, KeyError, OSError) as exc:
        name = (
            source.sop_instance_uid
            if isinstance(source, StoredFile)
            else source.get("SOPInstanceUID", "?")
        )
        logger.warning("C-STORE of %s not sent: %s", name, exc)
        return None
    command = store_request(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        message_id=message_id,
        originator_ae_title=originator_ae_title,
        originator_message_id=originator_message_id,
    )
    return context_id, command, stream, sop_instance


def message_send(
    sock: Any, context_id: int, command: bytes, stream: BinaryIO | None, peer_maximum: int
) -> None:
    """A DIMSE message as P-DATA-TF PDUs no longer than the peer's maximum (0: no limit):
    the command set, then the data set read from `stream` a piece at a time."""
    room = max((peer_maximum or MAX_PDU) - 6, 2)
    sock.sendall(p_data(context_id, command, room, command=True))
    if stream is None:
        return
    start = stream.tell()
    total = stream.seek(0, 2) - start
    stream.seek(start)
    sent = 0
    while True:
        chunk = stream.read(min(room, 4 * 2**20))
        sent += len(chunk)
        last = sent >= total
        item = _ITEM.pack(len(chunk) + 2, context_id, _LAST if last else 0)
        sock.sendall(_PDU.pack(0x04, 0, len(item) + len(chunk)) + item + chunk)
        if last:
            return
        if not chunk:
            raise ValueError("the file ended early")


class _Queued:
    """Hands PDUs to the association's DUL thread, the one thread that reads and writes its
    socket (a TLS connection must not be written by one thread while another reads it)."""

    def __init__(self, dul: Any) -> None:
        self.dul = dul

    def sendall(self, pdu: bytes) -> None:
        # One P-DATA-TF with one PDV item (as message_send and p_data build them).
        offset = 0
        while offset < len(pdu):
            _, _, length = _PDU.unpack_from(pdu, offset)
            item_length, context_id, _ = _ITEM.unpack_from(pdu, offset + 6)
            value = bytes(pdu[offset + 11 : offset + 10 + item_length])
            primitive = P_DATA()
            primitive.presentation_data_value_list.append((context_id, value))
            # A large file waits for the queue to drain: a few PDUs in memory, not the file.
            while self.dul.to_provider_queue.qsize() > _QUEUED_PDUS and not self.dul._kill_thread:
                time.sleep(0.0005)
            self.dul.send_pdu(primitive)
            offset += 6 + length


def _writer(assoc: Any) -> Any:
    """Where the serving thread writes an accepted association's PDUs: the socket itself for
    plain TCP (the DUL thread only reads meanwhile: nothing else is queued for it, and
    receiver.fastpath writes only in answer to a C-STORE from the peer), the DUL thread's
    queue for TLS, where one thread must not write while another reads."""
    sock = assoc.dul.socket.socket
    return _Queued(assoc.dul) if isinstance(sock, ssl.SSLSocket) else sock


class AcceptedAssociationStore:
    """C-STORE requests on an association a peer opened to us (C-GET), sent by the thread
    serving the C-GET with command sets encoded here and files read a piece at a time; its
    C-GET responses go the same way (`command_send`), see `_writer`. The peer's C-STORE
    responses arrive through pynetdicom."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.sock = _writer(assoc)
        self.peer_maximum = assoc.requestor.maximum_length or 0
        self.accepted = {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.as_scu
        }

    @property
    def is_established(self) -> bool:
        return bool(self.assoc.is_established)

    def __enter__(self) -> "AcceptedAssociationStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def command_send(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        """A message of ours (a C-GET-RSP) on the same socket as the C-STOREs."""
        stream = BytesIO(dataset) if dataset is not None else None
        message_send(self.sock, context_id, command, stream, self.peer_maximum)

    def send(
        self,
        source: Dataset | StoredFile,
        *,
        message_id: int,
        originator_ae_title: str | None = None,
        originator_message_id: int | None = None,
    ) -> int | None:
        """As DirectStoreAssociation.send."""
        prepared = _prepare(source, self.accepted, message_id, None, None)
        if prepared is None:
            return None
        context_id, command, stream, sop_instance = prepared
        try:
            with stream:
                message_send(self.sock, context_id, command, stream, self.peer_maximum)
        except (OSError, ValueError) as exc:
            logger.warning("C-STORE of %s broken off: %s", sop_instance, exc)
            self.assoc.abort()
            return None
        while True:
            _, response = self.assoc.dimse.get_msg(block=True)
            if response is None:
                if self.assoc.is_established:
                    logger.error("No C-STORE response to a C-GET sub-operation: aborting")
                    self.assoc.abort()
                return None
            if (
                isinstance(response, C_STORE)
                and response.MessageIDBeingRespondedTo == message_id
                and response.Status is not None
            ):
                return int(response.Status)
            logger.warning("Ignoring an unexpected DIMSE message during C-GET sub-operations")


def response_command(
    *,
    command_field: int,
    sop_class_uid: str,
    message_id: int,
    status: int,
    has_dataset: bool,
    counts: tuple[int | None, int, int, int] | None = None,
) -> bytes:
    """A C-FIND-RSP, C-GET-RSP or C-MOVE-RSP command set (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2);
    `counts` are the sub-operations remaining (None: left out), completed, failed, warning."""
    parts = [
        _element(0x0002, sop_class_uid.encode("ascii")),
        _element(0x0100, _us(command_field)),
        _element(0x0120, _us(message_id)),
        _element(0x0800, _us(0x0000 if has_dataset else 0x0101)),
        _element(0x0900, _us(status)),
    ]
    if counts is not None:
        remaining, completed, failed, warnings = counts
        if remaining is not None:
            parts.append(_element(0x1020, _us(remaining)))
        parts += [
            _element(0x1021, _us(completed)),
            _element(0x1022, _us(failed)),
            _element(0x1023, _us(warnings)),
        ]
    body = b"".join(parts)
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


class QueuedWriter:
    """DIMSE messages of ours on an association a peer opened (C-FIND responses), written as
    `_writer` says."""

    def __init__(self, assoc: Any) -> None:
        self.sock = _writer(assoc)
        self.peer_maximum = assoc.requestor.maximum_length or 0

    def command_send(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        stream = BytesIO(dataset) if dataset is not None else None
        message_send(self.sock, context_id, command, stream, self.peer_maximum)


def _element(element: int, value: bytes, pad: bytes = b"\0") -> bytes:
    if len(value) % 2:
        value += pad  # UIDs are padded with NUL, AE titles with a space (PS3.5 6.2)
    return _ELEMENT.pack(0, element, len(value)) + value


def _us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def store_request(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    originator_ae_title: str | None = None,
    originator_message_id: int | None = None,
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 Table 9.3-1), priority low, with a data set."""
    parts = [
        _element(0x0002, sop_class_uid.encode("ascii")),
        _element(0x0100, _us(0x0001)),
        _element(0x0110, _us(message_id)),
        _element(0x0700, _us(0x0002)),
        _element(0x0800, _us(0x0000)),
        _element(0x1000, sop_instance_uid.encode("ascii")),
    ]
    if originator_ae_title:
        parts.append(_element(0x1030, originator_ae_title.strip().encode("ascii"), b" "))
        parts.append(_element(0x1031, _us(originator_message_id or 0)))
    body = b"".join(parts)
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


def p_data(context_id: int, data: bytes, room: int, *, command: bool) -> bytes:
    """P-DATA-TF PDUs carrying `data` in fragments of at most `room` bytes."""
    pdus = []
    flag = _COMMAND if command else 0
    for start in range(0, max(len(data), 1), room):
        fragment = data[start : start + room]
        control = flag | (_LAST if start + room >= len(data) else 0)
        item = _ITEM.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_PDU.pack(0x04, 0, len(item)) + item)
    return b"".join(pdus)


def command_parse(data: bytes | bytearray) -> dict[int, bytes] | None:
    """A command set's elements by element number (group 0000, implicit VR little endian)."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or length > end - offset:
            return None
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def _unsigned(value: bytes | None) -> int | None:
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None
