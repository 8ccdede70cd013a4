"""Forwarding: rules that select received instances, a queue in the database, delivery by
C-STORE with retries.

Enqueue. A rule's match writes one ForwardItem per (instance, destination) in the transaction
that indexes the instance (an archive.ingest_hooks hook: one prepared INSERT in the bare
transaction) or claims its study as stable (`study_stable_in_transaction`): what was
acknowledged is in the queue, even after SIGKILL. The rules are cached per process with their
matches, and reloaded every RULES_REFRESH seconds (and at once when one is saved here); with no
rule, no hook is registered and ingest pays nothing.

Delivery. A worker claims the oldest due row and up to BATCH more of the same destination and
study, atomically (`select_for_update(skip_locked=True)` on PostgreSQL, the index's writer lock
and one transaction on SQLite), marking them `sending` with a lease. It sends them on one
association, in their stored transfer syntax when the destination accepts it, else
decompressed (archive.retrieval), and records each outcome. A worker killed mid-batch leaves
its rows to be claimed again when the lease runs out; they may then reach the destination a
second time (at-least-once): `repeats` counts them.

Failures. A destination that cannot be reached (no connection, association refused or broken
off) backs off as a whole, doubling up to MAX_BACKOFF, and is retried without end: an outage
never loses an instance. A destination that answers a C-STORE with a failure status costs the
item an attempt; after MAX_ATTEMPTS it becomes a dead letter keeping the status and comment,
until an administrator requeues it.
"""

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    close_old_connections,
    connection,
    connections,
    transaction,
)
from django.db.models import Count, F, Min, Q
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from archive.dblock import index_writer
from archive.ingest_hooks import StoredInstance, hook_add, hook_remove
from archive.models import Instance, Series, Study
from archive.retrieval import RetrieveFailed, RetrieveItem, instance_dataset, instance_source
from archive.signals import study_stable_in_transaction
from archive.storage import Storage
from archive.storage.base import pid_alive
from audit.models import EXPORT, FAILURE
from audit.models import SUCCESS as AUDIT_SUCCESS
from audit.services import audit_record
from receiver.config import ForwardingEntry
from routing.deidentify import dataset_deidentify
from routing.direct import DirectStoreAssociation
from routing.models import (
    INSTANCE,
    STUDY_STABLE,
    ForwardCount,
    ForwardingRule,
    ForwardItem,
    RemoteAE,
)
from routing.scu import AssociationFailed, Peer, store_contexts

logger = logging.getLogger(__name__)

RULES_REFRESH = 5.0  # seconds
BATCH = 100
LEASE = 300.0  # seconds a claimed batch is ours
FIRST_BACKOFF = 5.0  # seconds, doubled per consecutive failure
MAX_BACKOFF = 600.0
MAX_ATTEMPTS = 10  # failure statuses from the destination before a dead letter
KEEP_SENT = dt.timedelta(days=7)
SUCCESS = 0x0000

# Outcomes of dicom_forwarded_total.
SENT, WARNING, FAILED, DEAD, REPEAT = "sent", "warning", "failed", "dead", "repeat"


def _split(text: str) -> frozenset[str]:
    return frozenset(part for part in text.replace(",", " ").split() if part)


@dataclass(frozen=True)
class Rule:
    destination_id: int
    when: str
    modalities: frozenset[str]
    calling_aes: frozenset[str]
    sop_classes: frozenset[str]

    @classmethod
    def of(cls, row: ForwardingRule) -> "Rule":
        return cls(
            row.destination_id,
            row.when,
            frozenset(m.upper() for m in _split(row.modalities)),
            _split(row.calling_aes),
            _split(row.sop_classes),
        )

    @property
    def filtered(self) -> bool:
        return bool(self.modalities or self.calling_aes or self.sop_classes)

    def matches(self, modality: str, calling_ae: str, sop_class: str) -> bool:
        return (
            (not self.modalities or modality.upper() in self.modalities)
            and (not self.calling_aes or calling_ae.strip() in self.calling_aes)
            and (not self.sop_classes or sop_class in self.sop_classes)
        )


