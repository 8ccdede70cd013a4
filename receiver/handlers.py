"""pynetdicom event handlers: unpack the event, call one service, map its outcome to DIMSE.

Each handler runs in the association's own thread.
"""

import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from archive.exceptions import (
    DatasetMismatch,
    DatasetUnreadable,
    DuplicateRejected,
    IndexFailure,
    IngestError,
    StorageFailure,
)
from archive.services import IngestSettings, instance_store
from receiver.access import LOCAL_LIMIT_EXCEEDED, Decision, association_decide
from receiver.association_log import association_log_close, association_log_open
from receiver.config import ReceiverConfig
from receiver.limits import AssociationSlots
from receiver.live import LiveStatus
from receiver.models import AssociationLog
from receiver.query_handlers import QUERY_RETRIEVE_CLASSES
from receiver.spool import SpoolBuffer

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: Failure, duplicate SOP instance

# Services the storage class rules do not narrow: the access rules above them still apply.
NON_STORAGE_SERVICES = frozenset(
    {Verification, StorageCommitmentPushModel, *QUERY_RETRIEVE_CLASSES}
)

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
    log_id: int | None = None
    peer: str = ""
    # When the last DIMSE message was handled: an abort after a network timeout's worth of
    # silence was the timeout (pynetdicom's idle timer restarts when the peer then hangs up).
    last_activity: float = field(default_factory=time.monotonic)
    live: LiveStatus | None = None

    def close_log(self, outcome: str) -> None:
        log_id, self.log_id = self.log_id, None  # once only
        if self.live is not None and log_id is not None:
            self.live.untrack(log_id)
        association_log_close(
            log_id,
            outcome=outcome,
            stored=self.stored,
            duplicates=self.duplicates,
            failures=self.failures_json(),
            bytes_received=self.bytes_received,
        )

    def failures_json(self) -> dict[str, int]:
        return {f"0x{status:04X}": n for status, n in self.failed.items()}

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
    return _peer_of(event.assoc)


def _peer_of(assoc: Association) -> str:
    requestor = assoc.requestor
    # Before negotiation the requestor's AE title is only in the A-ASSOCIATE-RQ primitive.
    title = requestor.ae_title or getattr(requestor.primitive, "calling_ae_title", "") or "?"
    return f"{title.strip()}@{requestor.address}:{requestor.port}"


_REJECT_REASONS = {
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}


def handle_requested(
    event: Event, config: ReceiverConfig, slots: AssociationSlots, live: LiveStatus | None
) -> None:
    """EVT_REQUESTED: apply access control and the association limit before negotiation.

    Rejects with A-ASSOCIATE-RJ: permanent, reason 3 for a calling AE not allowed from this
    host; permanent, reason 7 for a wrong called AE title; transient, local limit exceeded when
    all places are taken. Otherwise narrows the presentation contexts we will accept to the
    storage classes the configuration and the admin rules allow (others are rejected with
    "abstract syntax not supported"; Verification always stays).
    """
    assoc = event.assoc
    request = assoc.requestor.primitive
    decision = association_decide(
        config=config,
        calling_ae=request.calling_ae_title,
        called_ae=request.called_ae_title,
        address=assoc.requestor.address,
    )
    if decision.rejection is None and not slots.acquire(assoc):
        decision = Decision(LOCAL_LIMIT_EXCEEDED, f"all {slots.limit} association places are taken")
    requestor = assoc.requestor
    log_id = association_log_open(
        calling_ae_title=request.calling_ae_title,
        called_ae_title=request.called_ae_title,
        peer_address=requestor.address,
        peer_port=requestor.port,
        rejected_because=decision.why if decision.rejection is not None else "",
        receiver_id=live.process_id if live is not None else None,
    )
    if decision.rejection is not None:
        logger.warning("Association from %s rejected: %s", _peer(event), decision.why)
        close_database()
        assoc.acse.send_reject(*decision.rejection)
        assoc.kill()
        return
    tally = tally_of(assoc)
    tally.log_id = log_id
    tally.peer = _peer(event)
    if live is not None and log_id is not None:
        tally.live = live
        live.track(log_id, tally)
    accepted = decision.sop_classes
    assoc.acceptor.supported_contexts = [
        cx
        for cx in assoc.acceptor.supported_contexts
        if cx.abstract_syntax in NON_STORAGE_SERVICES or cx.abstract_syntax in accepted
    ]


