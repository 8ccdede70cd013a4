"""The new instances whose index commit did not wait for PostgreSQL's WAL flush
(`database.synchronous: normal`, archive.services._index_rows), remembered by this process
until a crash of the database server can no longer undo them.

At each look (archive.services.unflushed_repair, from the heartbeat):
- Whether the server crashed. This process keeps a row of its own in a table that is UNLOGGED
  on PostgreSQL (archive.models.CrashMarker), written before it serves; crash recovery empties
  such a table (after a backend's crash too), and a promoted standby has it empty. A row gone
  makes the look check every instance remembered and index again, from its file, each one the
  index lost: what `verifystorage --repair` would do, for these instances only. The new row is
  written first, so that a crash during the repair is seen at the next look.
- Otherwise, whether they are durable. The look makes one commit that waits, as the server's
  `synchronous_commit` says (its flush, a synchronous standby's): once it returns, every
  instance remembered before the look began is durable and forgotten.
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

from django.db import connection
from django.utils import timezone

from archive.models import CrashMarker

logger = logging.getLogger(__name__)

# Past this many, the oldest are dropped unchecked (about 400 bytes each); at 1000 instances a
# second a process remembers a few thousand: those of one heartbeat interval.
LIMIT = 100_000
# A marker row this old belongs to a process gone long ago (a live one refreshes its row at
# every look).
_MARKER_KEPT = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Unflushed:
    at: float  # time.monotonic() after the commit
    sop_instance_uid: str
    path: str  # relative to the storage


# Appended with its time under the lock: a look that begins at `t` then sees every entry
# older than `t` in the copy it takes.
_remembered: deque[Unflushed] = deque()
_lock = threading.Lock()


@dataclass(slots=True)
class _State:
    token: str | None = None  # this process's CrashMarker row
    overflowed: bool = False  # LIMIT reached: some were dropped unchecked


state = _State()


def remember(sop_instance_uid: str, path: str) -> None:
    """Note a new instance whose commit returned before the WAL flush (any thread)."""
    with _lock:
        if len(_remembered) >= LIMIT:
            _remembered.popleft()
            state.overflowed = True
        _remembered.append(Unflushed(time.monotonic(), sop_instance_uid, path))


def now() -> float:
    """The moment a look begins, on the clock of `Unflushed.at`."""
    with _lock:
        return time.monotonic()


def remembered() -> list[Unflushed]:
    """A copy of what is remembered, oldest first."""
    with _lock:
        return list(_remembered)


def remembered_before(moment: float) -> bool:
    with _lock:
        return bool(_remembered) and _remembered[0].at < moment


def forget_before(moment: float) -> None:
    """Forget the instances remembered before `moment`: their commits are durable."""
    with _lock:
        while _remembered and _remembered[0].at < moment:
            _remembered.popleft()


def watch_start() -> None:
    """Write this process's marker row, before it serves (on PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    CrashMarker.objects.filter(written_at__lt=timezone.now() - _MARKER_KEPT).delete()
    marker_write()


def marker_sql() -> tuple[str, list[str | None]]:
    """This process's row, refreshed: one row when it is there, none when it is gone (or was
    never written)."""
    return (
        "UPDATE archive_crashmarker SET written_at = now() WHERE token = %s RETURNING 1",
        [state.token],
    )


def marker_write() -> None:
    token = uuid.uuid4().hex
    CrashMarker.objects.create(token=token)
    state.token = token


def marker_forget() -> None:
    """The next look repairs again, as after a crash."""
    state.token = None


def overflow_report() -> None:
    if state.overflowed:
        state.overflowed = False
        logger.warning(
            "More than %d new instances were committed without waiting for the index "
            "database's WAL flush between two looks; the oldest are no longer watched (after a "
            "crash of the database server, run verifystorage --repair)",
            LIMIT,
        )


def reset() -> None:
    """Forget everything (tests)."""
    with _lock:
        _remembered.clear()
    state.token, state.overflowed = None, False
