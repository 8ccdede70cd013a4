"""The new instances whose index commit did not wait for PostgreSQL's WAL flush
(`database.synchronous: normal`, archive.services._index_rows), remembered by this process
until a crash of the database server can no longer undo them.

Two things tell, at each look (archive.services.unflushed_repair, from the heartbeat):
- Whether the commits are flushed. Each look notes the server's WAL insert position; once a
  later look finds the flush position past it, every instance remembered before that look is
  durable and forgotten. No timing assumption: a slow disk only keeps them longer.
- Whether the server crashed. This process keeps a row of its own in a table that is UNLOGGED
  on PostgreSQL (archive.models.CrashMarker), written before it serves; crash recovery empties
  such a table (a backend's crash too, and a standby promoted). A row gone makes the look
  check every instance remembered and index again, from its file, each one the index lost:
  what `verifystorage --repair` would do, for these instances only.
A crash that takes this process's memory too (a power cut of a machine running both) leaves
it to `verifystorage --repair`.
"""

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from archive.models import CrashMarker

logger = logging.getLogger(__name__)

# Past this many, the oldest are dropped unchecked (about 400 bytes each); at 1000 instances a
# second a process remembers a few thousand, the commits of a second or two.
LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Unflushed:
    at: float  # time.monotonic() after the commit
    sop_instance_uid: str
    path: str  # relative to the storage


_remembered: deque[Unflushed] = deque(maxlen=LIMIT)
# (time.monotonic() before a look, the WAL insert position it found), oldest first.
_looks: deque[tuple[float, Decimal]] = deque()
_lock = threading.Lock()


@dataclass(slots=True)
class _State:
    token: str | None = None  # this process's CrashMarker row
    overflowed: bool = False  # LIMIT reached: some were dropped unchecked


state = _State()


def remember(sop_instance_uid: str, path: str) -> None:
    """Note a new instance whose commit returned before the WAL flush (any thread)."""
    if len(_remembered) == LIMIT:
        state.overflowed = True
    _remembered.append(Unflushed(time.monotonic(), sop_instance_uid, path))


def remembered() -> list[Unflushed]:
    """A copy of what is remembered, oldest first."""
    return list(_remembered)


def watch_start() -> None:
    """Write this process's marker row, before it serves (on PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    # Rows of processes long gone; a live process's row is rewritten only after a crash.
    CrashMarker.objects.filter(written_at__lt=timezone.now() - timedelta(days=30)).delete()
    marker_write()


def marker_write() -> None:
    token = uuid.uuid4().hex
    CrashMarker.objects.create(token=token)
    state.token = token


def look_sql() -> tuple[str, list[str | None]]:
    """One query for a look: WAL insert and flush positions, and whether our row is there."""
    return (
        "SELECT pg_current_wal_insert_lsn() - '0/0', pg_current_wal_flush_lsn() - '0/0', "
        "EXISTS (SELECT 1 FROM archive_crashmarker WHERE token = %s)",
        [state.token],
    )


def flushed(before: float, inserted: Decimal, flushed_to: Decimal) -> None:
    """After a look begun at `before` that found no crash: forget the instances remembered
    before any earlier look whose insert position the flush has reached, and note this one."""
    with _lock:
        durable_before = None
        while _looks and _looks[0][1] <= flushed_to:
            durable_before = _looks.popleft()[0]
        if durable_before is not None:
            while _remembered and _remembered[0].at < durable_before:
                _remembered.popleft()
        _looks.append((before, inserted))


def crashed() -> None:
    """The server crashed: positions noted before mean nothing in its new WAL."""
    with _lock:
        _looks.clear()


def overflow_report() -> None:
    if state.overflowed:
        state.overflowed = False
        logger.warning(
            "More than %d new instances were committed without waiting for the index "
            "database's WAL flush before it was flushed; the oldest are no longer watched (after "
            "a crash of the database server, run verifystorage --repair)",
            LIMIT,
        )


def reset() -> None:
    """Forget everything (tests)."""
    _remembered.clear()
    with _lock:
        _looks.clear()
    state.token, state.overflowed = None, False