@dataclass(frozen=True)
class _Matcher:
    """The instance rules with their matches so far: (modality, calling AE, SOP class) →
    destinations, filled as instances arrive, so matching is a dict look-up per instance.
    Replaced whole when the rules are reloaded, so no stale match outlives its rules."""

    rules: tuple[Rule, ...] = ()
    matched: dict[tuple[str, str, str], tuple[int, ...]] = field(default_factory=dict)

    def destinations(self, modality: str, calling_ae: str, sop_class: str) -> tuple[int, ...]:
        key = (modality, calling_ae, sop_class)
        found = self.matched.get(key)
        if found is None:
            found = tuple(sorted({r.destination_id for r in self.rules if r.matches(*key)}))
            if len(self.matched) >= _MATCHED_LIMIT:
                self.matched.clear()
            self.matched[key] = found
        return found


_MATCHED_LIMIT = 10_000


@dataclass
class _Rules:
    instance: tuple[Rule, ...] = ()
    study: tuple[Rule, ...] = ()
    matcher: _Matcher = field(default_factory=_Matcher)
    loaded: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


_rules = _Rules()


class RuleInvalid(ValueError):
    """A configured rule cannot be used; the message names its key."""


def forwarding_rules_sync(*, entries: tuple[ForwardingEntry, ...]) -> None:
    """Make the rows marked `configured` be exactly the configuration file's `forwarding:`
    rules. Raises RuleInvalid for a destination not in the remote AE table."""
    titles = dict(RemoteAE.objects.values_list("ae_title", "pk"))
    for i, entry in enumerate(entries):
        if entry.destination not in titles:
            raise RuleInvalid(
                f"forwarding[{i}].destination: {entry.destination!r} is not in the remote AE "
                "table (remote_aes: or the admin)"
            )
    with transaction.atomic():
        ForwardingRule.objects.filter(configured=True).delete()
        ForwardingRule.objects.bulk_create(
            ForwardingRule(
                destination_id=titles[entry.destination],
                when=entry.when,
                modalities=" ".join(entry.modalities),
                calling_aes=" ".join(entry.calling_aes),
                sop_classes=" ".join(entry.sop_classes),
                deidentify=entry.deidentify,
                configured=True,
            )
            for entry in entries
        )


def forwarding_rules_load() -> None:
    """Reload the enabled rules of enabled destinations, and connect the in-transaction
    receivers exactly when a rule needs them."""
    rows = ForwardingRule.objects.filter(enabled=True, destination__enabled=True)
    rules = [Rule.of(row) for row in rows]
    with _rules.lock:
        _rules.instance = tuple(r for r in rules if r.when == INSTANCE)
        _rules.study = tuple(r for r in rules if r.when == STUDY_STABLE)
        _rules.matcher = _Matcher(_rules.instance)
        _rules.loaded = time.monotonic()
        if _rules.instance:
            hook_add(_on_instance_stored)
        else:
            hook_remove(_on_instance_stored)
        _connect(study_stable_in_transaction, _on_study_stable, bool(_rules.study))


def forwarding_rules_forget() -> None:
    """Drop the cached rules and disconnect (tests; a process that stops forwarding)."""
    with _rules.lock:
        _rules.instance = _rules.study = ()
        _rules.matcher = _Matcher()
        hook_remove(_on_instance_stored)
        _connect(study_stable_in_transaction, _on_study_stable, False)


def _connect(signal: object, receiver: object, wanted: bool) -> None:
    uid = f"routing.forwarding.{receiver.__name__}"  # type: ignore[attr-defined]
    if wanted:
        signal.connect(receiver, dispatch_uid=uid, weak=False)  # type: ignore[attr-defined]
    else:
        signal.disconnect(dispatch_uid=uid)  # type: ignore[attr-defined]


