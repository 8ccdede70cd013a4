"""Storage Commitment Push Model, SCP side (PS3.4 J.3): transactions and their reports.

A request is recorded as a row at once (`commitment_request_record`); `commitment_deliver_due`
checks each referenced instance (indexed, file present, size and SHA-256 as recorded) and sends
the N-EVENT-REPORT on the requester's own association when it is still open and the requester
accepted the SCP role there (PS3.4 J.3.3; `commitment_association_offer`), else on a new
association to the requester, found in the remote AE table by its AE title. An unreachable
requester is retried with backoff; rows outlive restarts. `CommitmentDelivery` runs that loop
in a background thread of runscp.
"""

import datetime as dt
import hashlib
import logging
import threading
import time
import weakref
from typing import Any

from django.db import DatabaseError, IntegrityError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone
from pydicom.dataset import Dataset

from archive.forksafe import quiet_at_fork
from archive.models import Instance
from archive.storage import Storage
from routing.models import CommitmentTransaction
from routing.remote import remote_ae_find
from routing.scu import AssociationFailed, associate, commitment_contexts, event_report_send

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance
ALL_COMMITTED, SOME_FAILED = 1, 2  # event type IDs (PS3.4 J.3.3.1)
NO_SUCH_OBJECT_INSTANCE = 0x0112
PROCESSING_FAILURE = 0x0110
FIRST_RETRY = 10.0  # seconds; doubled per failed attempt
LAST_RETRY = 3600.0
MAX_ATTEMPTS = 30  # about a day of retries at the longest interval
# A request whose report may go on its own association is due in other receiver processes
# only after this many seconds: the process holding that association delivers it at once.
OFFERED_WAIT = 10.0
# A report on the request's own association goes no sooner than this after the request: a
# requester built on pynetdicom 3.0 mis-decoded a report that followed its N-ACTION-RSP by a
# few milliseconds ("KeyError: 'DIMSEMessag'", then an abort; about one request in eight in
# tests/receiver/test_workers.py, none in 48 with this wait). A modality waits far longer.
REPORT_SETTLE = 0.3
# A process that claimed a row has this long to record the outcome before another may try.
CLAIM_LEASE = 120.0
_READ = 1 << 20


# (calling AE title, transaction UID) → the requester's association, where it may take the
# report (weak: a closed association must not be kept alive by a report not yet due).
_OFFERED: "weakref.WeakValueDictionary[tuple[str, str], Any]" = weakref.WeakValueDictionary()
_OFFERED_LOCK = threading.Lock()


def commitment_association_offer(
    *, calling_ae_title: str, transaction_uid: str, assoc: Any
) -> None:
    """The requester of `transaction_uid` accepted the SCP role of Storage Commitment on
    `assoc` (a pynetdicom Association, the N-ACTION's): report there while it stays open."""
    assoc.__dict__["_commitment_offered_at"] = time.monotonic()
    with _OFFERED_LOCK:
        _OFFERED[(calling_ae_title.strip(), transaction_uid)] = assoc


def _offered_here() -> Q:
    """The transactions whose requester's association is open in this process."""
    with _OFFERED_LOCK:
        keys = list(_OFFERED.keys())
    offered = Q(pk__in=[])
    for calling_ae_title, transaction_uid in keys:
        offered |= Q(calling_ae_title=calling_ae_title, transaction_uid=transaction_uid)
    return offered


def _offered(row: CommitmentTransaction) -> Any:
    with _OFFERED_LOCK:
        assoc = _OFFERED.pop((row.calling_ae_title, row.transaction_uid), None)
    return assoc if assoc is not None and assoc.is_established else None


class CommitmentInvalid(ValueError):
    """The N-ACTION's information cannot be a Storage Commitment request."""


def commitment_request_record(
    *, calling_ae_title: str, information: Dataset, offered: bool = False
) -> CommitmentTransaction:
    """Record a Storage Commitment request; raises CommitmentInvalid for a request without a
    Transaction UID or with malformed references. `offered`: the report may go on the
    request's association (commitment_association_offer), which only this process holds, so
    other processes wait OFFERED_WAIT seconds before they take the row."""
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise CommitmentInvalid("no TransactionUID")
    references = []
    for item in information.get("ReferencedSOPSequence", None) or []:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise CommitmentInvalid("a ReferencedSOPSequence item lacks its class or instance UID")
        references.append([sop_class, sop_instance])
    if not references:
        raise CommitmentInvalid("ReferencedSOPSequence is empty")
    due = timezone.now() + dt.timedelta(seconds=OFFERED_WAIT if offered else 0)
    try:
        return CommitmentTransaction.objects.create(
            transaction_uid=transaction_uid,
            calling_ae_title=calling_ae_title.strip(),
            references=references,
            next_attempt_at=due,
        )
    except IntegrityError:
        # The same request again: answer it again.
        row = CommitmentTransaction.objects.get(
            transaction_uid=transaction_uid, calling_ae_title=calling_ae_title.strip()
        )
        row.state, row.next_attempt_at, row.references = (
            CommitmentTransaction.PENDING,
            due,
            references,
        )
        row.failures = None
        row.save()
        return row


def commitment_check(*, references: list[list[str]], storage: Storage) -> list[list]:
    """The references that cannot be committed: [class, instance, failure reason]."""
    uids = [instance for _, instance in references]
    rows = {
        row[0]: row[1:]
        for row in Instance.objects.filter(sop_instance_uid__in=uids).values_list(
            "sop_instance_uid", "sop_class_uid", "path", "size", "sha256"
        )
    }
    failures: list[list] = []
    for sop_class, sop_instance in references:
        row = rows.get(sop_instance)
        if row is None or row[0] != sop_class:
            failures.append([sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE])
            continue
        _, path, size, sha256 = row
        if not _file_intact(storage, path, size, sha256):
            failures.append([sop_class, sop_instance, PROCESSING_FAILURE])
    return failures


