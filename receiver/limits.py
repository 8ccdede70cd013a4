"""The association limit, counted at the moment each association is requested.

pynetdicom's own check counts every acceptor thread, established or not, at negotiation time:
when many peers connect at once they all see each other and are all rejected, and a silent TCP
connection that never requests an association takes a place. Here a place is taken when the
A-ASSOCIATE-RQ arrives and given back when the association ends. With several worker
processes, each keeps its count in its own cell of a shared array, and the limit applies to
the sum (a worker that dies has its cell reset by the parent).
"""

import threading
import weakref
from collections.abc import Callable
from typing import Any


class AssociationSlots:
    """At most `limit` associations at a time; safe to call from every association thread."""

    def __init__(
        self,
        limit: int,
        shared: Any = None,
        cell: int = 0,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        self.limit = limit
        # Told this process's count after each change, under the lock (so in order):
        # receiver.affinity.CorePinning.count_changed.
        self._on_count = on_count
        self._lock = threading.Lock()
        self._holders: dict[int, weakref.ref[Any]] = {}
        # A multiprocessing.Array of per-process counts, or None for a single process.
        self._shared = shared
        self._cell = cell

    def acquire(self, assoc: Any) -> bool:
        """Take a place for `assoc`; False when all are taken."""
        with self._lock:
            dropped = self._drop_finished()
            if self._shared is None:
                taken = len(self._holders) < self.limit
            else:
                with self._shared.get_lock():
                    taken = sum(self._shared) < self.limit
                    if taken:
                        self._shared[self._cell] += 1
            if taken:
                self._holders[id(assoc)] = weakref.ref(assoc)
            if taken or dropped:
                self._counted()  # once, with the final count
            return taken

    def release(self, assoc: Any) -> None:
        """Give back the place of `assoc` (no-op if it holds none)."""
        with self._lock:
            holder = self._holders.get(id(assoc))
            if holder is not None and holder() is assoc:
                self._forget(id(assoc))
                self._counted()

    def in_use(self) -> int:
        with self._lock:
            if self._drop_finished():
                self._counted()
            return len(self._holders)

    def _forget(self, key: int) -> None:
        del self._holders[key]
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared[self._cell] -= 1

    def _counted(self) -> None:
        if self._on_count is not None:
            self._on_count(len(self._holders))

    def _drop_finished(self) -> bool:
        """Whether places were freed: a thread that ended without an end event (its connection
        simply dropped) still frees its place here."""
        before = len(self._holders)
        for key, holder in list(self._holders.items()):
            assoc = holder()
            if assoc is None or not assoc.is_alive():
                self._forget(key)
        return len(self._holders) != before
