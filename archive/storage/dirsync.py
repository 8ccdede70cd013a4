"""Directory fsyncs shared by the threads that need one of the same directory at once.

A new file's name is durable only once its directory is fsync'd, and every C-STORE waits for
that before it is answered. Associations sending one series write into one directory, so
several of them often wait on the same directory at the same moment: one fsync that starts
after all their renames makes every one of those names durable. The first thread to arrive
syncs; threads arriving while it runs wait for the next fsync, which one of them runs on behalf
of all that arrived meanwhile (group commit, as databases do for their log). No thread is
answered by an fsync that began before its own rename.
"""

import os
import threading
from dataclasses import dataclass


@dataclass
class _Directory:
    requested: int = 0  # renames announced so far
    synced: int = 0  # renames made durable by a finished fsync
    running: bool = False
    waiting: int = 0
    # Renames up to `failed_up_to` were covered by an fsync that failed, and its error: Linux
    # reports a writeback error once, so a retry could succeed with their names lost.
    failed_up_to: int = 0
    error: OSError | None = None


_lock = threading.Condition()
_directories: dict[str, _Directory] = {}


def directory_fsync(path: str | os.PathLike[str]) -> None:
    """fsync a directory, once for all threads that ask for the same one meanwhile. Call it
    after the rename whose name must become durable. Raises OSError as os.fsync does."""
    key = os.fspath(path)
    with _lock:
        state = _directories.setdefault(key, _Directory())
        state.requested += 1
        mine = state.requested
        state.waiting += 1
        try:
            while state.synced < mine:
                if state.error is not None and mine <= state.failed_up_to:
                    raise state.error
                if state.running:
                    _lock.wait()
                    continue
                # Lead: this fsync covers every rename announced up to now.
                state.running = True
                covered = state.requested
                _lock.release()
                try:
                    _fsync(key)
                except BaseException as exc:
                    _lock.acquire()
                    state.running = False
                    if isinstance(exc, OSError):
                        state.failed_up_to, state.error = covered, exc
                    _lock.notify_all()
                    raise
                _lock.acquire()
                state.running = False
                state.synced = max(state.synced, covered)
                _lock.notify_all()
        finally:
            state.waiting -= 1
            if state.waiting == 0 and not state.running:
                del _directories[key]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