def _fresh_rules() -> _Rules:
    if time.monotonic() - _rules.loaded > RULES_REFRESH:
        forwarding_rules_load()
    return _rules


# Series id → (modality, study id): what matching needs of the series, read once per process.
_series: dict[int, tuple[str, int]] = {}
_SERIES_LIMIT = 100_000


def _on_instance_stored(stored: StoredInstance) -> None:
    """An ingest hook (archive.ingest_hooks): in the bare transaction of a new instance."""
    matcher = _fresh_rules().matcher
    if not matcher.rules:
        return
    known = _series.get(stored.series_id)
    if known is None:
        known = (
            Series.objects.filter(pk=stored.series_id).values_list("modality", "study_id").first()
        )
        if known is None:
            return
        if len(_series) >= _SERIES_LIMIT:
            _series.clear()
        _series[stored.series_id] = known
    modality, study_id = known
    destinations = matcher.destinations(modality, stored.calling_ae_title, stored.sop_class_uid)
    if not destinations:
        return
    if stored.created:
        _queue_insert(stored.instance_id, study_id, destinations)
    else:  # an overwritten instance, in an atomic block: queued again if sent before
        _enqueue([(stored.instance_id, study_id)], set(destinations), resend=True)


# (database vendor, destination count) → the INSERT of that many queue rows, compiled once.
_QUEUE_INSERTS: dict[tuple[str, int], str] = {}


def _queue_insert(instance_id: int, study_id: int, destinations: tuple[int, ...]) -> None:
    """What `_enqueue` does for a new instance, as one prepared INSERT: the ORM's bulk_create
    opens an atomic block, which the bare ingest transaction must not (and cost more CPU than
    the instance's own INSERT)."""
    db = connections[DEFAULT_DB_ALIAS]
    sqlite = db.vendor == "sqlite"
    sql = _QUEUE_INSERTS.get((db.vendor, len(destinations)))
    if sql is None:
        quote = db.ops.quote_name
        columns = ", ".join(quote(column) for column in _QUEUE_COLUMNS)
        row = f"({', '.join(['?' if sqlite else '%s'] * len(_QUEUE_COLUMNS))})"
        sql = (
            f"INSERT INTO {quote(ForwardItem._meta.db_table)} ({columns}) "
            f"VALUES {', '.join([row] * len(destinations))} ON CONFLICT DO NOTHING"
        )
        _QUEUE_INSERTS[db.vendor, len(destinations)] = sql
    now = db.ops.adapt_datetimefield_value(timezone.now())
    params: list[object] = []
    for destination in destinations:
        params += (instance_id, destination, study_id, ForwardItem.PENDING, 0, 0, now, now, "")
        params.append("rule")
    if sqlite:
        # On the DB-API connection, in the transaction bare_transaction began there: Django's
        # cursor wrapper would rewrite the placeholders of the statement at every call.
        with db.wrap_database_errors:
            db.connection.execute(sql, params)
    else:
        with db.cursor() as cursor:
            cursor.execute(sql, params)


_QUEUE_COLUMNS = (
    "instance_id", "destination_id", "study_id", "state", "attempts", "repeats",
    "next_attempt_at", "queued_at", "last_error", "origin",
)  # fmt: skip


def _on_study_stable(sender: object, *, study: Study, updated: bool, **kwargs: object) -> None:
    for rule in _fresh_rules().study:
        instances = Instance.objects.filter(series__study=study)
        if rule.modalities:
            instances = instances.filter(series__modality__in=rule.modalities)
        if rule.calling_aes:
            instances = instances.filter(calling_ae_title__in=rule.calling_aes)
        if rule.sop_classes:
            instances = instances.filter(sop_class_uid__in=rule.sop_classes)
        ids = instances.order_by("pk").values_list("pk", flat=True)
        # Already queued or sent ones are left as they are: an updated study sends what is new.
        _enqueue([(pk, study.pk) for pk in ids], {rule.destination_id}, resend=False)


