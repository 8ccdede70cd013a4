"""`python manage.py scpstatus [--watch [SECONDS]]`: what the status page shows, in the
terminal."""

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils import timezone

from archive.safetext import terminal_safe
from pacsproject.database import use_index_file_option
from receiver.status import receiver_status

_SPARK = " ▁▂▃▄▅▆▇█"


class Command(BaseCommand):
    help = "Print running receivers, associations in progress, ingest per minute and problems."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--index-db", type=Path, help="SQLite index file")
        parser.add_argument(
            "--watch",
            nargs="?",
            type=float,
            const=2.0,
            metavar="SECONDS",
            help="refresh every SECONDS (default 2) until interrupted",
        )
        parser.add_argument("--json", action="store_true", help="print the status as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        use_index_file_option(options["index_db"])
        interval = options["watch"]
        if interval is not None and interval <= 0:
            raise CommandError("--watch: the interval must be positive")
        try:
            while True:
                status = receiver_status(timezone.now())
                if options["json"]:
                    self.stdout.write(json.dumps(status, indent=2))
                else:
                    if interval is not None and self.stdout.isatty():
                        self.stdout.write("\x1b[H\x1b[2J", ending="")  # clear the screen
                    self.stdout.write(status_text(status))
                if interval is None:
                    return
                connections.close_all()
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def status_text(status: dict[str, Any]) -> str:
    """The status as lines of text, every value from a peer escaped for the terminal."""
    status = _terminal_safe(status)
    lines = [f"Receiver status at {_local(status['now'])}", "", "Receivers:"]
    if not status["receivers"]:
        lines.append("  none in the last 24 hours")
    for r in status["receivers"]:
        lines.append(
            f"  {r['state']:8} {r['ae_title']:16} port {r['port']:<5} {r['host']} pid {r['pid']}"
            f" ({r['role']}), started {_local(r['started_at'])},"
            + (
                f" stopped {_local(r['stopped_at'])}"
                if r["state"] == "stopped"
                else f" heartbeat {r['heartbeat_age']:.0f} s ago"
            )
        )
    lines += ["", "Associations in progress:"]
    if not status["associations"]:
        lines.append("  none")
    for a in status["associations"]:
        lines.append(
            f"  {a['calling_ae_title']:16} -> {a['called_ae_title']:16} {a['peer']:21}"
            f" {a['seconds']:7.0f} s  {a['stored']:7d} stored  {a['duplicates']} duplicate(s)"
            f"  {a['failures']} failed  {a['bytes']} bytes  {a['rate']:.1f}/s"
        )
    for a in status["gone"]:
        lines.append(
            f"  (receiver down) {a['calling_ae_title']:16} {a['peer']:21}"
            f" started {_local(a['started_at'])}, {a['stored']} stored,"
            f" {a['duplicates']} duplicate(s)"
        )
    counts = [m["instances"] for m in status["per_minute"]]
    peak = max(counts, default=0)
    spark = "".join(_SPARK[0 if not peak else round(8 * n / peak)] for n in counts)
    lines += [
        "",
        f"Instances per minute, last hour: {sum(counts)} in all, at most {peak} a minute",
        f"  |{spark}|",
        "",
        "Recent rejections and failures:",
    ]
    if not status["problems"]:
        lines.append("  none")
    for p in status["problems"]:
        failures = ", ".join(f"{s} x{n}" for s, n in p["failures"].items())
        lines.append(
            f"  {_local(p['started_at'])}  {p['calling_ae_title'] or '?':16} {p['peer']:15}"
            f" {p['outcome']:9} {p['reason'] or failures}"
        )
    lines += ["", "Forwarding queue:"]
    if not status.get("forwarding"):
        lines.append("  no forwarding rule or queue")
    for f in status.get("forwarding", []):
        oldest = f["oldest_pending_seconds"]
        lines.append(
            f"  {f['destination']:16} {f['depth']:7d} waiting"
            + (f", oldest {oldest:.0f} s" if oldest is not None else "")
            + f", {f['dead']} dead"
            + (f"  last error: {f['last_error']}" if f["last_error"] else "")
        )
    for f in status.get("forward_failures", []):
        lines.append(f"  failed: {f['destination']:16} {f['state']:8} {f['error']}")
    return "\n".join(lines)


def _terminal_safe(value: Any) -> Any:
    if isinstance(value, str):
        return terminal_safe(value)
    if isinstance(value, dict):
        return {key: _terminal_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_terminal_safe(item) for item in value]
    return value


def _local(iso: str) -> str:
    return f"{timezone.localtime(dt.datetime.fromisoformat(iso)):%Y-%m-%d %H:%M:%S}"
