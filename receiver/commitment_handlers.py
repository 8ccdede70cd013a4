"""Storage Commitment Push Model, SCP side: the N-ACTION that asks for commitment.

The N-ACTION-RSP goes at once; the result follows as an N-EVENT-REPORT from routing.commitment's
delivery loop: on the same association while the requester keeps it open, if it accepted the
SCP role there (SCP/SCU role selection, PS3.4 J.3.3), else on a new association to it.
"""

import logging
from collections.abc import Callable

from django.db import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from receiver.query_audit import commitment_audit_write
from routing.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    CommitmentInvalid,
    commitment_association_offer,
    commitment_request_record,
)

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT = 0x0115
NO_SUCH_ACTION = 0x0123
NO_SUCH_INSTANCE = 0x0112
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2.1)


def handle_n_action(event: Event, wake: Callable[[], None]) -> tuple[int, Dataset | None]:
    """EVT_N_ACTION: record the request and answer 0x0000 (no dataset); 0x0123 for another
    action type, 0x0112 for another SOP instance than the well-known one, 0x0115 for a
    request without Transaction UID or references, 0x0110 when the index is unavailable.
    Each request, accepted or not, leaves one audit record (receiver.query_audit)."""
    status, transaction_uid, instances, reason = _n_action(event, wake)
    commitment_audit_write(
        assoc=event.assoc,
        transaction_uid=transaction_uid,
        instances=instances,
        status=status,
        reason=reason,
    )
    return status, None


def _n_action(event: Event, wake: Callable[[], None]) -> tuple[int, str, int, str]:
    """The status, transaction UID, number of references and reason of one N-ACTION."""
    request = event.request
    peer = f"{event.assoc.requestor.ae_title.strip()}@{event.assoc.requestor.address}"
    if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
        logger.warning("N-ACTION from %s: unknown action type %s", peer, request.ActionTypeID)
        return NO_SUCH_ACTION, "", 0, f"action type {request.ActionTypeID}"
    if str(request.RequestedSOPInstanceUID) != STORAGE_COMMITMENT_INSTANCE:
        logger.warning("N-ACTION from %s: not the Storage Commitment instance", peer)
        return NO_SUCH_INSTANCE, "", 0, "not the Storage Commitment instance"
    information = None
    try:
        information = event.action_information
        offered = _report_here(event)
        if offered:
            # Before the row exists, so that the delivery loop never finds the row without
            # the offer. The report may come on this association (PS3.4 J.3.3) while the
            # requester keeps it open; pynetdicom sends it after this N-ACTION-RSP (the
            # reactor is busy until then).
            commitment_association_offer(
                calling_ae_title=event.assoc.requestor.ae_title,
                transaction_uid=_transaction_uid(information),
                assoc=event.assoc,
            )
        row = commitment_request_record(
            calling_ae_title=event.assoc.requestor.ae_title,
            information=information,
            offered=offered,
        )
    except CommitmentInvalid as exc:
        logger.warning("Storage Commitment request from %s refused (0x0115): %s", peer, exc)
        return INVALID_ARGUMENT, _transaction_uid(information), 0, str(exc)
    except DatabaseError as exc:
        logger.error("Storage Commitment request from %s failed: %s", peer, exc)
        return PROCESSING_FAILURE, _transaction_uid(information), 0, "index unavailable"
    except Exception as exc:
        logger.warning("Storage Commitment request from %s unreadable (0x0115): %s", peer, exc)
        return INVALID_ARGUMENT, "", 0, "unreadable action information"
    logger.info(
        "Storage Commitment %s requested by %s for %d instance(s)",
        row.transaction_uid,
        peer,
        len(row.references),
    )
    wake()
    return SUCCESS, row.transaction_uid, len(row.references), ""


def _report_here(event: Event) -> bool:
    """Whether the requester accepted the SCP role on the N-ACTION's context, so that we may
    send the N-EVENT-REPORT on this association."""
    context_id = getattr(event, "context", None)
    context_id = getattr(context_id, "context_id", None)
    for context in event.assoc.accepted_contexts:
        if context.context_id == context_id:
            return bool(context.as_scu)
    return False


def _transaction_uid(information: Dataset | None) -> str:
    try:
        return str(information.get("TransactionUID", "") or "").strip()[:64] if information else ""
    except Exception:
        return ""