def _enqueue(
    instances: Iterable[tuple[int, int]],
    destinations: set[int],
    *,
    resend: bool,
    origin: str = "rule",
) -> int:
    now = timezone.now()
    rows = [
        ForwardItem(
            instance_id=instance_id,
            destination_id=destination,
            study_id=study_id,
            next_attempt_at=now,
            queued_at=now,
            origin=origin,
        )
        for instance_id, study_id in instances
        for destination in destinations
    ]
    if not rows:
        return 0
    if resend:
        # An instance received again with other content (overwritten) goes out again.
        ForwardItem.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["instance", "destination"],
            update_fields=[
                "state", "attempts", "next_attempt_at", "lease_until", "queued_at", "sent_at",
                "last_status", "last_error", "origin",
            ],
        )  # fmt: skip
    else:
        ForwardItem.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    return len(rows)


def forward_enqueue(*, instance_ids: Iterable[int], destination: RemoteAE, origin: str) -> int:
    """Queue instances for a destination by hand (the admin's "send to"): those already queued
    or sent there are queued again. Returns how many were queued."""
    pairs = list(
        Instance.objects.filter(pk__in=list(instance_ids))
        .order_by("pk")
        .values_list("pk", "series__study_id")
    )
    with index_writer(), transaction.atomic():
        for start in range(0, len(pairs), 500):
            _enqueue(pairs[start : start + 500], {destination.pk}, resend=True, origin=origin)
    return len(pairs)


def forward_requeue(*, items: Iterable[int]) -> int:
    """Dead letters (or any unsent row) back to pending, attempts reset; returns how many."""
    with index_writer(), transaction.atomic():
        return (
            ForwardItem.objects.filter(pk__in=list(items))
            .exclude(state=ForwardItem.SENT)
            .update(
                state=ForwardItem.PENDING,
                attempts=0,
                next_attempt_at=timezone.now(),
                lease_until=None,
            )
        )


@dataclass(frozen=True)
class Batch:
    destination: RemoteAE
    study_id: int
    ids: tuple[int, ...]
    lease: dt.datetime
    repeats: int


def _due(now: dt.datetime) -> "Q":
    return Q(state=ForwardItem.PENDING, next_attempt_at__lte=now) | Q(
        state=ForwardItem.SENDING, lease_until__lt=now
    )


# Destination id → (consecutive association failures, time.monotonic() until which rows
# queued since are not claimed), in this process.
_down: dict[int, tuple[int, float]] = {}


def _paused() -> list[int]:
    now = time.monotonic()
    return [pk for pk, (_, until) in list(_down.items()) if until > now]


def _claimer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def forward_orphans_release() -> int:
    """Let the rows claimed by processes of this host that are gone (killed, crashed) be
    claimed again now rather than when their lease runs out; return how many. A claimer on
    another host, or whose pid has been reused, still waits for its lease."""
    host = f"{socket.gethostname()}:"
    claimers = (
        ForwardItem.objects.filter(state=ForwardItem.SENDING, claimed_by__startswith=host)
        .values_list("claimed_by", flat=True)
        .distinct()
    )
    gone = [claimer for claimer in claimers if not _alive(claimer)]
    if not gone:
        return 0
    # Expired, not pending: claimed again they count as repeats (they may have been sent).
    with index_writer():
        released = ForwardItem.objects.filter(
            state=ForwardItem.SENDING, claimed_by__in=gone
        ).update(lease_until=timezone.now())
    if released:
        logger.warning(
            "Forwarding: %d row(s) claimed by stopped process(es) %s claimed again",
            released,
            ", ".join(gone),
        )
    return released


def _alive(claimer: str) -> bool:
    pid = claimer.rpartition(":")[2]
    return pid.isdigit() and pid_alive(int(pid))


