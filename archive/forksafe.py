"""Background threads in a process that forks (`runscp --workers N` forks its workers, and
again when one dies): a fork copies every lock as it is, so a child forked while such a thread
was halfway through an import, a query or a write starts with that lock held forever and hangs
at its first use of it (seen as workers that never answered an A-ASSOCIATE-RQ).

A thread that works in rounds holds `quiet_at_fork()`'s lock for each round and releases it
while it waits; a fork waits for the round to end, so children start from a quiet parent.
"""

import os
import threading


def quiet_at_fork() -> threading.Lock:
    """A lock that every fork of this process takes first and gives back on both sides."""
    lock = threading.Lock()
    os.register_at_fork(
        before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release
    )
    return lock
