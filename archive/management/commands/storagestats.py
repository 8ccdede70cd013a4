"""`python manage.py storagestats`: what the archive holds and how fast it grows."""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from archive.safetext import terminal_safe
from archive.statistics import human_size, storage_statistics
from pacsproject.database import use_index_file_option


class Command(BaseCommand):
    help = "Print counts, stored bytes, disk space and ingest per day, hour, sender, modality."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--storage-dir", type=Path, help="(DICOM_STORAGE_DIR)")
        parser.add_argument("--index-db", type=Path, help="SQLite index file")

    def handle(self, *args: Any, **options: Any) -> None:
        use_index_file_option(options["index_db"])
        stats = storage_statistics(
            options["storage_dir"] or settings.DICOM_STORAGE_DIR, now=timezone.now()
        )
        out = self.stdout.write
        out(f"patients   {stats.patients}")
        out(f"studies    {stats.studies}")
        out(f"series     {stats.series}")
        out(f"instances  {stats.instances}")
        out(f"stored     {human_size(stats.stored_bytes)}")
        out(f"disk       {human_size(stats.disk_free)} free of {human_size(stats.disk_total)}")
        out("ingest per day (last 30 days):")
        for day, count, size in stats.per_day:
            out(f"  {day:%Y-%m-%d}  {count:8d}  {human_size(size)}")
        out("ingest per hour (last 48 hours):")
        for hour, count, size in stats.per_hour:
            out(f"  {timezone.localtime(hour):%Y-%m-%d %H:00}  {count:8d}  {human_size(size)}")
        out("top calling AE titles:")
        for title, count in stats.top_senders:
            out(f"  {terminal_safe(title) or '(none)':16}  {count}")
        out("instances by modality:")
        for modality, count in stats.modalities:
            out(f"  {terminal_safe(modality):16}  {count}")
