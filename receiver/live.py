"""This process's live status, for the web UI and `scpstatus` in other processes: a row for the
process, and a heartbeat thread that refreshes it with the progress of the associations being
served. Writing it never disturbs an association: a failed write is logged and retried at the
next beat."""

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from django.db import DatabaseError, connection
from django.utils import timezone

from archive.storage import pid_alive
from receiver.models import AssociationLog, ReceiverProcess, heartbeat_deadline, heartbeat_interval

logger = logging.getLogger(__name__)

# Process rows that stopped this long ago are forgotten at the next start.
_FORGET_AFTER = dt.timedelta(days=7)


class Progress(Protocol):
    """What the heartbeat reads of an association (receiver.handlers.AssociationTally)."""

    stored: int
    duplicates: int
    bytes_received: int

    def failures_json(self) -> dict[str, int]: ...


class LiveStatus:
    def __init__(
        self, *, ae_title: str, port: int, role: str, on_beat: Callable[[], object] | None = None
    ) -> None:
        self.ae_title = ae_title
        self.port = port
        self.role = role
        self.on_beat = on_beat  # runs first at each beat, on the heartbeat's connection
        self.process_id: int | None = None
        self._tracked: dict[int, tuple[Progress, float, int]] = {}  # log id: (tally, t, count)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Record the process, end what dead processes left behind, start the heartbeat."""
        now = timezone.now()
        try:
            _reap(now)
            self.process_id = ReceiverProcess.objects.create(
                host=socket.gethostname(),
                pid=os.getpid(),
                ae_title=self.ae_title,
                port=self.port,
                role=self.role,
                started_at=now,
                heartbeat_at=now,
            ).pk
        except DatabaseError as exc:
            logger.error("Live status not recorded: %s", exc)
        finally:
            connection.close()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, failed: bool = False) -> None:
        """Stop the heartbeat and record the process as stopped (or as a start that failed)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.process_id is None:
            return
        try:
            ReceiverProcess.objects.filter(pk=self.process_id).update(
                stopped_at=timezone.now(),
                end=ReceiverProcess.FAILED if failed else ReceiverProcess.STOPPED,
            )
        except DatabaseError as exc:
            logger.error("Live status not updated: %s", exc)
        finally:
            connection.close()

    def track(self, log_id: int, tally: Progress) -> None:
        with self._lock:
            self._tracked[log_id] = (tally, time.monotonic(), 0)

    def untrack(self, log_id: int) -> None:
        with self._lock:
            self._tracked.pop(log_id, None)

    def _run(self) -> None:
        try:
            while not self._stopping.wait(heartbeat_interval()):
                self.beat()
        finally:
            connection.close()

    def beat(self) -> None:
        """Refresh the process row and the progress of each association in progress."""
        if self.on_beat is not None:
            try:
                self.on_beat()
            except DatabaseError as exc:
                logger.warning("Index check not done: %s", exc)
                connection.close()
            except Exception:  # the heartbeat goes on whatever the check met
                logger.exception("Index check failed")
        now = timezone.now()
        clock = time.monotonic()
        with self._lock:
            tracked = list(self._tracked.items())
        try:
            ReceiverProcess.objects.filter(pk=self.process_id).update(heartbeat_at=now)
            for log_id, (tally, since, count_then) in tracked:
                count = tally.stored + tally.duplicates
                rate = (count - count_then) / max(clock - since, 1e-3)
                AssociationLog.objects.filter(pk=log_id, outcome=AssociationLog.ACCEPTED).update(
                    updated_at=now,
                    current_rate=round(rate, 2),
                    instances_stored=tally.stored,
                    duplicates=tally.duplicates,
                    failures=tally.failures_json(),
                    bytes_received=tally.bytes_received,
                )
                with self._lock:
                    if log_id in self._tracked:
                        self._tracked[log_id] = (tally, clock, count)
        except DatabaseError as exc:
            logger.warning("Heartbeat not written: %s", exc)
            connection.close()


def _reap(now: dt.datetime) -> None:
    """Mark processes that died without saying so as stopped, and their associations as
    aborted; forget processes stopped long ago."""
    host = socket.gethostname()
    dead: list[int] = []
    for row in ReceiverProcess.objects.filter(stopped_at__isnull=True):
        same_host_gone = row.host == host and not pid_alive(row.pid)
        if same_host_gone or row.heartbeat_at < heartbeat_deadline(now):
            ReceiverProcess.objects.filter(pk=row.pk).update(
                stopped_at=row.heartbeat_at, end=ReceiverProcess.LOST
            )
            dead.append(row.pk)
    if dead:
        AssociationLog.objects.filter(outcome=AssociationLog.ACCEPTED, receiver__in=dead).update(
            outcome=AssociationLog.ABORTED, reason="receiver process stopped", ended_at=now
        )
    ReceiverProcess.objects.filter(stopped_at__lt=now - _FORGET_AFTER).delete()
