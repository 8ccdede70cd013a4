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

Only where the workers are exactly one per core this process may run on (what `workers: auto`
gives on up to four cores), and never in a single process, which serves every association
itself.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# Associations a worker serves at once from which its threads share one core.
PINNED_FROM = 2


def pinned_cpus(*, cell: int, workers: int, allowed: Iterable[int]) -> frozenset[int] | None:
    """The core of worker `cell` (0-based), or None unless the `workers` are exactly one per
    core of `allowed` (and there are two or more): with fewer workers than cores (a large
    host, or several receivers on one), pinning to the lowest-numbered cores was never
    measured and could crowd them."""
    cores = sorted(allowed)
    if len(cores) < 2 or workers != len(cores) or not 0 <= cell < workers:
        return None
    return frozenset((cores[cell],))


def _threads() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/task")]


def _set(thread: int, cpus: frozenset[int]) -> None:
    os.sched_setaffinity(thread, cpus)


class CorePinning:
    """Follows a worker's count of associations: from PINNED_FROM on, every thread of the
    process runs on the worker's own core; below, on every core it was allowed at start.

    A thread inherits the mask of the thread that starts it, which may not have been given the
    new one yet: each call also applies the current mask to threads it has not seen. Calls must
    be serialised (AssociationSlots holds its lock around them)."""

    def __init__(
        self,
        *,
        cell: int,
        workers: int,
        threads: Callable[[], list[int]] = _threads,
        setaffinity: Callable[[int, frozenset[int]], None] = _set,
        allowed: Iterable[int] | None = None,
    ) -> None:
        if allowed is None:  # not on Linux: no affinity to set
            allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
        self.free = frozenset(allowed)
        self.own = pinned_cpus(cell=cell, workers=workers, allowed=self.free)
        self._threads = threads
        self._setaffinity = setaffinity
        self._current = self.free
        self._applied: set[int] = set()  # threads known to have the current mask
        self._failed = False

    def count_changed(self, associations: int) -> None:
        """Apply the mask that `associations` served at once call for."""
        if self.own is None or self._failed:
            return
        wanted = self.own if associations >= PINNED_FROM else self.free
        if wanted != self._current:
            self._current, self._applied = wanted, set()
        elif wanted == self.free and not self._applied:
            return  # never pinned: every thread is free already
        try:
            self._apply()
        except Exception as exc:  # performance only: never fail an association for it
            # A container may forbid it (EPERM), have taken the core away (EINVAL), or have no
            # /proc: say so once and leave threads to the kernel.
            logger.warning("Worker threads stay unpinned: %s", exc)
            self._failed = True
            with contextlib.suppress(OSError):
                for thread in self._threads():
                    with contextlib.suppress(OSError):
                        self._setaffinity(thread, self.free)

    def _apply(self) -> None:
        # Listed again until no new thread appears: one started meanwhile by a thread that
        # had the old mask inherited it.
        while True:
            alive = set(self._threads())
            self._applied &= alive
            new = alive - self._applied
            if not new:
                return
            for thread in new:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    self._setaffinity(thread, self._current)
            self._applied |= new
