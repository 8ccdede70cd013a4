"""The new instances whose index commit did not wait for PostgreSQL's WAL flush
(`database.synchronous: normal`, archive.services._index_rows), remembered by this process
until a crash of the database server can no longer undo them.

PostgreSQL flushes such a commit within three times its `wal_writer_delay`. An instance
remembered for longer than that (plus a margin), with no sign of a crash since, is durable and
forgotten. A sign of a crash (the server's start time changed, the connection lost, or the
first look at the server) makes archive.services.unflushed_repair look up every instance
still remembered and index again,
from its file, each one the index lost: what `verifystorage --repair` would do, for these
instances only, without waiting for an administrator. A crash of this process with the
server's machine (a power cut) loses the memory too; `verifystorage --repair` is then the way.
"""

import threading
import time
from collections import deque
from dataclasses import dataclass

# Past this many, the oldest are dropped (about 300 bytes each): at 1000 instances a second and
# the defaults, a process remembers a few thousand.
LIMIT = 100_000
# Added to three times wal_writer_delay: clocks and the time a commit takes to return.
MARGIN = 2.0


@dataclass(frozen=True, slots=True)
class Unflushed:
    at: float  # time.monotonic() after the commit
    sop_instance_uid: str
    path: str  # relative to the storage


_remembered: deque[Unflushed] = deque(maxlen=LIMIT)
_state_lock = threading.Lock()


@dataclass(slots=True)
class _ServerState:
    started: object = None  # pg_postmaster_start_time() when last seen
    suspect: bool = False  # the connection was lost since: the server may have crashed


server = _ServerState()


def remember(sop_instance_uid: str, path: str) -> None:
    """Note a new instance whose commit returned before the WAL flush (any thread)."""
    _remembered.append(Unflushed(time.monotonic(), sop_instance_uid, path))


def remembered() -> list[Unflushed]:
    """A copy of what is remembered, oldest first."""
    return list(_remembered)


def forget_older_than(moment: float) -> None:
    """Forget the instances committed before `moment` (time.monotonic())."""
    while _remembered and _remembered[0].at < moment:
        _remembered.popleft()


def forget_first(count: int) -> None:
    """Forget the `count` oldest (those just checked; newer ones may have come meanwhile)."""
    for _ in range(min(count, len(_remembered))):
        _remembered.popleft()


def server_seen(started: object) -> bool:
    """Record the server's start time; True when it may have crashed since it was last seen
    (another start time, or a lost connection noted by `connection_lost`), or when it is seen
    for the first time: a crash may have come before."""
    with _state_lock:
        crashed = server.suspect or started != server.started
        server.started, server.suspect = started, False
        return crashed


def connection_lost() -> None:
    with _state_lock:
        server.suspect = True


def reset() -> None:
    """Forget everything (tests; a process that changes database)."""
    _remembered.clear()
    with _state_lock:
        server.started, server.suspect = None, False