def _file_intact(storage: Storage, path: str, size: int, sha256: str) -> bool:
    try:
        if storage.size(path) != size:
            return False
        digest = hashlib.sha256()
        with storage.open(path) as stream:
            while chunk := stream.read(_READ):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def commitment_report(row: CommitmentTransaction) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's event type and information for a checked transaction."""
    failed = {instance for _, instance, _ in row.failures or []}
    ds = Dataset()
    ds.TransactionUID = row.transaction_uid
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in row.references:
        if sop_instance in failed:
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    if not row.failures:
        return ALL_COMMITTED, ds
    ds.FailedSOPSequence = []
    for sop_class, sop_instance, reason in row.failures:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        ds.FailedSOPSequence.append(item)
    if not ds.ReferencedSOPSequence:
        del ds.ReferencedSOPSequence
    return SOME_FAILED, ds


def commitment_deliver_due(*, storage: Storage, ae_title: str) -> int:
    """Check and report every transaction that is due, or whose requester's association is
    open in this process; return how many were delivered. Several receiver processes (the
    workers of `runscp --workers N`, several nodes) run this at once: each row is claimed
    first, and only the process that claimed it reports it."""
    delivered = 0
    now = timezone.now()
    due = CommitmentTransaction.objects.filter(
        Q(next_attempt_at__lte=now) | _offered_here(), state=CommitmentTransaction.PENDING
    ).order_by("next_attempt_at")
    for row in list(due[:50]):
        claimed = CommitmentTransaction.objects.filter(
            pk=row.pk, state=CommitmentTransaction.PENDING, next_attempt_at=row.next_attempt_at
        ).update(next_attempt_at=now + dt.timedelta(seconds=CLAIM_LEASE))
        if not claimed:
            continue  # another process took it meanwhile
        if row.failures is None:
            row.failures = commitment_check(references=row.references, storage=storage)
            row.save(update_fields=["failures"])
        error = _deliver(row, ae_title=ae_title)
        row.attempts += 1
        if error is None:
            row.state = CommitmentTransaction.DELIVERED
            row.delivered_at = timezone.now()
            row.last_error = ""
            delivered += 1
            logger.info(
                "Storage Commitment %s reported to %s: %s",
                row.transaction_uid,
                row.calling_ae_title,
                row.outcome,
            )
        else:
            row.last_error = error[:255]
            if row.attempts >= MAX_ATTEMPTS:
                row.state = CommitmentTransaction.GAVE_UP
                logger.error(
                    "Storage Commitment %s: giving up after %d attempts: %s",
                    row.transaction_uid,
                    row.attempts,
                    error,
                )
            else:
                wait = min(FIRST_RETRY * 2 ** (row.attempts - 1), LAST_RETRY)
                row.next_attempt_at = timezone.now() + dt.timedelta(seconds=wait)
                logger.warning(
                    "Storage Commitment %s not reported to %s (retry in %.0f s): %s",
                    row.transaction_uid,
                    row.calling_ae_title,
                    wait,
                    error,
                )
        row.save()
    return delivered


def _deliver(row: CommitmentTransaction, *, ae_title: str) -> str | None:
    """Send the report, on the request's association if offered and still open; None on
    success, else why not."""
    event_type, information = commitment_report(row)
    same = _offered(row)
    if same is not None:
        settle = same.__dict__.get("_commitment_offered_at", 0.0) + REPORT_SETTLE
        time.sleep(max(0.0, settle - time.monotonic()))
        try:
            status = event_report_send(
                same,
                event_type=event_type,
                information=information,
                instance_uid=STORAGE_COMMITMENT_INSTANCE,
            )
        except (ValueError, RuntimeError) as exc:
            status = None
            logger.info(
                "Storage Commitment %s: not on the request's association: %s",
                row.transaction_uid,
                exc,
            )
        if status == 0x0000:
            return None
        # Released meanwhile, or refused there: a new association, as without the offer.
    peer = remote_ae_find(ae_title=row.calling_ae_title)
    if peer is None:
        return f"{row.calling_ae_title} is not in the remote AE table"
    contexts, roles = commitment_contexts()
    try:
        assoc = associate(peer, calling_ae_title=ae_title, contexts=contexts, ext_neg=roles)
    except AssociationFailed as exc:
        return str(exc)
    try:
        status = event_report_send(
            assoc,
            event_type=event_type,
            information=information,
            instance_uid=STORAGE_COMMITMENT_INSTANCE,
        )
    except (ValueError, RuntimeError) as exc:
        return f"N-EVENT-REPORT not sent: {exc}"
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None:
        return "no N-EVENT-REPORT response"
    if status != 0x0000:
        return f"N-EVENT-REPORT status 0x{status:04X}"
    return None


class CommitmentDelivery:
    """The delivery loop in a background thread: every `interval` seconds, and at once when
    `wake()` is called (a request has just been recorded)."""

    def __init__(self, *, storage: Storage, ae_title: str, interval: float = 2.0) -> None:
        self.storage = storage
        self.ae_title = ae_title
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commitment-delivery", daemon=True)
        # A process that forks with this loop running (a test's, say) never does so in the
        # middle of a round (archive.forksafe).
        self._round = quiet_at_fork()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=35)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._round:
                    close_old_connections()
                    try:
                        commitment_deliver_due(storage=self.storage, ae_title=self.ae_title)
                    except DatabaseError as exc:
                        logger.warning("Storage Commitment delivery: index unavailable: %s", exc)
                    except Exception:
                        logger.exception("Storage Commitment delivery failed unexpectedly")
                self._wake.wait(self.interval)
                self._wake.clear()
        finally:
            connection.close()
