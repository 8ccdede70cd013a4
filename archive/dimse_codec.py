"""DIMSE messages as bytes: the C-STORE-RQ and C-FIND/C-GET/C-MOVE-RSP command sets (PS3.7
9.3, implicit VR little endian, PS3.5 A.1), their P-DATA-TF framing (PS3.8 9.3.5), and the
preparation of one C-STORE sub-operation from a stored file or a data set.

Pure functions over sockets and streams given to them, no pynetdicom: both sides of the house
send these messages, `routing.direct` on the associations it opens (C-MOVE destinations, and
the forwarding queue) and `receiver.transport.accepted` on associations a peer opened to us
(C-GET, C-FIND), and `routing` must not import `receiver`. It lives in `archive` beside
`dicom_bytes.py` (the element and PDU headers) for the same reason that module gives: the one
place below both.
"""

import logging
import ssl
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from archive.dicom_bytes import ELEMENT_IMPLICIT, PDU_HEADER, PDV_ITEM_HEADER
from archive.stored_file import StoredFile

logger = logging.getLogger(__name__)

MAX_PDU = 131072
C_STORE_RSP = 0x8001
_PDU = PDU_HEADER
_ITEM = PDV_ITEM_HEADER
_ELEMENT = ELEMENT_IMPLICIT
_COMMAND, _LAST = 0x01, 0x02


def dataset_encode(ds: Dataset, syntax: str) -> bytes:
    """`ds` encoded in transfer syntax `syntax` (deflated when it says so); raises ValueError."""
    uid = UID(syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = uid.is_implicit_VR
    buffer.is_little_endian = uid.is_little_endian
    try:
        write_dataset(buffer, ds)
    except Exception as exc:
        raise ValueError(f"the data set cannot be encoded: {exc}") from None
    data = buffer.getvalue()
    if uid.is_deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        data += b"\0" if len(data) % 2 else b""
    return data


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


@dataclass
class StoreMessage:
    """One C-STORE-RQ ready to send: its context, command set and data set (`length` bytes read
    from `stream` where it stands). Close it, sent or not."""

    context_id: int
    command: bytes
    stream: BinaryIO
    length: int
    sop_instance_uid: str

    def close(self) -> None:
        self.stream.close()

    def send(self, sock: Any, peer_maximum: int) -> None:
        """Write it (message_send) and close it, whether or not the write succeeded."""
        with self.stream:
            message_send(
                sock, self.context_id, self.command, self.stream, peer_maximum, self.length
            )


def store_prepare(
    source: Dataset | StoredFile,
    accepted: dict[int, tuple[str, str]],
    message_id: int,
    originator_ae_title: str | None,
    originator_message_id: int | None,
) -> StoreMessage | None:
    """The C-STORE-RQ of one sub-operation; None (logged, and a StoredFile closed) when it
    cannot be sent. `accepted`: context ID → (SOP class, syntax). A StoredFile is sent from
    its open file as stored; a Dataset is encoded in the accepted syntax."""
    stream: BinaryIO
    try:
        if isinstance(source, StoredFile):
            sop_class, sop_instance = source.sop_class_uid, source.sop_instance_uid
            context_id, _ = _context(
                accepted, sop_class, source.transfer_syntax_uid, convertible=False
            )
            stream, length = source.stream, source.length
        else:
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            context_id, syntax = _context(
                accepted, sop_class, str(source.file_meta.TransferSyntaxUID), convertible=True
            )
            encoded = dataset_encode(source, syntax)
            stream, length = BytesIO(encoded), len(encoded)
    except (ValueError, AttributeError, KeyError, OSError) as exc:
        if isinstance(source, StoredFile):
            source.close()
            name = source.sop_instance_uid
        else:
            name = source.get("SOPInstanceUID", "?")
        logger.warning("C-STORE of %s not sent: %s", name, exc)
        return None
    command = store_request(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        message_id=message_id,
        originator_ae_title=originator_ae_title,
        originator_message_id=originator_message_id,
    )
    return StoreMessage(context_id, command, stream, length, sop_instance)


# Data set bytes read and written per system call; a whole number of PDUs of the peer's size.
_BLOCK = 2**20
# Buffers per sendmsg(), under the IOV_MAX of 1024 that Linux allows.
_IOV = 512


def message_send(
    sock: Any,
    context_id: int,
    command: bytes,
    stream: BinaryIO | None,
    peer_maximum: int,
    length: int | None = None,
) -> None:
    """A DIMSE message as P-DATA-TF PDUs no longer than the peer's maximum (0: no limit):
    the command set, then `length` bytes of data set read from `stream` (to its end when None)
    a block at a time. The command and the first block go out in one write: a small instance
    is one TCP segment for the peer to wake up for, not two. `sock` needs `sendall`; `sendmsg`
    is used when it has one that works (plain sockets, not TLS)."""
    room = max((peer_maximum or MAX_PDU) - 6, 2)
    head = p_data(context_id, command, room, command=True)
    if stream is None:
        sock.sendall(head)
        return
    if length is None:
        start = stream.tell()
        length = stream.seek(0, 2) - start
        stream.seek(start)
    block = room * max(1, _BLOCK // room)
    buffer = memoryview(bytearray(min(length, block)))
    parts: list[bytes | memoryview] = [head]
    remaining = length
    while True:
        size = min(remaining, block)
        _read_into(stream, buffer[:size])
        remaining -= size
        for offset in range(0, max(size, 1), room):
            chunk = buffer[offset : min(offset + room, size)]
            last = remaining == 0 and offset + room >= size
            parts.append(
                _PDU.pack(0x04, 0, len(chunk) + 6)
                + _ITEM.pack(len(chunk) + 2, context_id, _LAST if last else 0)
            )
            parts.append(chunk)
        _write(sock, parts)
        if remaining == 0:
            return
        parts = []


def _read_into(stream: BinaryIO, target: memoryview) -> None:
    filled = 0
    while filled < len(target):
        count = stream.readinto(target[filled:])  # type: ignore[attr-defined]
        if not count:
            raise ValueError("the file ended early")
        filled += count


def _write(sock: Any, parts: list[bytes | memoryview]) -> None:
    """Write `parts` in order: gathered by sendmsg() on a plain socket, joined otherwise."""
    sendmsg = None if isinstance(sock, ssl.SSLSocket) else getattr(sock, "sendmsg", None)
    if sendmsg is None:
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(part) for part in parts if len(part)]
    first = 0
    while first < len(views):
        sent = sendmsg(views[first : first + _IOV])
        while sent:
            size = len(views[first])
            if sent >= size:
                sent -= size
                first += 1
            else:
                views[first] = views[first][sent:]
                sent = 0


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


def unsigned(value: bytes | None) -> int | None:
    """A US value (2 bytes, little endian), or None."""
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None
