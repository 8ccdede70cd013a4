"""`python manage.py auditcheck [--days N]`: audit records per day, so that a gap shows."""

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.services import audit_per_day


class Command(BaseCommand):
    help = "Count audit records per day over the last N days; exit 1 if a day has none."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=30, help="days to check (default 30)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] < 1:
            raise CommandError("--days: at least 1")
        today = timezone.localdate()
        since = today - dt.timedelta(days=options["days"] - 1)
        per_day = audit_per_day(since=since, until=today)
        gaps = [day for day, n in per_day if n == 0]
        for day, n in per_day:
            self.stdout.write(f"{day:%Y-%m-%d}  {n:8d}{'  GAP: no records' if n == 0 else ''}")
        self.stdout.write(
            f"{sum(n for _, n in per_day)} records in {len(per_day)} days, "
            f"{len(gaps)} day(s) without any"
        )
        if gaps:
            raise SystemExit(1)
