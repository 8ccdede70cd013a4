"""`python manage.py announce_stable [--watch]`: announce series and studies that have become
stable (`series_stable`, `study_stable`), in this process, with this project's receivers."""

import signal
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.routers import index_database
from archive.stability import DEFAULT_STABLE_AGE, StableAges, stable_announce, stable_sweep_once
from pacsproject.database import use_index_file_option


class Command(BaseCommand):
    help = (
        "Announce series and studies without a new instance for their stable age: once, or "
        "with --watch until Ctrl-C/SIGTERM. Safe beside runscp and other announcers: each "
        "announcement is claimed by exactly one process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--watch", action="store_true", help="keep announcing until stopped")
        parser.add_argument("--stable-age", type=float, help="seconds (DICOM_STABLE_AGE, else 60)")
        parser.add_argument("--series-stable-age", type=float, help="for series (--stable-age)")
        parser.add_argument("--study-stable-age", type=float, help="for studies (--stable-age)")
        parser.add_argument(
            "--database", help="alias of the index in DATABASES (ARCHIVE_DATABASE, else default)"
        )
        parser.add_argument("--index-db", type=Path, help="SQLite index file")

    def handle(self, *args: Any, **options: Any) -> None:
        use_index_file_option(options["index_db"])
        using = options["database"] or index_database()
        if using not in settings.DATABASES:
            raise CommandError(f"--database: no database {using!r} in DATABASES")
        age = options["stable_age"]
        if age is None:
            age = getattr(settings, "DICOM_STABLE_AGE", DEFAULT_STABLE_AGE)
        try:
            ages = StableAges(
                series=options["series_stable_age"] or age,
                study=options["study_stable_age"] or age,
            )
        except ValueError as exc:
            raise CommandError(f"--stable-age: {exc}") from None
        if not options["watch"]:
            announced = stable_announce(ages=ages, using=using)
            self.stdout.write(f"{announced.series} series, {announced.studies} studies announced")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
        self.stdout.write(
            f"Announcing stable series after {ages.series:g} s and studies after "
            f"{ages.study:g} s without a new instance (Ctrl-C stops)"
        )
        self.stdout.flush()
        while not stop.wait(ages.poll_interval):
            stable_sweep_once(ages=ages, using=using)
