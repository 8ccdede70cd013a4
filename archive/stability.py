"""When a series or study has fully arrived: a quiet period, kept in the database.

DICOM has no "study complete" message; like mercure, Orthanc and dcm4chee we call a series or
study stable once no new instance of it has arrived for its stable age. Everything lives in
the Study and Series rows (`last_received_at`, `stable`, `stable_announced_at`), never in
process memory, so it is exact with several worker processes, across a restart and with
several receiver nodes on one PostgreSQL database.

Ingest (`series_touch`) sets `last_received_at` and clears `stable` on the series and its study
in the instance's own transaction, so the time is committed exactly when the instance is; it
is taken in that transaction, not when the instance began to arrive (a large one takes
seconds to receive and stage).
To keep that off the C-STORE hot path, a process writes it for a series at most once every
TOUCH_INTERVAL seconds; the recorded time may therefore trail the last committed instance by
up to TOUCH_INTERVAL (plus a transaction's duration), and the sweeper waits SLACK seconds more
than the stable age, so a series is never announced before it has really been quiet that long.
A stable series or study that gets a new instance is re-armed by the same write: the clock
has to run out again, and the next announcement says `updated=True`.

The sweeper (`stable_announce`, run in a thread of every receiver process and by `manage.py
announce_stable`) claims what has been quiet long enough and announces it. The claim flips
`stable` in one transaction that only one process can win: `select_for_update(skip_locked=True)`
on PostgreSQL (another sweeper skips the locked rows, and after the commit they no longer
match), the IMMEDIATE transaction under the index's writer lock on SQLite. Signals follow the
commit, in the sweeper's thread, so a slow receiver delays later announcements, never ingest.
A process that dies between the claim's commit and the signal loses that announcement; a
receiver of `study_stable_in_transaction` that writes what it needs in the claim's transaction
(a forwarding queue) loses nothing.
"""

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.dispatch import Signal
from django.utils import timezone

from archive.dblock import index_writer
from archive.models import Series, Study
from archive.signals import (
    receiver_name,
    series_stable,
    series_stable_in_transaction,
    study_stable,
    study_stable_in_transaction,
)

logger = logging.getLogger(__name__)

DEFAULT_STABLE_AGE = 60.0
# At most one write of a series' reception time per process and this many seconds.
TOUCH_INTERVAL = 1.0
# How far the recorded time may trail the last committed instance: the interval, plus room for
# the transaction that commits it.
SLACK = TOUCH_INTERVAL + 0.5
CLAIM_BATCH = 100

# Series id → time.monotonic() of this process's last committed write of its reception time.
_touched: dict[int, float] = {}
_TOUCHED_LIMIT = 100_000


@dataclass(frozen=True)
class StableAges:
    """Seconds without a new instance after which a series, a study, is stable."""

    series: float = DEFAULT_STABLE_AGE
    study: float = DEFAULT_STABLE_AGE

    def __post_init__(self) -> None:
        for level in ("series", "study"):
            if not getattr(self, level) > 0:
                raise ValueError(f"the {level} stable age must be a positive number of seconds")

    @property
    def poll_interval(self) -> float:
        """How often a sweeper looks: a quarter of the shorter age, within 0.2 to 5 seconds."""
        return min(5.0, max(0.2, min(self.series, self.study) / 4))


def series_touch_due(series_id: int) -> bool:
    """Whether this process should write the series' reception time with this instance."""
    touched = _touched.get(series_id)
    return touched is None or time.monotonic() - touched >= TOUCH_INTERVAL


def series_touch(
    *, series_id: int, received_at: dt.datetime, using: str = DEFAULT_DB_ALIAS
) -> float:
    """In an ingest transaction: record a new instance of the series (and its study) at
    `received_at`, re-arming a stable one. Returns the moment to pass to `series_touched` once
    the transaction has committed."""
    moment = time.monotonic()
    connection = connections[using]
    value = connection.ops.adapt_datetimefield_value(received_at)
    series_sql, study_sql = _touch_sql(connection)
    # Two plain statements: through the ORM (Greatest, Coalesce, a join) they cost a tenth
    # of a small instance's ingest CPU in bench/run.py, where series are short.
    with connection.cursor() as cursor:
        cursor.execute(series_sql, [value, value, False, series_id])
        cursor.execute(study_sql, [value, value, False, series_id])
    return moment


_TOUCH_SQL: dict[str, tuple[str, str]] = {}


def _touch_sql(connection: Any) -> tuple[str, str]:
    """UPDATEs that move a row's last_received_at forward (never back) and clear `stable`."""
    cached = _TOUCH_SQL.get(connection.alias)
    if cached is None:
        quote = connection.ops.quote_name
        later = (
            f"{quote('last_received_at')} = CASE WHEN {quote('last_received_at')} IS NULL "
            f"OR {quote('last_received_at')} < %s THEN %s ELSE {quote('last_received_at')} END, "
            f"{quote('stable')} = %s"
        )
        series, study = Series._meta, Study._meta
        cached = (
            f"UPDATE {quote(series.db_table)} SET {later} WHERE {quote(series.pk.column)} = %s",
            f"UPDATE {quote(study.db_table)} SET {later} WHERE {quote(study.pk.column)} = "
            f"(SELECT {quote(series.get_field('study').column)} FROM {quote(series.db_table)} "
            f"WHERE {quote(series.pk.column)} = %s)",
        )
        _TOUCH_SQL[connection.alias] = cached
    return cached


