"""Outbound C-STORE associations spoken directly on the socket (C-MOVE sub-operations).

pynetdicom's requestor runs two threads per association and encodes every command set with
pydicom; for a C-MOVE of small instances that cost about 3 ms per instance, three times what
Orthanc takes (bench/qr.py). Here one thread does it all: pynetdicom's documented PDU classes
(`pynetdicom.pdu`, `pdu_primitives`) encode the A-ASSOCIATE-RQ and decode the answer, and the
C-STORE-RQ command sets and P-DATA-TF framing come from archive.dimse_codec. A stored file is
sent from its bytes on disk, a block at a time, the command set and the first block in one
system call; nothing is decoded. The socket has Nagle's algorithm off.

No reach-in: the socket is our own, and only pynetdicom's public PDU classes are used. What
writes on associations a peer opened to us (C-GET, C-FIND responses) reaches into pynetdicom's
association and lives in receiver.transport.accepted. The codec's names are re-exported here
for callers of this module (the forwarding queue).
"""

import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import pdu as _pdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from archive.dimse_codec import (  # noqa: F401 - re-exported for callers of routing.direct
    C_STORE_RSP,
    MAX_PDU,
    command_parse,
    message_send,
    p_data,
    response_command,
    store_prepare,
    store_request,
)
from archive.dimse_codec import unsigned as _unsigned
from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from archive.stored_file import StoredFile
from routing.scu import TIMEOUT, AssociationFailed, Peer, client_tls_context

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_PDU = struct.Struct(">BBL")
_ITEM = struct.Struct(">LBB")
_COMMAND, _LAST = 0x01, 0x02
_RELEASE_RQ = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_ABORT = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0))


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
        meanwhile: Callable[[], None] | None = None,
    ) -> int | None:
        """Send one C-STORE-RQ and wait for its response; the status, or None when it could not
        be sent (no accepted context, unreadable file) or no response came (then the
        association is aborted). `meanwhile()` runs once the request is written, while the
        peer works on it (the caller prepares its next sub-operation)."""
        if self.sock is None:
            if isinstance(source, StoredFile):
                source.close()
            return None
        message = store_prepare(
            source, self.accepted, message_id, originator_ae_title, originator_message_id
        )
        if message is None:
            return None
        try:
            message.send(self.sock, self.peer_maximum)
        except (OSError, ValueError) as exc:
            logger.warning(
                "C-STORE of %s to %s broken off: %s", message.sop_instance_uid, self.peer, exc
            )
            self.abort()
            return None
        if meanwhile is not None:
            meanwhile()
        try:
            return self._response(message_id)
        except (OSError, ValueError) as exc:
            logger.warning(
                "No C-STORE response for %s from %s: %s", message.sop_instance_uid, self.peer, exc
            )
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
