"""`python manage.py auditexport [--once]`: send the audit trail's queued records to the audit
record repository named by AUDIT_SYSLOG, as DICOM audit messages over syslog (IHE ATNA)."""

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from audit.syslog import SyslogConfigError, audit_export, syslog_target_parse


class Command(BaseCommand):
    help = "Send queued audit records to AUDIT_SYSLOG (udp:// or tls://); keep doing so."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="send what is queued, then exit")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="seconds between rounds (default 5)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.AUDIT_SYSLOG:
            raise CommandError("AUDIT_SYSLOG: not set (udp://HOST:514 or tls://HOST:6514)")
        try:
            target = syslog_target_parse(settings.AUDIT_SYSLOG)
        except SyslogConfigError as exc:
            raise CommandError(str(exc)) from None
        delay = options["interval"]
        while True:
            try:
                sent = audit_export(target)
                if sent:
                    self.stdout.write(f"{sent} audit record(s) sent to {settings.AUDIT_SYSLOG}")
                delay = options["interval"]
            except OSError as exc:
                # Down: the records stay queued in the database; try again, less and less often.
                self.stderr.write(f"audit record repository {settings.AUDIT_SYSLOG}: {exc}")
                if options["once"]:
                    raise SystemExit(1) from None
                delay = min(delay * 2, 300.0)
            if options["once"]:
                return
            connections.close_all()
            time.sleep(delay)