def forward_claim(*, limit: int = BATCH, lease: float = LEASE) -> Batch | None:
    """Claim the oldest due row and the due rows after it of the same destination and study,
    up to `limit`; None when nothing is due. Two workers never hold the same row."""
    now = timezone.now()
    due = ForwardItem.objects.filter(_due(now))
    paused = _paused()
    if paused:
        # Rows a rule queued since their destination stopped answering (never tried: no last
        # error) wait out its backoff, as _release made the others: else every new arrival
        # would be claimed, fail to connect and be released, and that churn of write
        # transactions competes with ingest for the index. What an admin asked for (a send, a
        # requeue) goes now.
        due = due.exclude(destination_id__in=paused, last_error="", origin="rule")
    if not due.exists():  # a read first: an idle queue never takes the SQLite write lock
        return None
    skip_locked = connection.features.has_select_for_update_skip_locked
    with index_writer(), transaction.atomic():
        head_rows = due.order_by("pk")
        if skip_locked:
            head_rows = head_rows.select_for_update(skip_locked=True)
        head = head_rows.values_list("destination_id", "study_id").first()
        if head is None:
            return None
        rows = due.filter(destination_id=head[0], study_id=head[1]).order_by("pk")
        if skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        claimed = list(rows.values_list("pk", "state")[:limit])
        if not claimed:
            return None
        ids = tuple(pk for pk, _ in claimed)
        repeated = [pk for pk, state in claimed if state == ForwardItem.SENDING]
        until = now + dt.timedelta(seconds=lease)
        ForwardItem.objects.filter(pk__in=ids).update(
            state=ForwardItem.SENDING, lease_until=until, claimed_by=_claimer()
        )
        if repeated:
            ForwardItem.objects.filter(pk__in=repeated).update(repeats=F("repeats") + 1)
            _count(RemoteAE.objects.get(pk=head[0]).ae_title, {REPEAT: len(repeated)})
        destination = RemoteAE.objects.get(pk=head[0])
    return Batch(destination, head[1], ids, until, len(repeated))


@dataclass
class BatchResult:
    sent: int = 0
    warnings: int = 0
    failed: int = 0
    dead: int = 0
    unreachable: str = ""
    deidentified: bool = False