def series_touched(series_id: int, moment: float) -> None:
    """After the commit of `series_touch`: spare the next instances of the series the write."""
    if len(_touched) >= _TOUCHED_LIMIT:
        _touched.clear()
    _touched[series_id] = moment


def stable_touch_cache_clear() -> None:
    """Forget which series this process wrote recently (their rows were deleted or replaced)."""
    _touched.clear()


@dataclass(frozen=True)
class _Level:
    model: type[Series] | type[Study]
    name: str
    related: tuple[str, ...]
    in_transaction: Signal
    after_commit: Signal


_SERIES = _Level(Series, "series", ("study__patient",), series_stable_in_transaction, series_stable)
_STUDY = _Level(Study, "study", ("patient",), study_stable_in_transaction, study_stable)


class Announced(NamedTuple):
    series: int
    studies: int


def stable_announce(*, ages: StableAges, using: str = DEFAULT_DB_ALIAS) -> Announced:
    """Claim every series, then every study, quiet for its stable age and not yet announced;
    send their signals. Returns how many of each were announced.

    Raises DatabaseError (index unavailable), IndexFailure (SQLite writer lock not free) or
    what an in-transaction receiver raised; the claim in progress is then rolled back, and
    what it held is claimed again by the next call.
    """
    counts = []
    for level, age in ((_SERIES, ages.series), (_STUDY, ages.study)):
        count = 0
        while True:
            claimed = _claim(level, age, using)
            _announce(level, claimed)
            count += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                break
        counts.append(count)
    return Announced(*counts)


def _claim(level: _Level, age: float, using: str) -> list[tuple[Any, bool]]:
    now = timezone.now()
    due = level.model.objects.using(using).filter(
        stable=False, last_received_at__lte=now - dt.timedelta(seconds=age + SLACK)
    )
    # A read first: an idle archive never takes the (SQLite) write lock.
    if not due.exists():
        return []
    connection = connections[using]
    with index_writer(using=using), transaction.atomic(using=using):
        rows = due.select_related(*level.related).order_by("last_received_at")
        if connection.features.has_select_for_update_skip_locked:
            # NO KEY UPDATE where there is one: ingest inserting a child row (which takes a key
            # share lock on its parent) neither waits for a claim nor makes it skip the row.
            rows = rows.select_for_update(
                skip_locked=True,
                of=("self",),
                no_key=connection.features.has_select_for_no_key_update,
            )
        claimed = [(row, row.stable_announced_at is not None) for row in rows[:CLAIM_BATCH]]
        if not claimed:
            return []
        level.model.objects.using(using).filter(pk__in=[row.pk for row, _ in claimed]).update(
            stable=True, stable_announced_at=now
        )
        for row, updated in claimed:
            row.stable = True
            row.stable_announced_at = now
            level.in_transaction.send(sender=level.model, **{level.name: row, "updated": updated})
    return claimed


def _announce(level: _Level, claimed: list[tuple[Any, bool]]) -> None:
    for row, updated in claimed:
        study = row if level.model is Study else row.study
        logger.info(
            "%s %s stable%s",
            level.name.capitalize(),
            row.study_instance_uid if level.model is Study else row.series_instance_uid,
            " (updated)" if updated else "",
        )
        for receiver, result in level.after_commit.send_robust(
            sender=level.model, **{level.name: row, "updated": updated}
        ):
            if isinstance(result, Exception):
                logger.error(
                    "%s_stable receiver %s failed for study %s: %r",
                    level.name,
                    receiver_name(receiver),
                    study.study_instance_uid,
                    result,
                    exc_info=result,
                )


class StabilitySweeper:
    """A daemon thread that runs `stable_announce` every `ages.poll_interval` seconds."""

    def __init__(self, ages: StableAges, using: str = DEFAULT_DB_ALIAS) -> None:
        self.ages = ages
        self.using = using
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stability-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.ages.poll_interval):
                stable_sweep_once(ages=self.ages, using=self.using)
        finally:
            connections.close_all()


def stable_sweep_once(*, ages: StableAges, using: str = DEFAULT_DB_ALIAS) -> int:
    """One `stable_announce` that logs failures instead of raising (for loops); returns how
    many series and studies it announced."""
    try:
        return sum(stable_announce(ages=ages, using=using))
    except DatabaseError as exc:
        logger.warning("Stability sweep failed, retried at the next one: %s", exc)
        connections[using].close()  # a broken connection is replaced at the next sweep
    except Exception:
        logger.exception("Stability sweep failed, retried at the next one")
    return 0
