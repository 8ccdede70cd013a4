"""`python manage.py auditprune`: remove audit records older than AUDIT_RETENTION_DAYS."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import audit_prune


class Command(BaseCommand):
    help = "Remove audit records older than the retention (AUDIT_RETENTION_DAYS, or --days)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="retention in days (AUDIT_RETENTION_DAYS)")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.AUDIT_RETENTION_DAYS
        if not days:
            self.stdout.write("AUDIT_RETENTION_DAYS is 0: records are kept for ever")
            return
        if days < 1:
            raise CommandError("AUDIT_RETENTION_DAYS: at least 1 day, or 0 to keep every record")
        removed = audit_prune(older_than_days=days, user="auditprune")
        self.stdout.write(f"{removed} audit record(s) older than {days} days removed")
