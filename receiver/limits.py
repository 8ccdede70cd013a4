"""The association limit, counted at the moment each association is requested.

pynetdicom's own check counts every acceptor thread, established or not, at negotiation time:
when many peers connect at once they all see each other and are all rejected, and a silent TCP
connection that never requests an association takes a place. Here a place is taken when the
A-ASSOCIATE-RQ arrives and given back when the association ends.
"""

import threading
import weakref
from typing import Any


class AssociationSlots:
    """At most `limit` associations at a time; safe to call from every association thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: dict[int, weakref.ref[Any]] = {}

    def acquire(self, assoc: Any) -> bool:
        """Take a place for `assoc`; False when all are taken."""
        with self._lock:
            self._drop_finished()
            if len(self._holders) >= self.limit:
                return False
            self._holders[id(assoc)] = weakref.ref(assoc)
            return True

    def release(self, assoc: Any) -> None:
        """Give back the place of `assoc` (no-op if it holds none)."""
        with self._lock:
            holder = self._holders.get(id(assoc))
            if holder is not None and holder() is assoc:
                del self._holders[id(assoc)]

    def in_use(self) -> int:
        with self._lock:
            self._drop_finished()
            return len(self._holders)

    def _drop_finished(self) -> None:
        # A thread that ended without an end event (its connection simply dropped) still frees
        # its place here.
        for key, holder in list(self._holders.items()):
            assoc = holder()
            if assoc is None or not assoc.is_alive():
                del self._holders[key]
