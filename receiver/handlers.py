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
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

from archive.exceptions import (
    DatasetMismatch,
    DatasetUnreadable,
    DuplicateRejected,
    IndexFailure,
    IngestError,
    StorageFailure,
)
from archive.services import IngestSettings, instance_store
from receiver.access import LOCAL_LIMIT_EXCEEDED, Decision, association_request_decide
from receiver.association_audit import association_audit_write
from receiver.association_log import association_log_close, association_log_open
from receiver.config import ReceiverConfig
from receiver.limits import AssociationSlots
from receiver.live import LiveStatus
from receiver.models import AssociationLog
from receiver.sop_classes import storage_sop_classes
from receiver.transport.spool import SpoolBuffer

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
    nonconforming_uids: int = 0  # instances stored with UIDs that break PS3.5
    failed: Counter[int] = field(default_factory=Counter)
    bytes_received: int = 0
    log_id: int | None = None
    peer: str = ""
    # When the last DIMSE message was handled: an abort after a network timeout's worth of
    # silence was the timeout (pynetdicom's idle timer restarts when the peer then hangs up).
    last_activity: float = field(default_factory=time.monotonic)
    live: LiveStatus | None = None
    # What negotiation refused (Decision.refusal_summary), kept in the log's reason.
    refusal: str = ""
    # The A-ABORT or A-P-ABORT received, as handle_acse_received saw it go by.
    abort_received: str = ""
    # DIMSE requests for services we do not provide, by message type.
    unserved: Counter[str] = field(default_factory=Counter)
    # Instances stored per (PatientID, StudyInstanceUID), audited when the association ends.
    studies: Counter[tuple[str, str]] = field(default_factory=Counter)
    calling_ae_title: str = ""
    peer_address: str = ""

    def close_log(self, outcome: str, why: str = "") -> None:
        log_id, self.log_id = self.log_id, None  # once only
        if log_id is not None and self.nonconforming_uids:
            logger.warning(
                "Association from %s: %d instance(s) stored with UIDs that break PS3.5 "
                "(kept verbatim in the index, under safe file names; storage.strict_uids "
                "refuses them)",
                self.peer,
                self.nonconforming_uids,
            )
        if self.live is not None and log_id is not None:
            self.live.untrack(log_id)
        if log_id is not None and (self.studies or self.failed):
            association_audit_write(
                calling_ae_title=self.calling_ae_title,
                peer_address=self.peer_address,
                studies=self.studies,
                failures=self.failures_json(),
                association_outcome=outcome,
            )
        unserved = ", ".join(f"{name}×{n}" for name, n in sorted(self.unserved.items()))
        reasons = [
            why,
            f"requests for services not provided: {unserved}" if unserved else "",
            self.refusal,
        ]
        association_log_close(
            log_id,
            outcome=outcome,
            stored=self.stored,
            duplicates=self.duplicates,
            failures=self.failures_json(),
            bytes_received=self.bytes_received,
            reason="; ".join(r for r in reasons if r),
            unserved_requests=dict(self.unserved),
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


_STORAGE_CLASSES = frozenset(str(uid) for uid in storage_sop_classes())


def handle_requested(
    event: Event, config: ReceiverConfig, slots: AssociationSlots, live: LiveStatus | None
) -> None:
    """EVT_REQUESTED: apply the access decision (receiver.access) before negotiation.

    Rejects with A-ASSOCIATE-RJ as the decision says (permanent, reason 3 or 7; transient when
    the rules are unavailable), or transient, local limit exceeded, when all places are taken.
    Otherwise removes the refused abstract syntaxes from what we accept, so that pynetdicom
    answers their contexts with "abstract syntax not supported", and records why.
    """
    assoc = event.assoc
    requestor = assoc.requestor
    request = requestor.primitive
    supported = assoc.acceptor.supported_contexts
    decision = association_request_decide(
        config=config,
        calling_ae=request.calling_ae_title,
        called_ae=request.called_ae_title,
        address=requestor.address,
        proposed=[cx.abstract_syntax for cx in request.presentation_context_definition_list],
        served={cx.abstract_syntax for cx in supported},
        storage_classes=_STORAGE_CLASSES,
    )
    if decision.rejection is None and not slots.acquire(assoc):
        decision = Decision(LOCAL_LIMIT_EXCEEDED, f"all {slots.limit} association places are taken")
    log_id = association_log_open(
        calling_ae_title=request.calling_ae_title,
        called_ae_title=request.called_ae_title,
        peer_address=requestor.address,
        peer_port=requestor.port,
        rejected_because=decision.why if decision.rejection is not None else "",
        reason=decision.refusal_summary(),
        refused_contexts=[r.as_json() for r in decision.refused],
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
    # Who sent, for the per-study audit records written when the association ends.
    tally.calling_ae_title = request.calling_ae_title.strip()
    tally.peer_address = requestor.address
    tally.refusal = decision.refusal_summary()
    if live is not None and log_id is not None:
        tally.live = live
        live.track(log_id, tally)
    if decision.refused:
        refused = decision.refused_uids
        assoc.acceptor.supported_contexts = [
            cx for cx in supported if cx.abstract_syntax not in refused
        ]


def handle_store(event: Event, ingest: IngestSettings) -> int:
    """EVT_C_STORE: the C-STOREs that receiver.transport.fastpath passed on to pynetdicom."""
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
    # Large datasets were spooled to disk as they arrived (receiver.transport.spool).
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
    # A restore wrote the file of an indexed instance whose copy was gone: a store, not a
    # duplicate left as it was.
    if result.outcome in ("stored", "restored"):
        tally.stored += 1
    else:
        tally.duplicates += 1
    tally.nonconforming_uids += result.nonconforming_uids
    tally.studies[result.patient_id, result.study_instance_uid] += 1
    return SUCCESS


def handle_echo(event: Event) -> int:
    """EVT_C_ECHO: always success (PS3.4 A.4)."""
    tally_of(event.assoc).last_activity = time.monotonic()
    return SUCCESS


def handle_accepted(event: Event) -> None:
    refusal = tally_of(event.assoc).refusal
    # Senders often propose many classes and use few: refusals are news only when the
    # association then delivers nothing (handle_released).
    logger.info(
        "Association accepted from %s (called %s)%s",
        _peer(event),
        event.assoc.acceptor.ae_title,
        f"; {refusal}" if refusal else "",
    )


# DIMSE requests and the intervention events that serve them (pynetdicom.evt).
_SERVICE_EVENTS = {
    "EVT_C_ECHO": ("C_ECHO_RQ",),
    "EVT_C_STORE": ("C_STORE_RQ",),
    "EVT_C_FIND": ("C_FIND_RQ", "C_CANCEL_RQ"),
    "EVT_C_GET": ("C_GET_RQ", "C_CANCEL_RQ"),
    "EVT_C_MOVE": ("C_MOVE_RQ", "C_CANCEL_RQ"),
    "EVT_N_ACTION": ("N_ACTION_RQ",),
    "EVT_N_CREATE": ("N_CREATE_RQ",),
    "EVT_N_DELETE": ("N_DELETE_RQ",),
    "EVT_N_EVENT_REPORT": ("N_EVENT_REPORT_RQ",),
    "EVT_N_GET": ("N_GET_RQ",),
    "EVT_N_SET": ("N_SET_RQ",),
}


def requests_served(event_handlers: list) -> frozenset[str]:
    """The DIMSE request types the AE's handler list serves (e.g. "C_STORE_RQ")."""
    served: set[str] = set()
    for binding in event_handlers:
        served.update(_SERVICE_EVENTS.get(binding[0].name, ()))
    return frozenset(served)


def handle_dimse_received(event: Event, served: frozenset[str]) -> None:
    """EVT_DIMSE_RECV (messages pynetdicom decodes; the fast path's C-STOREs never come here):
    count and log a request for a service we do not provide."""
    kind = type(event.message).__name__
    if not kind.endswith("_RQ") or kind in served:
        return
    name = kind.replace("_", "-")
    tally = tally_of(event.assoc)
    tally.unserved[name] += 1
    if tally.unserved[name] == 1:
        logger.warning("%s from %s: a service this receiver does not provide", name, tally.peer)


# A-P-ABORT provider reasons (PS3.8 9.3.8), as our DICOM layer detected the peer's error.
_PROVIDER_REASONS = {
    0x01: "unrecognised PDU",
    0x02: "unexpected PDU",
    0x04: "unrecognised PDU parameter",
    0x05: "unexpected PDU parameter",
    0x06: "invalid PDU parameter value",
}


def handle_acse_received(event: Event) -> None:
    """EVT_ACSE_RECV: note an abort as it arrives (pynetdicom consumes the primitive before
    EVT_ABORTED, which then cannot tell a peer's A-ABORT from a broken connection)."""
    primitive = event.primitive
    if isinstance(primitive, A_ABORT):
        source = getattr(primitive, "abort_source", None)
        who = "the peer's DICOM layer" if source == 0x02 else "the peer"
        tally_of(event.assoc).abort_received = f"aborted by {who} (A-ABORT)"
    elif isinstance(primitive, A_P_ABORT):
        reason = getattr(primitive, "provider_reason", None)
        tally_of(event.assoc).abort_received = (
            "the peer closed the connection without release"
            if reason in (None, 0x00)
            else f"protocol error from the peer ({_PROVIDER_REASONS.get(reason, reason)}): aborted"
        )


def abort_reason(assoc: object, tally: AssociationTally) -> tuple[str, str]:
    """The outcome of an aborted association and why, for its log row: our own reason where
    we aborted it (`receiver_abort_reason`: shutdown grace, framing error, PDU too long), the
    network timeout, or what the peer sent."""
    explicit = getattr(assoc, "receiver_abort_reason", "")
    if explicit:
        return AssociationLog.ABORTED, explicit
    timeout = getattr(assoc, "network_timeout", None)
    if timeout is not None and time.monotonic() - tally.last_activity >= timeout - 0.05:
        return AssociationLog.TIMED_OUT, f"nothing received for {timeout:g} s (network timeout)"
    if tally.abort_received:
        return AssociationLog.ABORTED, tally.abort_received
    if getattr(assoc, "_sent_abort", False):
        if tally.unserved:  # pynetdicom aborts on a request it has no service class for
            return (
                AssociationLog.ABORTED,
                "aborted by this receiver after a request it does not serve",
            )
        return AssociationLog.ABORTED, "aborted by this receiver"
    return AssociationLog.ABORTED, "connection lost"


def handle_rejected(event: Event) -> None:
    """EVT_REJECTED: pynetdicom's own rejections (association limit reached)."""
    primitive = event.assoc.acceptor.primitive
    source, reason = getattr(primitive, "result_source", 0), getattr(primitive, "diagnostic", 0)
    why = _REJECT_REASONS.get((source, reason), f"source {source}, reason {reason}")
    logger.warning("Association from %s rejected: %s", _peer(event), why)
    close_database()


def handle_released(event: Event, slots: AssociationSlots) -> None:
    tally = tally_of(event.assoc)
    if tally.refusal and not (tally.stored or tally.duplicates or tally.failed):
        logger.warning(
            "Association from %s released having delivered nothing; %s",
            _peer(event),
            tally.refusal,
        )
    else:
        logger.info("Association from %s released: %s", _peer(event), tally.summary())
    slots.release(event.assoc)
    tally.close_log(AssociationLog.RELEASED)
    close_database()


def handle_aborted(event: Event, slots: AssociationSlots) -> None:
    tally = tally_of(event.assoc)
    outcome, why = abort_reason(event.assoc, tally)
    how = why if why.startswith(outcome) else f"{outcome}: {why}"
    if tally.refusal and not (tally.stored or tally.duplicates or tally.failed):
        how = f"{how}; {tally.refusal}"  # why the peer had nothing to send
    logger.warning("Association from %s %s: %s", _peer(event), how, tally.summary())
    slots.release(event.assoc)
    tally.close_log(outcome, why)
    close_database()


def handle_connection_closed(event: Event, slots: AssociationSlots) -> None:
    """EVT_CONN_CLOSE: a connection that dropped without release or abort frees its place."""
    slots.release(event.assoc)


def association_ended(assoc: object) -> None:
    """Called in the association's thread when its reactor stops, whatever the reason: ends the
    log row of an association whose connection simply dropped (no release, no abort event)."""
    tally = getattr(assoc, "receiver_tally", None)
    if tally is not None and tally.log_id is not None:
        why = getattr(assoc, "receiver_abort_reason", "") or "connection lost"
        logger.warning("Association from %s aborted: %s: %s", tally.peer, why, tally.summary())
        tally.close_log(AssociationLog.ABORTED, why)
        close_database()


def close_database() -> None:
    """Close this thread's index connection (a thread that served an association ends)."""
    connection.close()
