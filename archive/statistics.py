"""What the archive holds and how fast it grows, aggregated in the database (never by loading
rows), for `manage.py storagestats` and the admin dashboard."""

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate, TruncHour

from archive.models import Instance, Patient, Series, Study


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
        per_day=_ingest(TruncDate, since=now - dt.timedelta(days=30)),
        per_hour=_ingest(TruncHour, since=now - dt.timedelta(hours=48)),
        top_senders=[(row["calling_ae_title"], row["n"]) for row in senders],
        modalities=[(row["series__modality"] or "(none)", row["n"]) for row in modalities],
    )


def _ingest(trunc: type[TruncDate] | type[TruncHour], *, since: dt.datetime) -> list:
    """(period, instances, bytes) per day or hour received since `since`, oldest first."""
    rows = (
        Instance.objects.filter(received_at__gte=since)
        .annotate(period=trunc("received_at"))
        .values("period")
        .annotate(n=Count("id"), size=Sum("size"))
        .order_by("period")
    )
    return [(row["period"], row["n"], row["size"] or 0) for row in rows]