def forward_send(
    *, batch: Batch, storage: Storage, ae_title: str, timeout: float = 30.0
) -> BatchResult:
    """Send a claimed batch on one association and record each row's outcome."""
    result = BatchResult()
    destination = batch.destination
    rows = {
        row[0]: (row[1], RetrieveItem(*row[2:]))
        for row in ForwardItem.objects.filter(pk__in=batch.ids).values_list(
            "pk",
            "attempts",
            "instance__sop_class_uid",
            "instance__sop_instance_uid",
            "instance__transfer_syntax_uid",
            "instance__path",
        )
    }
    gone = [pk for pk in batch.ids if pk not in rows]
    if gone:  # their instances were deleted since they were queued
        with index_writer(), transaction.atomic():
            ForwardItem.objects.filter(pk__in=gone).delete()
    syntaxes: dict[str, set[str]] = {}
    for _, item in rows.values():
        syntaxes.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax_uid)
    peer = Peer(destination.ae_title, destination.host, destination.port, destination.tls)
    if not destination.enabled:
        _release(batch, [], "destination disabled", FIRST_BACKOFF * 12)
        return result
    try:
        sender = DirectStoreAssociation(
            peer,
            calling_ae_title=ae_title,
            contexts=store_contexts({k: frozenset(v) for k, v in syntaxes.items()}),
            timeout=timeout,
        ).open()
    except AssociationFailed as exc:
        failures = _down.get(destination.pk, (0, 0.0))[0] + 1
        wait = min(FIRST_BACKOFF * 2 ** (failures - 1), MAX_BACKOFF)
        _down[destination.pk] = (failures, time.monotonic() + wait)
        logger.warning("Forwarding to %s: retry in %.0f s: %s", destination.ae_title, wait, exc)
        _release(batch, [], str(exc), wait)
        result.unreachable = str(exc)
        return result
    _down.pop(destination.pk, None)
    # Per destination, not per row: one rule asking for it covers the admin's sends and rows
    # queued before the rule was changed, so identified data never reaches that destination.
    deidentify = ForwardingRule.objects.filter(destination=destination, deidentify=True).exists()
    result.deidentified = deidentify
    accepted = {k: frozenset(v) for k, v in sender.accepted_syntaxes().items()}
    sent: list[int] = []
    failed: list[tuple[int, int, int | None, str]] = []  # pk, attempts, status, error
    message_id = 0
    try:
        for pk in batch.ids:
            if pk not in rows:
                continue  # the instance was deleted since the claim
            if not sender.is_established:
                break
            attempts, item = rows[pk]
            message_id = message_id % 65535 + 1
            takes = accepted.get(item.sop_class_uid, set())
            try:
                if deidentify:
                    source = instance_dataset(storage=storage, item=item, accepted=takes)
                else:
                    source = instance_source(storage=storage, item=item, accepted=takes)
            except RetrieveFailed as exc:
                failed.append((pk, attempts, None, str(exc)))
                continue
            if deidentify:
                try:
                    dataset_deidentify(source)
                except Exception as exc:  # a malformed element dicognito cannot handle
                    failed.append((pk, attempts, None, f"not de-identified: {exc}"))
                    continue
            status = sender.send(source, message_id=message_id)
            del source
            if status is None:
                if sender.is_established:  # not sent: no context for it
                    failed.append((pk, attempts, None, "no accepted presentation context"))
                continue  # broken off: released below, unattempted
            if status == SUCCESS or status & 0xF000 == 0xB000:
                sent.append(pk)
                if status != SUCCESS:
                    result.warnings += 1
            else:
                comment = getattr(sender, "error_comment", "")
                text = f"C-STORE status 0x{status:04X}" + (f": {comment}" if comment else "")
                failed.append((pk, attempts, status, text))
    finally:
        if sender.is_established:
            sender.release()
    done = set(sent) | {pk for pk, *_ in failed}
    unsent = [pk for pk in batch.ids if pk in rows and pk not in done]
    result.sent = len(sent)
    result.dead = _record(batch, sent, failed, warnings=result.warnings)
    result.failed = len(failed)
    if unsent:
        _release(batch, unsent, "association broken off", FIRST_BACKOFF)
    _audit(batch, result)
    return result


def _record(
    batch: Batch, sent: list[int], failed: list[tuple[int, int, int | None, str]], *, warnings: int
) -> int:
    now = timezone.now()
    dead = 0
    counts: Counter[str] = Counter()
    with index_writer(), transaction.atomic():
        mine = ForwardItem.objects.filter(state=ForwardItem.SENDING, lease_until=batch.lease)
        if sent:
            updated = mine.filter(pk__in=sent).update(
                state=ForwardItem.SENT,
                sent_at=now,
                attempts=F("attempts") + 1,
                lease_until=None,
                last_error="",
            )
            counts[WARNING] = min(warnings, updated)
            counts[SENT] = updated - counts[WARNING]
        for pk, attempts, status, error in failed:
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                state, when = ForwardItem.DEAD, now
                dead += 1
                counts[DEAD] += 1
                logger.error(
                    "Forwarding of item %d gave up after %d attempts: %s", pk, attempts, error
                )
            else:
                state = ForwardItem.PENDING
                when = now + dt.timedelta(
                    seconds=min(FIRST_BACKOFF * 2 ** (attempts - 1), MAX_BACKOFF)
                )
                counts[FAILED] += 1
            mine.filter(pk=pk).update(
                state=state,
                attempts=attempts,
                next_attempt_at=when,
                lease_until=None,
                last_status=status,
                last_error=error[:255],
            )
        _count(batch.destination.ae_title, counts)
    return dead


