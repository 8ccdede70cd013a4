"""What the receivers are doing now, as the status page, its JSON view, `scpstatus` and
/metrics show it: read from the rows the receiver processes keep up to date (receiver.live)."""

import datetime as dt
from typing import Any

from django.db.models import Q
from django.db.models.functions import TruncMinute

from archive.statistics import ingest_by, periods_filled, recent_periods
from receiver.models import AssociationLog, ReceiverProcess
from routing.forwarding import forward_failures_recent, forward_queue_summary

# Processes that stopped within this window are still listed (stopped, or down when they died
# without saying so); rejections and failures within it are listed as problems. Starts that
# failed are not listed: their error was the command's output.
_RECENTLY = dt.timedelta(hours=24)
_PROBLEMS_SHOWN = 20


# Rejected, aborted or timed out; a failed C-STORE; a request for a service we do not provide;
# or refused presentation contexts in an association that then delivered nothing (a sender
# proposing many classes, some refused, that stored what it had is no problem).
_PROBLEM = (
    Q(
        outcome__in=[
            AssociationLog.REJECTED,
            AssociationLog.ABORTED,
            AssociationLog.TIMED_OUT,
        ]
    )
    | ~Q(failures={})
    | Q(refusals__has_key="requests")
    | (
        Q(refusals__has_key="contexts", instances_stored=0, duplicates=0)
        & ~Q(outcome=AssociationLog.ACCEPTED)
    )
)


def receiver_status(now: dt.datetime) -> dict[str, Any]:
    """Running receivers, associations in progress (and those whose process died), instances
    per minute over the last hour, recent rejections and failures; JSON-ready."""
    processes = list(
        ReceiverProcess.objects.filter(
            Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - _RECENTLY)
        )
        .exclude(end=ReceiverProcess.FAILED)
        .order_by("-started_at")[:50]
    )
    alive = {p.pk for p in processes if p.is_alive(now)}
    processes.sort(key=lambda p: p.pk not in alive)  # running first, then newest first
    in_progress = list(
        AssociationLog.objects.filter(outcome=AssociationLog.ACCEPTED).order_by("started_at")[:200]
    )
    minutes = recent_periods(now, "minute", 60)
    per_minute = periods_filled(ingest_by(TruncMinute, since=minutes[0]), minutes)
    problems = (
        AssociationLog.objects.filter(started_at__gte=now - _RECENTLY)
        .filter(_PROBLEM)
        .order_by("-started_at")[:_PROBLEMS_SHOWN]
    )
    return {
        "now": now.isoformat(),
        "receivers": [_process(p, now, alive=p.pk in alive) for p in processes],
        "associations": [_association(a, now) for a in in_progress if a.receiver_id in alive],
        "gone": [_association(a, now) for a in in_progress if a.receiver_id not in alive],
        "per_minute": [
            {"minute": minute.isoformat(), "instances": n, "bytes": size}
            for minute, n, size in per_minute
        ],
        "problems": [_problem(a) for a in problems],
        # Per destination: waiting rows, the oldest's age, dead letters; then recent failures.
        "forwarding": [vars(row) for row in forward_queue_summary()],
        "forward_failures": forward_failures_recent(),
    }


def _process(process: ReceiverProcess, now: dt.datetime, *, alive: bool) -> dict[str, Any]:
    return {
        "id": process.pk,
        "host": process.host,
        "pid": process.pid,
        "ae_title": process.ae_title,
        "port": process.port,
        "role": process.role,
        "started_at": process.started_at.isoformat(),
        "heartbeat_at": process.heartbeat_at.isoformat(),
        "heartbeat_age": round((now - process.heartbeat_at).total_seconds(), 1),
        "state": "running" if alive else "stopped" if process.end == process.STOPPED else "down",
        "stopped_at": process.stopped_at.isoformat() if process.stopped_at else None,
    }


def _association(row: AssociationLog, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": row.pk,
        "calling_ae_title": row.calling_ae_title,
        "called_ae_title": row.called_ae_title,
        "peer": f"{row.peer_address}:{row.peer_port}",
        "started_at": row.started_at.isoformat(),
        "seconds": round((now - row.started_at).total_seconds(), 1),
        "stored": row.instances_stored,
        "duplicates": row.duplicates,
        "failures": sum(row.failures.values()),
        "bytes": row.bytes_received,
        "rate": row.current_rate,
        "receiver": row.receiver_id,
    }


def _problem(row: AssociationLog) -> dict[str, Any]:
    return {
        "id": row.pk,
        "started_at": row.started_at.isoformat(),
        "calling_ae_title": row.calling_ae_title,
        "peer": row.peer_address,
        "outcome": row.outcome,
        "reason": row.reason,
        "failures": row.failures,
    }
