"""Refuse an over-long PDU from its header, before reading its body.

pynetdicom reads each PDU whole into memory before any event sees it, so a peer announcing a
4 GB P-DATA-TF would make us hold as much as it cares to send. Here the 6-byte header is
checked as soon as it is read: a P-DATA-TF longer than the maximum we advertised (PS3.8 9.3.1,
D.1.1), or any other PDU longer than negotiation ever needs, gets an A-ABORT (service
provider, invalid PDU parameter value) and the connection is closed.
"""

import contextlib
import logging
from typing import Any

from pynetdicom.transport import AssociationSocket

from archive.dicom_bytes import P_DATA_TF, PDU_HEADER, PDU_TYPES, a_abort

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RQ/AC with 128 presentation contexts and a user identity token are a few tens
# of kilobytes; release and abort PDUs are 10 bytes.
OTHER_PDU_LIMIT = 2**20
# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8.
_A_ABORT = a_abort(source=0x02, reason=0x06)


class PDUTooLong(OSError):
    """pynetdicom treats an OSError while reading a PDU as the connection closing."""


def install() -> None:
    """Check every PDU header our associations read (once per process)."""
    original = AssociationSocket.recv
    if getattr(original, "pdu_guard", False):
        return

    def recv(self: Any, nr_bytes: int) -> bytearray:
        data = original(self, nr_bytes)
        # pynetdicom reads a PDU as its 6-byte header, then its body: only the former is checked.
        if self.__dict__.pop("_pdu_body_next", False) or nr_bytes != 6 or len(data) != 6:
            return data
        pdu_type, _, length = PDU_HEADER.unpack(data)
        pdu_check(self, pdu_type, length)
        # After a header of unknown type (or a refused one) pynetdicom reads no body: the next
        # 6 bytes it asks for are a header again, and must be checked as one.
        self._pdu_body_next = pdu_type in PDU_TYPES
        return data

    recv.pdu_guard = True  # type: ignore[attr-defined]
    AssociationSocket.recv = recv  # type: ignore[method-assign]


def pdu_check(sock: Any, pdu_type: int, length: int) -> None:
    """Refuse a PDU whose header announces more than we may read: send an A-ABORT and raise
    PDUTooLong. `sock` is the association's AssociationSocket."""
    limit = _limit(sock, pdu_type)
    if limit is None or length <= limit:
        return
    peer = getattr(sock.assoc.requestor, "address", "?")
    logger.warning(
        "Aborting association from %s: PDU of type 0x%02X announces %d bytes, more "
        "than our maximum of %d",
        peer,
        pdu_type,
        length,
        limit,
    )
    sock.assoc.receiver_abort_reason = f"PDU of {length} bytes announced, over {limit}"
    with contextlib.suppress(OSError):
        sock.socket.sendall(_A_ABORT)
    raise PDUTooLong(f"PDU of {length} bytes refused")


def _limit(sock: Any, pdu_type: int) -> int | None:
    if pdu_type != P_DATA_TF:
        return OTHER_PDU_LIMIT
    # The maximum we advertised; 0 means unlimited (`server.max_pdu: 0`).
    return sock.assoc.acceptor.maximum_length or None
