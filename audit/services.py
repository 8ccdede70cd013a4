"""The one writer of the audit trail, and what reads it in bulk."""

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.http import HttpRequest
from django.utils import timezone

from audit.models import ACTIONS, AUDIT_PRUNE, OUTCOMES, SUCCESS, AuditEvent

logger = logging.getLogger(__name__)

_ACTIONS = {value for value, _ in ACTIONS}
_OUTCOMES = {value for value, _ in OUTCOMES}


def audit_record(action: str, **fields: Any) -> AuditEvent:
    """Write one audit record, in the caller's transaction if there is one; `fields` are
    `audit_fields`' keywords (outcome, request, user, ae_title, peer_address, the four
    identifiers, detail).

    With `request`, the actor is its user and the address its client's. A C-FIND, say, is one
    line: `audit_record(QUERY, ae_title=..., peer_address=..., detail={"keys": ...})`.
    Raises ValueError for an unknown action or outcome (a programming error).
    """
    return AuditEvent.objects.create(**audit_fields(action, **fields))


def audit_record_many(records: Iterable[dict[str, Any]]) -> int:
    """Write several records (keyword arguments of `audit_record` each) in one statement and one
    transaction; for the receiver, which records an association's studies when it ends. A
    database error is logged, never raised: it must not disturb the association."""
    rows = [AuditEvent(**audit_fields(**record)) for record in records]
    if not rows:
        return 0
    try:
        with transaction.atomic():
            AuditEvent.objects.bulk_create(rows)
    except DatabaseError as exc:
        logger.error("Audit records not written (%d): %s", len(rows), exc)
        return 0
    return len(rows)


def audit_fields(
    action: str,
    *,
    outcome: str = SUCCESS,
    request: HttpRequest | None = None,
    user: str = "",
    ae_title: str = "",
    peer_address: str = "",
    patient_id: str = "",
    study_instance_uid: str = "",
    series_instance_uid: str = "",
    sop_instance_uid: str = "",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if action not in _ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in _OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    if request is not None:
        if not user and getattr(request, "user", None) is not None:
            user = request.user.get_username() if request.user.is_authenticated else ""
        peer_address = peer_address or client_address(request)
        detail = {"via": "web", **(detail or {})}
    return {
        "time": timezone.now(),
        "action": action,
        "outcome": outcome,
        "user": user[:150],
        "ae_title": ae_title.strip()[:16],
        "peer_address": peer_address[:64],
        "patient_id": patient_id[:64],
        "study_instance_uid": study_instance_uid[:64],
        "series_instance_uid": series_instance_uid[:64],
        "sop_instance_uid": sop_instance_uid[:64],
        "detail": detail or {},
    }


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind a trusted proxy (BEHIND_PROXY) the address
    it appended last to X-Forwarded-For (earlier entries are the client's own claims)."""
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR", "")


def audit_per_day(*, since: dt.date, until: dt.date) -> list[tuple[dt.date, int]]:
    """Records per day from `since` to `until` (inclusive), days without any included."""
    start = timezone.make_aware(dt.datetime.combine(since, dt.time()))
    end = timezone.make_aware(dt.datetime.combine(until + dt.timedelta(days=1), dt.time()))
    counts = dict(
        AuditEvent.objects.filter(time__gte=start, time__lt=end)
        .annotate(day=TruncDate("time", tzinfo=timezone.get_current_timezone()))
        .values_list("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
    )
    days = (until - since).days + 1
    return [
        (day, counts.get(day, 0)) for day in (since + dt.timedelta(days=i) for i in range(days))
    ]


def audit_prune(*, older_than_days: int, user: str = "") -> int:
    """Remove records older than the retention period (the only way records go), recording
    that it happened; returns how many went."""
    if older_than_days <= 0:
        raise ValueError("the retention must be at least one day")
    cutoff = timezone.now() - dt.timedelta(days=older_than_days)
    with transaction.atomic():
        deleted, _ = AuditEvent.objects.filter(time__lt=cutoff).delete()
        audit_record(
            AUDIT_PRUNE,
            user=user,
            detail={"via": "command", "removed": deleted, "before": cutoff.isoformat()},
        )
    return deleted
