"""What the archive holds and how fast it grows, aggregated in the database (never by loading
rows), for `manage.py storagestats` and the admin dashboard."""

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Count, Sum
from django.db.models.functions import Trunc, TruncDate, TruncHour
from django.utils import timezone

from archive.models import Instance, Patient, Series, Study

DAYS = 30  # ingest per day over this many days, today included
HOURS = 48  # ingest per hour over this many hours, the current one included


@dataclass(frozen=True)
class StorageStatistics:
    patients: int
    studies: int
    series: int
    instances: int
    stored_bytes: int
    disk_total: int | None
    disk_free: int | None
    per_day: list[tuple[dt.date, int, int]]  # day, instances, bytes (last 30 days)
    per_hour: list[tuple[dt.datetime, int, int]]  # hour, instances, bytes (last 48 hours)
    top_senders: list[tuple[str, int]]
    modalities: list[tuple[str, int]]


def storage_statistics(storage_dir: Path, *, now: dt.datetime) -> StorageStatistics:
    """Counts, sizes and ingest trends; `now` fixes the end of the day and hour windows."""
    try:
        usage = shutil.disk_usage(storage_dir)
        disk_total, disk_free = usage.total, usage.free
    except OSError:
        disk_total = disk_free = None
    senders = (
        Instance.objects.values("calling_ae_title").annotate(n=Count("id")).order_by("-n")[:10]
    )
    modalities = Instance.objects.values("series__modality").annotate(n=Count("id")).order_by("-n")
    return StorageStatistics(
        patients=Patient.objects.count(),
        studies=Study.objects.count(),
        series=Series.objects.count(),
        instances=Instance.objects.count(),
        stored_bytes=Instance.objects.aggregate(total=Sum("size"))["total"] or 0,
        disk_total=disk_total,
        disk_free=disk_free,
        per_day=ingest_by(TruncDate, since=_period_start(recent_periods(now, "day", DAYS)[0])),
        per_hour=ingest_by(TruncHour, since=recent_periods(now, "hour", HOURS)[0]),
        top_senders=[(row["calling_ae_title"], row["n"]) for row in senders],
        modalities=[(row["series__modality"] or "(none)", row["n"]) for row in modalities],
    )


def ingest_by(trunc: type[Trunc], *, since: dt.datetime) -> list:
    """(period, instances, bytes) per day or hour received since `since`, oldest first."""
    rows = (
        Instance.objects.filter(received_at__gte=since)
        .annotate(period=trunc("received_at"))
        .values("period")
        .annotate(n=Count("id"), size=Sum("size"))
        .order_by("period")
    )
    return [(row["period"], row["n"], row["size"] or 0) for row in rows]


def periods_filled(rows: list, periods: list) -> list[tuple]:
    """`rows` of `ingest_by` with (period, 0, 0) for each of `periods` that received nothing,
    so that charts show the quiet periods too."""
    by_period = {period: (n, size) for period, n, size in rows}
    return [(period, *by_period.get(period, (0, 0))) for period in periods]


def recent_periods(now: dt.datetime, unit: str, count: int) -> list:
    """The last `count` days (dates), hours or minutes (aware datetimes in the current time
    zone, as the database truncates them), oldest first, the current one last."""
    local = timezone.localtime(now)
    if unit == "day":
        today = local.date()
        return [today - dt.timedelta(days=i) for i in reversed(range(count))]
    if unit == "hour":
        top, step = local.replace(minute=0, second=0, microsecond=0), dt.timedelta(hours=1)
    else:
        top, step = local.replace(second=0, microsecond=0), dt.timedelta(minutes=1)
    return [top - i * step for i in reversed(range(count))]


def _period_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=timezone.get_current_timezone())


def human_size(value: float | None) -> str:
    """A byte count as people read it: 1.5 GB."""
    if value is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.1f} TB"
