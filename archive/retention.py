"""storage.retention: keep the archive within a size and an age, as Orthanc's MaximumStorageSize
and MaximumStorageMode do.

`recycle` deletes the studies received least recently (by their last reception) until the
archive fits `max_bytes`; `refuse` leaves them and the receiver answers 0xA700 once the archive
holds `max_bytes` (the `Quota` below). In both modes studies whose last reception is older than
`max_age_days` go. Deletion is archive.deletion's (rows and files together); the newest study is
never recycled (it may still be arriving), nor any study a registered guard protects (pending
forwards, storage commitment transactions: apps above `archive` register their guard with
`retention_guard_register`). Passes are bounded (`batch` studies) and run on a background thread
of the receiver (`RetentionLoop`), so ingest never waits for them.
"""

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import close_old_connections
from django.db.models import Max, Sum
from django.utils import timezone

from archive.deletion import index_delete
from archive.forksafe import quiet_at_fork
from archive.models import Instance, RecycledStudy, Study
from archive.retention_policy import RetentionPolicy
from archive.storage import Storage

logger = logging.getLogger(__name__)

BATCH = 20
INTERVAL = 30.0
# How stale the refuse mode's measure of the archive may be (other processes and nodes store
# too): one SUM over the index this often per process.
QUOTA_REFRESH = 10.0


_guards: list[Callable[[], Iterable[int]]] = []


def retention_guard_register(guard: Callable[[], Iterable[int]]) -> None:
    """Register a function returning primary keys of studies that must not be recycled now."""
    _guards.append(guard)


def _protected() -> set[int]:
    protected: set[int] = set()
    for guard in _guards:
        protected.update(guard())
    return protected


@dataclass(frozen=True)
class RetentionResult:
    studies: int = 0
    instances: int = 0
    bytes: int = 0


def retention_pass(
    *,
    storage: Storage,
    policy: RetentionPolicy,
    now: dt.datetime | None = None,
    batch: int = BATCH,
) -> RetentionResult:
    """Recycle at most `batch` studies the policy no longer admits, oldest reception first.

    Each study goes in its own transaction through archive.deletion; one that fails is logged
    and left for the next pass.
    """
    now = now or timezone.now()
    studies = (
        Study.objects.annotate(
            last=Max("series__instances__received_at"), size=Sum("series__instances__size")
        )
        .exclude(pk__in=_protected())
        .order_by("last", "pk")
    )
    newest = studies.exclude(last=None).order_by("-last", "-pk").values_list("pk", flat=True)
    newest_pk = newest.first()
    excess = 0
    if policy.max_bytes is not None and policy.mode == "recycle":
        used = Instance.objects.aggregate(total=Sum("size"))["total"] or 0
        excess = used - policy.max_bytes
    cutoff = now - dt.timedelta(days=policy.max_age_days) if policy.max_age_days else None

    chosen: list[tuple[int, str, int, dt.datetime | None, str]] = []
    for pk, uid, last, size in studies.values_list(
        "pk", "study_instance_uid", "last", "size"
    ).iterator():
        if len(chosen) >= batch or pk == newest_pk:
            break
        if cutoff is not None and last is not None and last < cutoff:
            reason = "max_age_days"
        elif excess > 0:
            reason = "max_bytes"
        else:
            break  # ordered by reception: everything after is newer still
        chosen.append((pk, uid, size or 0, last, reason))
        excess -= size or 0

    result = RetentionResult()
    for pk, uid, size, last, reason in chosen:
        try:
            counts = index_delete(Study.objects.filter(pk=pk), storage)
        except Exception:
            logger.exception("Retention could not recycle study %s", uid)
            continue
        RecycledStudy.objects.create(
            study_instance_uid=uid,
            instances=counts.instances,
            bytes=size,
            last_received_at=last,
            recycled_at=timezone.now(),
            reason=reason,
        )
        logger.info(
            "Retention recycled study %s (%d instances, %d bytes, %s)",
            uid,
            counts.instances,
            size,
            reason,
        )
        result = RetentionResult(
            result.studies + 1, result.instances + counts.instances, result.bytes + size
        )
    return result


class Quota:
    """The refuse mode's answer to "is the archive full?", cheap enough for every C-STORE: the
    index's total, measured at most every QUOTA_REFRESH seconds, plus what this process stored
    since."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._measured_at = -float("inf")
        self._lock = threading.Lock()

    def full(self) -> bool:
        if time.monotonic() - self._measured_at > QUOTA_REFRESH:
            self.refresh()
        return self._used >= self.max_bytes

    def refresh(self) -> None:
        used = Instance.objects.aggregate(total=Sum("size"))["total"] or 0
        with self._lock:
            self._used = used
            self._measured_at = time.monotonic()

    def add(self, size: int) -> None:
        with self._lock:
            self._used += size


def quota_for(policy: RetentionPolicy | None) -> Quota | None:
    """The quota a policy enforces at ingest (refuse mode with max_bytes), or None."""
    if policy is None or policy.mode != "refuse" or policy.max_bytes is None:
        return None
    return Quota(policy.max_bytes)


class RetentionLoop:
    """Runs `retention_pass` every `interval` seconds on a daemon thread until stopped."""

    def __init__(
        self, *, storage: Storage, policy: RetentionPolicy, interval: float = INTERVAL
    ) -> None:
        self.storage = storage
        self.policy = policy
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        # This process forks its workers: never in the middle of a pass (archive.forksafe).
        self._round = quiet_at_fork()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._round:
                self._pass()

    def _pass(self) -> None:
        close_old_connections()
        try:
            # A full batch means more may be due: go on without waiting.
            while (
                retention_pass(storage=self.storage, policy=self.policy).studies >= BATCH
                and not self._stop.is_set()
            ):
                pass
        except Exception:
            logger.exception("Retention pass failed; retrying in %.0f s", self.interval)
        finally:
            close_old_connections()