def _release(batch: Batch, ids: list[int], error: str, wait: float) -> None:
    """Back to pending, unattempted; with no `ids`, the whole batch and every pending row of
    its destination wait `wait` seconds (the destination backs off, the others go on)."""
    until = timezone.now() + dt.timedelta(seconds=wait)
    with index_writer(), transaction.atomic():
        mine = ForwardItem.objects.filter(state=ForwardItem.SENDING, lease_until=batch.lease)
        mine.filter(pk__in=ids or batch.ids).update(
            state=ForwardItem.PENDING,
            next_attempt_at=until,
            lease_until=None,
            last_error=error[:255],
        )
        if not ids:
            ForwardItem.objects.filter(
                destination=batch.destination, state=ForwardItem.PENDING, next_attempt_at__lt=until
            ).update(next_attempt_at=until)


def _count(destination: str, counts: Counter[str] | dict[str, int]) -> None:
    for outcome, n in counts.items():
        if not n:
            continue
        updated = ForwardCount.objects.filter(destination=destination, outcome=outcome).update(
            count=F("count") + n
        )
        if not updated:
            ForwardCount.objects.create(destination=destination, outcome=outcome, count=n)


def _audit(batch: Batch, result: BatchResult) -> None:
    if not (result.sent or result.failed):
        return
    study = Study.objects.filter(pk=batch.study_id).select_related("patient").first()
    try:
        audit_record(
            EXPORT,
            outcome=AUDIT_SUCCESS if not result.failed else FAILURE,
            ae_title=batch.destination.ae_title,
            peer_address=batch.destination.host,
            patient_id=study.patient.patient_id if study else "",
            study_instance_uid=study.study_instance_uid if study else "",
            detail={
                "forwarded": result.sent,
                "failed": result.failed,
                **({"deidentified": True} if result.deidentified else {}),
            },
        )
    except DatabaseError as exc:
        logger.error("Audit record of a forwarding batch not written: %s", exc)


def forward_once(
    *, storage: Storage, ae_title: str, timeout: float = 30.0, lease: float = LEASE
) -> int:
    """Claim and send batches until nothing is due; returns how many instances were sent."""
    sent = 0
    while (batch := forward_claim(lease=lease)) is not None:
        sent += forward_send(batch=batch, storage=storage, ae_title=ae_title, timeout=timeout).sent
    return sent


def forward_purge(*, older_than: dt.timedelta = KEEP_SENT) -> int:
    """Remove sent rows older than `older_than` (the counters keep their numbers)."""
    cutoff = timezone.now() - older_than
    if not ForwardItem.objects.filter(state=ForwardItem.SENT, sent_at__lt=cutoff).exists():
        return 0
    with index_writer(), transaction.atomic():
        return ForwardItem.objects.filter(state=ForwardItem.SENT, sent_at__lt=cutoff).delete()[0]


@dataclass(frozen=True)
class DestinationQueue:
    destination: str
    depth: int
    oldest_pending_seconds: float | None
    dead: int
    last_error: str


def forward_queue_summary() -> list[DestinationQueue]:
    """Per destination: rows waiting, the age of the oldest, dead letters, the last error."""
    now = timezone.now()
    waiting = {
        row["destination__ae_title"]: row
        for row in ForwardItem.objects.waiting()
        .values("destination__ae_title")
        .annotate(n=Count("id"), oldest=Min("queued_at"))
    }
    dead = dict(
        ForwardItem.objects.filter(state=ForwardItem.DEAD)
        .values("destination__ae_title")
        .annotate(n=Count("id"))
        .values_list("destination__ae_title", "n")
    )
    titles = sorted(
        set(waiting)
        | set(dead)
        | set(ForwardingRule.objects.values_list("destination__ae_title", flat=True))
    )
    summary = []
    for title in titles:
        row = waiting.get(title)
        error = (
            ForwardItem.objects.filter(destination__ae_title=title)
            .exclude(last_error="")
            .order_by("-next_attempt_at")
            .values_list("last_error", flat=True)
            .first()
        )
        summary.append(
            DestinationQueue(
                title,
                row["n"] if row else 0,
                (now - row["oldest"]).total_seconds() if row else None,
                dead.get(title, 0),
                error or "",
            )
        )
    return summary


