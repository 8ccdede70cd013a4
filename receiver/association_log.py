"""Writers of the association log. A failure to write it is logged and never disturbs the
association: the log is for people, the images are what matter."""

import logging
import os
from collections import Counter
from datetime import UTC, datetime

from django.db import DatabaseError, connection
from django.utils import timezone

from receiver.models import AssociationLog

logger = logging.getLogger(__name__)

# A sender may propose over a hundred contexts; the first ones tell the story.
_CONTEXTS_KEPT = 64


def association_log_open(
    *,
    calling_ae_title: str,
    called_ae_title: str,
    peer_address: str,
    peer_port: int | None,
    rejected_because: str = "",
    reason: str = "",
    refused_contexts: list[dict[str, str]] | None = None,
    receiver_id: int | None = None,
) -> int | None:
    """Record an association attempt; return the row's id (None if the log is unavailable).

    `rejected_because` rejects it; otherwise `reason` and `refused_contexts` say which
    proposed presentation contexts were refused and why."""
    now = timezone.now()
    try:
        row = AssociationLog.objects.create(
            started_at=now,
            ended_at=now if rejected_because else None,
            calling_ae_title=calling_ae_title.strip()[:16],
            called_ae_title=called_ae_title.strip()[:16],
            peer_address=peer_address[:64],
            peer_port=peer_port,
            outcome=AssociationLog.REJECTED if rejected_because else AssociationLog.ACCEPTED,
            reason=(rejected_because or reason)[:255],
            refusals={"contexts": refused_contexts[:_CONTEXTS_KEPT]} if refused_contexts else {},
            process_id=os.getpid(),
            receiver_id=receiver_id,
        )
    except DatabaseError as exc:
        logger.error("Association log not written: %s", exc)
        return None
    return row.pk


def connections_dropped_record(
    *, counts: dict[str, int], hosts: Counter[str], since: float, receiver_id: int | None = None
) -> None:
    """Record connections dropped before association (receiver.transport.lobby) as one row:
    counts by reason in `failures`, the address that lost most as the peer."""
    busiest = hosts.most_common(1)[0][0] if hosts else ""
    others = len(hosts) - 1
    summary = ", ".join(f"{reason}: {n}" for reason, n in counts.items())
    try:
        AssociationLog.objects.create(
            started_at=datetime.fromtimestamp(since, tz=UTC),
            ended_at=timezone.now(),
            peer_address=(f"{busiest} and {others} more" if others > 0 else busiest)[:64],
            outcome=AssociationLog.DROPPED,
            reason=f"{sum(counts.values())} connections dropped before association ({summary})"[
                :255
            ],
            failures=counts,
            process_id=os.getpid(),
            receiver_id=receiver_id,
        )
    except DatabaseError as exc:
        logger.error("Association log not written: %s", exc)
    finally:
        connection.close()  # written from the lobby's thread, rarely: no connection kept


def association_log_close(
    row_id: int | None,
    *,
    outcome: str,
    stored: int,
    duplicates: int,
    failures: dict[str, int],
    bytes_received: int,
    reason: str | None = None,
    unserved_requests: dict[str, int] | None = None,
) -> None:
    """Record how an accepted association ended (only the first call for a row counts):
    `reason` (why it was aborted, with what was refused; None keeps the reason recorded at
    the start), and requests for services we do not provide."""
    if row_id is None:
        return
    changes: dict[str, object] = {}
    if reason is not None:
        changes["reason"] = reason[:255]
    try:
        if unserved_requests:
            refusals = (
                AssociationLog.objects.filter(pk=row_id).values_list("refusals", flat=True).first()
            )
            changes["refusals"] = {**(refusals or {}), "requests": unserved_requests}
        AssociationLog.objects.filter(pk=row_id, outcome=AssociationLog.ACCEPTED).update(
            ended_at=timezone.now(),
            outcome=outcome,
            instances_stored=stored,
            duplicates=duplicates,
            failures=failures,
            bytes_received=bytes_received,
            **changes,
        )
    except DatabaseError as exc:
        logger.error("Association log not updated: %s", exc)
