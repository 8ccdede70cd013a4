"""`python manage.py storagestats`: what the archive holds and how fast it grows."""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from archive.statistics import storage_statistics
from pacsproject.database import use_sqlite_index


def _size(value: int | None) -> str:
    if value is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value} B"
        value /= 1024
    raise AssertionError


class Command(BaseCommand):
    help = "Print counts, stored bytes, disk space and ingest per day, hour, sender, modality."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--storage-dir", type=Path, help="(DICOM_STORAGE_DIR)")
        parser.add_argument("--index-db", type=Path, help="SQLite index file")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["index_db"]:
            if not options["index_db"].is_file():
                raise CommandError(f"index {options['index_db']} does not exist")
            use_sqlite_index(options["index_db"].resolve())
        stats = storage_statistics(
            options["storage_dir"] or settings.DICOM_STORAGE_DIR, now=timezone.now()
        )
        out = self.stdout.write
        out(f"patients   {stats.patients}")
        out(f"studies    {stats.studies}")
        out(f"series     {stats.series}")
        out(f"instances  {stats.instances}")
        out(f"stored     {_size(stats.stored_bytes)}")
        out(f"disk       {_size(stats.disk_free)} free of {_size(stats.disk_total)}")
        out("ingest per day (last 30 days):")
        for day, count, size in stats.per_day:
            out(f"  {day:%Y-%m-%d}  {count:8d}  {_size(size)}")
        out("ingest per hour (last 48 hours):")
        for hour, count, size in stats.per_hour:
            out(f"  {timezone.localtime(hour):%Y-%m-%d %H:00}  {count:8d}  {_size(size)}")
        out("top calling AE titles:")
        for title, count in stats.top_senders:
            out(f"  {title or '(none)':16}  {count}")
        out("instances by modality:")
        for modality, count in stats.modalities:
            out(f"  {modality:16}  {count}")
