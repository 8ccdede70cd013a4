"""One writer at a time on a SQLite index, queued on a lock instead of SQLite's busy handler.

SQLite admits one write transaction at a time. Left to itself, a second writer retries in
sleeps of up to 100 ms (its busy handler), which made the slowest C-STOREs of several
concurrent associations wait hundreds of milliseconds. Threads of one process queue on a
threading lock and processes sharing the file on an flock(2), both woken at once when the
holder is done. Other databases need no such lock: their writers take row locks.
"""

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

_thread_lock = threading.Lock()
_lock_files: dict[str, int] = {}


def _lock_file(database: str) -> int:
    fd = _lock_files.get(database)
    if fd is None:
        fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        _lock_files[database] = fd
    return fd


@contextmanager
def index_writer() -> Iterator[None]:
    """Hold the index's write lock for the duration of a write transaction."""
    if connection.vendor != "sqlite":
        yield
        return
    with _thread_lock:
        fd = _lock_file(connection.settings_dict["NAME"])
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
