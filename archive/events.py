"""The `instance_stored` dispatcher: signals sent after commit, off the C-STORE's thread.

Ingest only puts (instance id, created, outcome) on a bounded queue, and only when some app
listens; one daemon thread per process loads each instance and sends the signal. A slow
receiver therefore delays other receivers' notifications, never a C-STORE response.

When the queue is full (MAX_PENDING events behind: a receiver far slower than ingest), the new
event is dropped, counted, and a warning with the count is logged at most once a minute:
`instance_stored` is a notification, not a delivery guarantee. What must not be lost is kept
in the database instead: the stability flags behind `series_stable`/`study_stable`, or rows
that an `instance_stored_in_transaction` receiver writes in the ingest transaction. Events
still queued when the process stops are sent within `dispatcher_flush`'s timeout (runscp's
shutdown calls it); an abrupt kill loses them.
"""

import logging
import queue
import threading
import time

from django.db import connections

from archive.models import Instance
from archive.signals import instance_stored, receiver_name

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000
_DROP_WARNING_EVERY = 60.0

_queue: queue.Queue[tuple[int, bool, str]] = queue.Queue(MAX_PENDING)
_thread: threading.Thread | None = None
_start_lock = threading.Lock()
_dropped = 0
_dropped_warned_at = -_DROP_WARNING_EVERY


def instance_stored_enqueue(*, instance_id: int, created: bool, outcome: str) -> None:
    """Queue an `instance_stored` signal for an instance whose index row is committed.

    Never blocks and never raises: a full queue drops the event (see the module docstring).
    """
    global _dropped, _dropped_warned_at
    if not instance_stored.receivers:
        return
    if _thread is None or not _thread.is_alive():
        _start()
    try:
        _queue.put_nowait((instance_id, created, outcome))
    except queue.Full:
        _dropped += 1
        now = time.monotonic()
        if now - _dropped_warned_at >= _DROP_WARNING_EVERY:
            _dropped_warned_at = now
            logger.warning(
                "instance_stored: %d pending events, receivers are too slow; "
                "%d event(s) dropped so far",
                MAX_PENDING,
                _dropped,
            )


def dispatcher_flush(timeout: float = 5.0) -> bool:
    """Wait up to `timeout` seconds for queued events to be sent; True when all were."""
    deadline = time.monotonic() + timeout
    while _queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _queue.unfinished_tasks


def _start() -> None:
    global _thread
    with _start_lock:
        # A forked child inherits the parent's thread object, not the thread: start its own.
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="instance-stored", daemon=True)
            _thread.start()


def _run() -> None:
    while True:
        instance_id, created, outcome = _queue.get()
        try:
            _send(instance_id, created, outcome)
        except Exception:
            logger.exception("instance_stored: instance %d not announced", instance_id)
        finally:
            _queue.task_done()
            if _queue.empty():
                # Idle: hold no database connection (a test database, a PostgreSQL slot).
                connections.close_all()


def _send(instance_id: int, created: bool, outcome: str) -> None:
    if not instance_stored.receivers:
        return  # disconnected since
    instance = (
        Instance.objects.select_related("series__study__patient").filter(pk=instance_id).first()
    )
    if instance is None:
        return  # deleted since
    for receiver, result in instance_stored.send_robust(
        sender=Instance, instance=instance, created=created, outcome=outcome
    ):
        if isinstance(result, Exception):
            logger.error(
                "instance_stored receiver %s failed for instance %s of study %s: %r",
                receiver_name(receiver),
                instance.sop_instance_uid,
                instance.series.study.study_instance_uid,
                result,
                exc_info=result,
            )