def forward_failures_recent(limit: int = 20) -> list[dict]:
    """The latest unsent rows with an error (retrying or dead letters), JSON-ready."""
    rows = (
        ForwardItem.objects.exclude(state=ForwardItem.SENT)
        .exclude(last_error="")
        .select_related("destination")
        .order_by("-next_attempt_at")[:limit]
    )
    return [
        {
            "id": row.pk,
            "destination": row.destination.ae_title,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt_at": row.next_attempt_at.isoformat(),
            "error": row.last_error,
        }
        for row in rows
    ]


class ForwardingWorker:
    """Delivery in a background thread: batches while there are due rows, else a pause of
    `interval` seconds. Also reloads the rules and removes old sent rows now and then."""

    def __init__(
        self,
        *,
        storage: Storage,
        ae_title: str,
        interval: float = 1.0,
        timeout: float = 30.0,
        lease: float = LEASE,
    ) -> None:
        self.storage = storage
        self.lease = lease
        self.ae_title = ae_title
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarding", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 35.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def request_stop(self) -> None:
        """From a signal handler: `run_forever` returns after the batch in progress."""
        self._stop.set()

    def run_forever(self) -> None:
        """In the calling thread (manage.py forward --watch) until `stop()`."""
        self._run()

    def _run(self) -> None:
        purged = 0.0
        try:
            try:
                forward_orphans_release()
            except DatabaseError as exc:
                logger.warning("Forwarding: index unavailable: %s", exc)
            while not self._stop.is_set():
                close_old_connections()
                busy = False
                try:
                    if time.monotonic() - purged > 3600:
                        forward_purge()
                        purged = time.monotonic()
                    batch = forward_claim(lease=self.lease)
                    if batch is not None:
                        busy = True
                        forward_send(
                            batch=batch,
                            storage=self.storage,
                            ae_title=self.ae_title,
                            timeout=self.timeout,
                        )
                except DatabaseError as exc:
                    logger.warning("Forwarding: index unavailable: %s", exc)
                    connection.close()
                except Exception:
                    logger.exception("Forwarding failed unexpectedly")
                if not busy:
                    self._stop.wait(self.interval)
        finally:
            connection.close()


class RuleWatcher:
    """Reloads the rules every RULES_REFRESH seconds in a receiver process, so that the
    in-transaction receivers are connected once a rule exists (and disconnected when none)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarding-rules", daemon=True)

    def start(self) -> "RuleWatcher":
        try:
            forwarding_rules_load()
        except DatabaseError as exc:
            logger.warning("Forwarding rules not loaded yet: %s", exc)
        finally:
            connection.close()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(RULES_REFRESH):
                try:
                    forwarding_rules_load()
                except DatabaseError as exc:
                    logger.warning("Forwarding rules not reloaded: %s", exc)
                    connection.close()
        finally:
            connection.close()


def _rules_changed(sender: object, **kwargs: object) -> None:
    _rules.loaded = 0.0  # reloaded at the next instance in this process
    if _rules.instance or _rules.study:
        return
    with contextlib.suppress(DatabaseError):
        forwarding_rules_load()


post_save.connect(_rules_changed, sender=ForwardingRule, dispatch_uid="routing.rules_saved")
post_delete.connect(_rules_changed, sender=ForwardingRule, dispatch_uid="routing.rules_deleted")
