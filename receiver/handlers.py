"""pynetdicom event handlers: unpack the event, call one service, map its outcome to DIMSE.

Each handler runs in the association's own thread.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection
from pynetdicom.events import Event

from archive.exceptions import (
    DatasetMismatch,
    DatasetUnreadable,
    DuplicateRejected,
    IndexFailure,
    IngestError,
    StorageFailure,
)
from archive.services import IngestSettings, instance_store

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: Failure, duplicate SOP instance

STATUS_FOR: dict[type[IngestError], int] = {
    DatasetUnreadable: CANNOT_UNDERSTAND,
    DatasetMismatch: DATASET_MISMATCH,
    StorageFailure: OUT_OF_RESOURCES,
    IndexFailure: OUT_OF_RESOURCES,
    DuplicateRejected: DUPLICATE_SOP_INSTANCE,
}


@dataclass
class AssociationTally:
    """What one association delivered, for its closing log line."""

    stored: int = 0
    duplicates: int = 0
    failed: Counter[int] = field(default_factory=Counter)
    bytes_received: int = 0

    def summary(self) -> str:
        failures = ", ".join(f"0x{status:04X}×{n}" for status, n in sorted(self.failed.items()))
        return (
            f"{self.stored} stored, {self.duplicates} duplicate(s), "
            f"{sum(self.failed.values())} failed{f' ({failures})' if failures else ''}, "
            f"{self.bytes_received} bytes"
        )


def tally_of(assoc: object) -> AssociationTally:
    tally = getattr(assoc, "receiver_tally", None)
    if tally is None:
        tally = AssociationTally()
        assoc.receiver_tally = tally  # type: ignore[attr-defined]
    return tally


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title}@{requestor.address}:{requestor.port}"


def handle_store(event: Event, ingest: IngestSettings) -> int:
    """EVT_C_STORE: store and index the dataset.

    Returns 0x0000 only once the file is durable and the index committed; 0xA700 when storage or
    index fail, 0xA900 when the dataset's UIDs differ from the request's, 0xC000 when the dataset
    is unreadable or lacks valid UIDs, 0x0111 for a rejected duplicate.
    """
    request = event.request
    dataset = request.DataSet.getvalue()
    requestor = event.assoc.requestor
    tally = tally_of(event.assoc)
    tally.bytes_received += len(dataset)
    sop_instance_uid = str(request.AffectedSOPInstanceUID)
    try:
        result = instance_store(
            dataset=dataset,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=sop_instance_uid,
            calling_ae_title=requestor.ae_title,
            remote_address=requestor.address,
            settings=ingest,
        )
    except IngestError as exc:
        status = STATUS_FOR[type(exc)]
        tally.failed[status] += 1
        logger.warning(
            "C-STORE of %s from %s refused (0x%04X): %s",
            sop_instance_uid,
            _peer(event),
            status,
            exc,
        )
        return status
    except Exception:
        tally.failed[OUT_OF_RESOURCES] += 1
        logger.exception(
            "C-STORE of %s from %s failed unexpectedly", sop_instance_uid, _peer(event)
        )
        return OUT_OF_RESOURCES
    if result.outcome == "stored":
        tally.stored += 1
    else:
        tally.duplicates += 1
    return SUCCESS


def handle_echo(event: Event) -> int:
    """EVT_C_ECHO: always success (PS3.4 A.4)."""
    return SUCCESS


def handle_accepted(event: Event) -> None:
    logger.info(
        "Association accepted from %s (called %s)",
        _peer(event),
        event.assoc.acceptor.ae_title,
    )


def handle_rejected(event: Event) -> None:
    logger.info("Association from %s rejected", _peer(event))


def handle_released(event: Event) -> None:
    logger.info("Association from %s released: %s", _peer(event), tally_of(event.assoc).summary())
    _close_database()


def handle_aborted(event: Event) -> None:
    logger.info("Association from %s aborted: %s", _peer(event), tally_of(event.assoc).summary())
    _close_database()


def _close_database() -> None:
    # Each association thread has its own connection; the thread ends with the association.
    connection.close()
