"""A busy worker keeps its threads on one core of its own.

With one process per core (`workers: auto`), each worker serving two or more associations hands
Python's interpreter lock between their threads at every blocking call (a socket read, an fsync,
SQLite's step). When those threads sit on different cores each hand-over wakes the other core
and moves the process's memory between their caches; on one core the hand-over stays local and
the other core is left to the other worker and to the rest of the machine. While a worker serves
one association or none, its threads may run anywhere: a single association is bound by the
latency of each C-STORE, and a thread woken on whichever core is idle answers sooner (pinned at
one association, the rate fell by 14 %; at four associations on two workers it rose by about
10 %: docs/performance.md).

Only where each worker can have a core of its own (no more workers than the cores this process
may run on), and never in a single process, which serves every association itself.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# Associations a worker serves at once from which its threads share one core.
PINNED_FROM = 2


def pinned_cpus(*, cell: int, workers: int, allowed: Iterable[int]) -> frozenset[int] | None:
    """The core of worker `cell` (0-based) among `workers`, or None when the `allowed` cores
    are too few for one each (or there is only one)."""
    cores = sorted(allowed)
    if len(cores) < 2 or not 0 <= cell < workers <= len(cores):
        return None
    return frozenset((cores[cell],))


def _threads() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/task")]


def _set(thread: int, cpus: frozenset[int]) -> None:
    os.sched_setaffinity(thread, cpus)


class CorePinning:
    """Follows a worker's count of associations: from PINNED_FROM on, every thread of the
    process runs on the worker's own core; below, on every core it was allowed at start.

    Threads started later inherit the mask of the thread that starts them; each change applies
    to every thread alive at that moment. Calls must be serialised (AssociationSlots holds its
    lock around them)."""

    def __init__(
        self,
        *,
        cell: int,
        workers: int,
        threads: Callable[[], list[int]] = _threads,
        setaffinity: Callable[[int, frozenset[int]], None] = _set,
        allowed: Iterable[int] | None = None,
    ) -> None:
        self.free = frozenset(os.sched_getaffinity(0) if allowed is None else allowed)
        self.own = pinned_cpus(cell=cell, workers=workers, allowed=self.free)
        self._threads = threads
        self._setaffinity = setaffinity
        self._current = self.free
        self._failed = False

    def count_changed(self, associations: int) -> None:
        """Apply the mask that `associations` served at once call for, if it changed."""
        if self.own is None or self._failed:
            return
        wanted = self.own if associations >= PINNED_FROM else self.free
        if wanted == self._current:
            return
        for thread in self._threads():
            try:
                self._setaffinity(thread, wanted)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except OSError as exc:
                # A container may forbid it (EPERM) or have taken the core away (EINVAL):
                # performance only, so say so once and leave threads where the kernel puts them.
                logger.warning("Worker threads stay unpinned: %s", exc)
                self._failed = True
                for other in self._threads():
                    with contextlib.suppress(OSError):
                        self._setaffinity(other, self.free)
                return
        self._current = wanted