def handle_store(event: Event, ingest: IngestSettings) -> int:
    """EVT_C_STORE: the C-STOREs that receiver.fastpath passed on to pynetdicom."""
    request = event.request
    return dataset_store(
        event.assoc,
        received=request.DataSet,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        ingest=ingest,
    )


def dataset_store(
    assoc: Association,
    *,
    received: io.BytesIO,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    ingest: IngestSettings,
) -> int:
    """Store and index one received dataset; return the C-STORE status.

    Returns 0x0000 only once the file is durable and the index committed; 0xA700 when storage or
    index fail, 0xA900 when the dataset's UIDs differ from the request's, 0xC000 when the dataset
    is unreadable or lacks valid UIDs, 0x0111 for a rejected duplicate. Closes `received`.
    """
    size = received.seek(0, io.SEEK_END)
    # Large datasets were spooled to disk as they arrived (receiver.spool).
    dataset = received.payload() if isinstance(received, SpoolBuffer) else received.getvalue()
    requestor = assoc.requestor
    tally = tally_of(assoc)
    tally.last_activity = time.monotonic()
    tally.bytes_received += size
    try:
        result = instance_store(
            dataset=dataset,
            transfer_syntax_uid=transfer_syntax_uid,
            sop_class_uid=sop_class_uid,
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
            _peer_of(assoc),
            status,
            exc,
        )
        return status
    except Exception:
        tally.failed[OUT_OF_RESOURCES] += 1
        logger.exception(
            "C-STORE of %s from %s failed unexpectedly", sop_instance_uid, _peer_of(assoc)
        )
        return OUT_OF_RESOURCES
    finally:
        received.close()  # a spooled file on disk goes now, not when collected
    if result.outcome == "stored":
        tally.stored += 1
    else:
        tally.duplicates += 1
    return SUCCESS


def handle_echo(event: Event) -> int:
    """EVT_C_ECHO: always success (PS3.4 A.4)."""
    tally_of(event.assoc).last_activity = time.monotonic()
    return SUCCESS


def handle_accepted(event: Event) -> None:
    logger.info(
        "Association accepted from %s (called %s)",
        _peer(event),
        event.assoc.acceptor.ae_title,
    )


def handle_rejected(event: Event) -> None:
    """EVT_REJECTED: pynetdicom's own rejections (association limit reached)."""
    primitive = event.assoc.acceptor.primitive
    source, reason = getattr(primitive, "result_source", 0), getattr(primitive, "diagnostic", 0)
    why = _REJECT_REASONS.get((source, reason), f"source {source}, reason {reason}")
    logger.warning("Association from %s rejected: %s", _peer(event), why)
    close_database()


def handle_released(event: Event, slots: AssociationSlots) -> None:
    tally = tally_of(event.assoc)
    logger.info("Association from %s released: %s", _peer(event), tally.summary())
    slots.release(event.assoc)
    tally.close_log(AssociationLog.RELEASED)
    close_database()


def handle_aborted(event: Event, slots: AssociationSlots) -> None:
    tally = tally_of(event.assoc)
    timeout = event.assoc.network_timeout
    timed_out = timeout is not None and time.monotonic() - tally.last_activity >= timeout - 0.05
    how = "timed out (network timeout)" if timed_out else "aborted"
    logger.info("Association from %s %s: %s", _peer(event), how, tally.summary())
    slots.release(event.assoc)
    tally.close_log(AssociationLog.TIMED_OUT if timed_out else AssociationLog.ABORTED)
    close_database()


def handle_connection_closed(event: Event, slots: AssociationSlots) -> None:
    """EVT_CONN_CLOSE: a connection that dropped without release or abort frees its place."""
    slots.release(event.assoc)


def association_ended(assoc: object) -> None:
    """Called in the association's thread when its reactor stops, whatever the reason: ends the
    log row of an association whose connection simply dropped (no release, no abort event)."""
    tally = getattr(assoc, "receiver_tally", None)
    if tally is not None and tally.log_id is not None:
        logger.info("Association from %s lost its connection: %s", tally.peer, tally.summary())
        tally.close_log(AssociationLog.ABORTED)
        close_database()


def close_database() -> None:
    """Close this thread's index connection (a thread that served an association ends)."""
    connection.close()
