"""Our own DIMSE messages on an association a peer opened to us: C-FIND responses, C-GET
responses and C-GET's C-STORE sub-operations, written by the thread serving the request with
command sets from archive.dimse_codec (no pydicom command-set encoding, a third of the time per
C-FIND response) and files sent from disk a piece at a time.

The reach-ins (listed in the package docstring, 13-15): the socket under pynetdicom's
`AssociationSocket` (`dul.socket.socket`) is written directly on plain TCP, where the DUL
thread only reads meanwhile (nothing else is queued for it, and fastpath writes only in answer
to a C-STORE from the peer); on TLS, where one thread must not write while another reads, each
PDU goes through the DUL thread's `send_pdu` with the queue (`to_provider_queue`) kept short
and `_kill_thread` watched. The peer's C-STORE responses come from the fast path's reader
(receiver.transport.fastpath.store_responses_take), or from the association's DIMSE provider
(`dimse.get_msg`) where the fast path does not read the association.
"""

import logging
import queue
import ssl
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from archive.dicom_bytes import PDU_HEADER, PDV_ITEM_HEADER
from archive.dimse_codec import message_send, store_prepare, unsigned
from archive.stored_file import StoredFile
from receiver.transport import fastpath

logger = logging.getLogger(__name__)

_QUEUED_PDUS = 32


class _Queued:
    """Hands PDUs to the association's DUL thread, the one thread that reads and writes its
    socket (a TLS connection must not be written by one thread while another reads it)."""

    def __init__(self, dul: Any) -> None:
        self.dul = dul

    def sendall(self, pdu: bytes) -> None:
        # P-DATA-TFs with one PDV item each (as message_send and p_data build them).
        offset = 0
        while offset < len(pdu):
            _, _, length = PDU_HEADER.unpack_from(pdu, offset)
            item_length, context_id, _ = PDV_ITEM_HEADER.unpack_from(pdu, offset + 6)
            value = bytes(pdu[offset + 11 : offset + 10 + item_length])
            primitive = P_DATA()
            primitive.presentation_data_value_list.append((context_id, value))
            # A large file waits for the queue to drain: a few PDUs in memory, not the file.
            while self.dul.to_provider_queue.qsize() > _QUEUED_PDUS and not self.dul._kill_thread:
                time.sleep(0.0005)
            self.dul.send_pdu(primitive)
            offset += 6 + length


def _writer(assoc: Any) -> Any:
    """Where the serving thread writes an accepted association's PDUs (module docstring)."""
    sock = assoc.dul.socket.socket
    return _Queued(assoc.dul) if isinstance(sock, ssl.SSLSocket) else sock


class QueuedWriter:
    """DIMSE messages of ours on an association a peer opened (C-FIND responses)."""

    def __init__(self, assoc: Any) -> None:
        self.sock = _writer(assoc)
        self.peer_maximum = assoc.requestor.maximum_length or 0

    def command_send(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        stream = BytesIO(dataset) if dataset is not None else None
        message_send(self.sock, context_id, command, stream, self.peer_maximum)


class AcceptedAssociationStore(QueuedWriter):
    """C-STORE requests on an association a peer opened to us (C-GET), and its C-GET responses
    on the same socket (`command_send`). Used as a context manager: while inside, the peer's
    C-STORE responses come from receiver.transport.fastpath's reader; otherwise (or once it
    hands the association back to pynetdicom) from pynetdicom's DIMSE provider."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self.assoc = assoc
        self.accepted = {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.as_scu
        }
        self.responses: queue.SimpleQueue | None = None

    @property
    def is_established(self) -> bool:
        return bool(self.assoc.is_established)

    def __enter__(self) -> "AcceptedAssociationStore":
        self.responses = fastpath.store_responses_take(self.assoc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.responses is not None:
            fastpath.store_responses_release(self.assoc, self.responses)
            self.responses = None

    def send(
        self,
        source: Dataset | StoredFile,
        *,
        message_id: int,
        originator_ae_title: str | None = None,
        originator_message_id: int | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> int | None:
        """Send one C-STORE-RQ and wait for its response: the status, or None when it could
        not be sent or no response came (then the association is aborted). `meanwhile()` runs
        once the request is written, while the peer works on it."""
        message = store_prepare(source, self.accepted, message_id, None, None)
        if message is None:
            return None
        try:
            message.send(self.sock, self.peer_maximum)
        except (OSError, ValueError) as exc:
            logger.warning("C-STORE of %s broken off: %s", message.sop_instance_uid, exc)
            self.assoc.abort()
            return None
        if meanwhile is not None:
            meanwhile()
        status = self._response(message_id)
        if status is None and self.assoc.is_established:
            logger.error("No C-STORE response to a C-GET sub-operation: aborting")
            self.assoc.abort()
        return status

    def _response(self, message_id: int) -> int | None:
        while True:
            if self.responses is not None:
                try:
                    elements = self.responses.get(timeout=self.assoc.dimse.dimse_timeout)
                except queue.Empty:
                    return None
                if elements is fastpath.FALLBACK:
                    self.responses = None
                    continue
                if not isinstance(elements, dict):  # ENDED
                    return None
                status = unsigned(elements.get(0x0900))
                if unsigned(elements.get(0x0120)) == message_id and status is not None:
                    return status
            else:
                _, response = self.assoc.dimse.get_msg(block=True)
                if response is None:
                    return None
                if (
                    isinstance(response, C_STORE)
                    and response.MessageIDBeingRespondedTo == message_id
                    and response.Status is not None
                ):
                    return int(response.Status)
            logger.warning("Ignoring an unexpected DIMSE message during C-GET sub-operations")
