"""Ingest: turn one received dataset into a durable file and a committed index row.

The order is fixed: parse the header, stage the file (written and fsync'd, outside any
transaction), then one short transaction that writes the index rows and renames the staged file
to its final name. The rename happens while the transaction holds the instance's unique key, so
two associations storing the same instance at once cannot both publish; if the commit fails,
the published file is removed again. Store and index never disagree.

An upload to a bucket on a SQLite index is the exception: the object goes up first, under the
instance's own lock, then the rows are written in the short transaction (see _index_new), so
that one upload never holds SQLite's single writer.
"""

import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info

from archive import ingest_hooks, unflushed
from archive.dblock import bare_transaction, index_writer, instance_writer, writers_serialised
from archive.events import instance_stored_enqueue
from archive.exceptions import (
    DatasetMismatch,
    DatasetUnreadable,
    DuplicateRejected,
    IndexFailure,
    StorageFailure,
)
from archive.header import HEADER_PREFIX, InstanceHeader, header_read
from archive.models import Instance, Patient, Series, Study
from archive.naming import naming_scheme, relative_path
from archive.part10 import file_header
from archive.signals import instance_stored_in_transaction
from archive.stability import (
    series_touch,
    series_touch_due,
    series_touched,
    stable_touch_cache_clear,
)
from archive.storage import StagedFile, Storage

if TYPE_CHECKING:
    from archive.retention import Quota

logger = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("keep", "overwrite", "reject")
Outcome = Literal["stored", "identical", "kept", "overwritten", "restored"]


@dataclass(frozen=True)
class IngestSettings:
    """How the archive stores what arrives: where, under which names, and what to do on resends."""

    storage: Storage
    naming: str = "hierarchical"
    duplicates: str = "keep"
    # Refuse UIDs that break PS3.5 (0xC000) instead of storing them under safe names.
    strict_uids: bool = False
    # storage.retention in refuse mode: StorageFailure (0xA700) once the archive is full.
    quota: "Quota | None" = None
    # False (`database.synchronous: normal`): on PostgreSQL, the transaction of a new instance
    # commits without waiting for the WAL flush, unless an ingest hook (forwarding) writes in
    # it; see _index_rows.
    index_flush: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "naming", naming_scheme(self.naming))
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(
                f"unknown duplicate policy {self.duplicates!r}: use one of keep, overwrite, reject"
            )


@dataclass(frozen=True)
class StoreResult:
    """What happened to a stored instance: `stored` (new), `identical` (same bytes already
    there), `kept` (different bytes, first copy kept), `overwritten`, or `restored` (the stored
    file was gone and is written again from the resend)."""

    outcome: Outcome
    instance_id: int
    path: str
    # Who and which study, for the receiver's per-study audit records.
    patient_id: str = ""
    study_instance_uid: str = ""
    # Stored although its instance, series or study UID breaks PS3.5 (see IngestSettings).
    nonconforming_uids: bool = False


def instance_store(
    *,
    dataset: bytes | BinaryIO,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae_title: str,
    remote_address: str,
    settings: IngestSettings,
) -> StoreResult:
    """Store and index one encoded dataset (no file meta group) exactly as received.

    `dataset` is the encoded bytes, or a seekable file holding them (large instances are read
    in chunks and never held in memory whole).

    Raises DatasetUnreadable (unparsable, or a required UID missing/invalid), DatasetMismatch
    (SOP Class/Instance UID differs from the request's), StorageFailure (file not written),
    IndexFailure (index not committed; nothing left on disk) or DuplicateRejected.
    """
    quota = settings.quota
    if quota is not None and quota.full():
        raise StorageFailure(
            f"archive full: {quota.max_bytes} bytes of storage.retention.max_bytes (mode refuse)"
        )
    header = header_read(_prefix(dataset), transfer_syntax_uid, strict_uids=settings.strict_uids)
    if header.sop_class_uid != sop_class_uid:
        raise DatasetMismatch(
            f"SOP Class UID {header.sop_class_uid!r} in the dataset, "
            f"{sop_class_uid!r} in the request"
        )
    if header.sop_instance_uid != sop_instance_uid:
        if not _cut_by_sender(header, sop_instance_uid):
            raise DatasetMismatch(
                f"SOP Instance UID {header.sop_instance_uid!r} in the dataset, "
                f"{sop_instance_uid!r} in the request"
            )
        sop_instance_uid = header.sop_instance_uid  # the file and the index keep it whole
    result = _instance_write(
        header=header,
        dataset=dataset,
        transfer_syntax_uid=transfer_syntax_uid,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        calling_ae_title=calling_ae_title,
        remote_address=remote_address,
        settings=settings,
    )
    if header.nonconforming_uids:
        result = dataclasses.replace(result, nonconforming_uids=True)
    if quota is not None and result.outcome in ("stored", "overwritten"):
        # The dataset's size stands for the file's until the next measure of the index.
        quota.add(len(dataset) if isinstance(dataset, bytes) else dataset.seek(0, 2))
    return result


def _cut_by_sender(header: InstanceHeader, requested_uid: str) -> bool:
    """Whether the request's SOP Instance UID is the dataset's, cut to the 64 characters of
    PS3.5 by the sender (DCMTK's storescu does so for an over-long UID it was given)."""
    full = header.sop_instance_uid
    return "SOPInstanceUID" in header.nonconforming_uids and full[:64] == requested_uid


def _instance_write(
    *,
    header: InstanceHeader,
    dataset: bytes | BinaryIO,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae_title: str,
    remote_address: str,
    settings: IngestSettings,
) -> StoreResult:
    received_at = timezone.now()
    arrival = _Arrival(
        header=header,
        transfer_syntax_uid=transfer_syntax_uid,
        received_at=received_at,
        calling_ae_title=calling_ae_title,
        remote_address=remote_address,
        path=relative_path(header, settings.naming, timezone.localdate(received_at)),
    )

    storage = settings.storage
    meta = file_header(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae_title=calling_ae_title,
    )
    # Insert first and let the unique constraint tell a resend: new instances, the common case,
    # then cost one write transaction and no look-up.
    staged = storage.stage(itertools.chain((meta,), _chunks(dataset)))
    try:
        try:
            return _index_new(arrival, staged, storage, flush=settings.index_flush)
        except IntegrityError:
            existing = _existing(sop_instance_uid)
        if existing is None:
            # Not a duplicate: the series row we remembered is gone (its deferred foreign key
            # failed at commit, which removed the published file). Look the rows up afresh.
            series_cache_clear()
            storage.discard(staged)
            staged = storage.stage(itertools.chain((meta,), _chunks(dataset)))
            try:
                return _index_new(arrival, staged, storage, flush=settings.index_flush)
            except IntegrityError as exc:
                raise IndexFailure(f"index constraint failed: {exc}") from None
        result = _resend_settle(existing, arrival, dataset, settings)
        if isinstance(result, StoreResult):
            instance_stored_enqueue(
                instance_id=result.instance_id, created=False, outcome=result.outcome
            )
            return result
        return _index_overwrite(existing, arrival, staged, storage, outcome=result)
    finally:
        storage.discard(staged)


_CHUNK = 2**20


def _prefix(dataset: bytes | BinaryIO) -> bytes:
    if isinstance(dataset, bytes):
        return dataset
    dataset.seek(0)
    return dataset.read(HEADER_PREFIX)


def _chunks(dataset: bytes | BinaryIO) -> Iterator[bytes]:
    if isinstance(dataset, bytes):
        yield dataset
        return
    dataset.seek(0)
    while chunk := dataset.read(_CHUNK):
        yield chunk


def _skip_file_meta(fh: BinaryIO) -> Dataset:
    """Read preamble and file meta group of an open Part 10 file, leaving it at the dataset."""
    if fh.read(132)[128:132] != b"DICM":
        raise DatasetUnreadable("not a DICOM Part 10 file")
    return _read_file_meta_info(fh)


def _stored_dataset_sha256(storage: Storage, relative: str) -> str | None:
    """SHA-256 of the dataset in a stored file; None if the file cannot be read."""
    try:
        with storage.open(relative) as fh:
            _skip_file_meta(fh)
            digest = hashlib.sha256()
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except Exception:  # gone, unreadable or damaged: any of these means "replace it"
        return None
    return digest.hexdigest()


@dataclass(frozen=True)
class _Arrival:
    header: InstanceHeader
    transfer_syntax_uid: str
    received_at: dt.datetime
    calling_ae_title: str
    remote_address: str
    path: str


@dataclass(frozen=True)
class _Existing:
    id: int
    path: str


def _existing(sop_instance_uid: str) -> _Existing | None:
    try:
        row = (
            Instance.objects.filter(sop_instance_uid=sop_instance_uid)
            .values_list("id", "path")
            .first()
        )
    except DatabaseError as exc:
        raise IndexFailure(f"index not readable: {exc}") from exc
    return _Existing(*row) if row else None


def _resend_settle(
    existing: _Existing,
    arrival: _Arrival,
    dataset: bytes | BinaryIO,
    settings: IngestSettings,
) -> StoreResult | Literal["overwritten", "restored"]:
    """Settle a resend that needs no write, or say which write it needs: `restored` (the stored
    file is gone or unreadable: write it again, whatever the duplicate policy) or `overwritten`.

    The stored copy's dataset (without its file meta group, which names the sender) is hashed
    here rather than at every ingest: resends are rare, and hashing every dataset twice was a
    measurable share of the cost of large instances.
    """
    uid = arrival.header.sop_instance_uid
    stored = _stored_dataset_sha256(settings.storage, existing.path)
    if stored is None:
        return "restored"  # logged once written (_index_overwrite)
    incoming = hashlib.sha256()
    for chunk in _chunks(dataset):
        incoming.update(chunk)
    if stored == incoming.hexdigest():
        logger.debug("Instance %s received again with identical content", uid)
        return StoreResult("identical", existing.id, existing.path, *_who(arrival))
    if settings.duplicates == "keep":
        logger.warning("Instance %s received again with different content: kept the first", uid)
        return StoreResult("kept", existing.id, existing.path, *_who(arrival))
    if settings.duplicates == "reject":
        logger.warning("Instance %s received again with different content: rejected", uid)
        raise DuplicateRejected(f"instance {uid} exists with different content")
    return "overwritten"


def _who(arrival: _Arrival) -> tuple[str, str]:
    return arrival.header.patient_id, arrival.header.study_instance_uid


def _index_new(
    arrival: _Arrival, staged: StagedFile, storage: Storage, *, flush: bool
) -> StoreResult:
    if not (storage.uploads and writers_serialised()):
        return _index_rows(arrival, staged, storage, publish=True, flush=flush)
    # An upload takes network time, for which SQLite's one writer would make every other
    # association wait. So the object goes up first, under this instance's own lock (no two
    # writers of it at once, and a resend is told before its upload could replace the stored
    # copy), and only the rows are written under the index's lock. If they fail, the object
    # is removed; a crash in between leaves an orphan object, which `verifystorage --repair`
    # indexes.
    uid = arrival.header.sop_instance_uid
    with instance_writer(uid):
        try:
            indexed = Instance.objects.indexed(uid)
        except DatabaseError as exc:
            raise IndexFailure(f"index not readable: {exc}") from exc
        if indexed:
            raise IntegrityError(f"instance {uid} is indexed already")  # settled as a resend
        storage.publish(staged, arrival.path)
        return _index_rows(arrival, staged, storage, publish=False, flush=flush)


def _index_rows(
    arrival: _Arrival, staged: StagedFile, storage: Storage, *, publish: bool, flush: bool
) -> StoreResult:
    """Write the rows of a new instance; with `publish`, publish its file in the same
    transaction (a rename: it holds the instance's unique key while it does)."""
    series_id = _series_ids.get(arrival.header.series_instance_uid)
    hooked = bool(instance_stored_in_transaction.receivers)
    hooks = ingest_hooks.hooks
    # An instance of a series seen before is one INSERT, which needs no ORM transaction (unless
    # an app's receiver writes in it; archive.ingest_hooks write without one). Without `flush`
    # its commit need not wait for the database's WAL flush: its file is durable already, so
    # the row can be rebuilt if a database crash undoes the commit (archive.unflushed, else
    # `verifystorage --repair`). A hook's rows (forwarding's queue) cannot be rebuilt from the
    # file: with hooks, it waits.
    bare = series_id is not None and not hooked
    writing = bare_transaction(flush=flush or bool(hooks)) if bare else transaction.atomic()
    touched = None
    try:
        with index_writer(), writing as unflushed_commit:
            series_id = series_id or _series_id_for(arrival.header)
            instance_id = Instance.objects.insert(
                series=series_id, **_instance_fields(arrival, staged)
            )
            # Stability's reception time, at most once a second per series (archive.stability):
            # now, not when the instance began to arrive, which for a large one is long before
            # it commits.
            if series_touch_due(series_id):
                touched = series_touch(series_id=series_id, received_at=timezone.now())
            if hooks:
                _run_hooks(hooks, instance_id, series_id, arrival, created=True)
            if hooked:
                _send_in_transaction(instance_id, series_id, created=True)
            published = storage.publish(staged, arrival.path, durable=False) if publish else None
    except BaseException as exc:
        if staged.published:
            storage.remove(arrival.path)
        if isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError):
            raise IndexFailure(f"index not written: {exc}") from exc
        raise
    if unflushed_commit:
        unflushed.remember(arrival.header.sop_instance_uid, arrival.path)
    # The directory fsync comes after the commit, outside the write lock, so that concurrent
    # associations share the lock for the insert only; success is reported only after it.
    if touched is not None:
        series_touched(series_id, touched)
    if published is not None:
        storage.make_durable(published)
    instance_stored_enqueue(instance_id=instance_id, created=True, outcome="stored")
    return StoreResult("stored", instance_id, arrival.path, *_who(arrival))


def _run_hooks(
    hooks: tuple[ingest_hooks.Hook, ...],
    instance_id: int,
    series_id: int,
    arrival: _Arrival,
    *,
    created: bool,
) -> None:
    stored = ingest_hooks.StoredInstance(
        instance_id,
        series_id,
        arrival.header.sop_class_uid,
        arrival.calling_ae_title,
        created,
    )
    try:
        for hook in hooks:
            hook(stored)
    except Exception as exc:
        # Not left to propagate as it is: an IntegrityError would pass for a resend.
        logger.error("ingest hook failed: %r", exc, exc_info=exc)
        raise IndexFailure(f"a writer in the ingest transaction failed: {exc}") from exc


def _send_in_transaction(instance_id: int, series_id: int, *, created: bool) -> None:
    try:
        instance_stored_in_transaction.send(
            sender=Instance, instance_id=instance_id, series_id=series_id, created=created
        )
    except Exception as exc:
        # Not left to propagate as it is: an IntegrityError would pass for a resend.
        logger.error("instance_stored_in_transaction receiver failed: %r", exc, exc_info=exc)
        raise IndexFailure(f"a receiver in the ingest transaction failed: {exc}") from exc


def _index_overwrite(
    existing: _Existing,
    arrival: _Arrival,
    staged: StagedFile,
    storage: Storage,
    *,
    outcome: Literal["overwritten", "restored"],
) -> StoreResult:
    """Replace the stored copy, or write it again where it is gone; a previous file is set
    aside until the commit succeeds."""
    previous = storage.set_aside(existing.path)
    try:
        with index_writer(), transaction.atomic():
            instance = Instance.objects.select_for_update().get(pk=existing.id)
            instance.series_id = _series_id_for(arrival.header)
            for field, value in _instance_fields(arrival, staged).items():
                setattr(instance, field, value)
            instance.save()
            touched = series_touch(series_id=instance.series_id, received_at=timezone.now())
            if ingest_hooks.hooks:
                _run_hooks(
                    ingest_hooks.hooks, instance.pk, instance.series_id, arrival, created=False
                )
            if instance_stored_in_transaction.receivers:
                _send_in_transaction(instance.pk, instance.series_id, created=False)
            storage.publish(staged, arrival.path)
    except BaseException as exc:
        if staged.published and arrival.path != existing.path:
            storage.remove(arrival.path)
        storage.restore(previous, existing.path)
        if isinstance(exc, DatabaseError):
            raise IndexFailure(f"index not updated: {exc}") from exc
        raise
    if arrival.path != existing.path:
        storage.remove(existing.path)
    storage.drop_aside(previous)
    series_touched(instance.series_id, touched)
    instance_stored_enqueue(instance_id=instance.pk, created=False, outcome=outcome)
    uid = arrival.header.sop_instance_uid
    if outcome == "restored":
        logger.warning("Instance %s received again and its stored file was gone: restored", uid)
    else:
        logger.warning("Instance %s received again with different content: overwritten", uid)
    return StoreResult(outcome, instance.pk, arrival.path, *_who(arrival))


def _instance_fields(arrival: _Arrival, staged: StagedFile) -> dict[str, Any]:
    header = arrival.header
    return {
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "instance_number": header.instance_number,
        "transfer_syntax_uid": arrival.transfer_syntax_uid,
        "path": arrival.path,
        "size": staged.size,
        "sha256": staged.sha256,
        "received_at": arrival.received_at,
        "calling_ae_title": _fit(Instance, "calling_ae_title", arrival.calling_ae_title),
        "remote_address": _fit(Instance, "remote_address", arrival.remote_address),
    }


# Series UID → series row id, filled after commit. Instances of a series arrive together, so
# this spares the patient/study/series look-ups for all but the first of them.
_series_ids: dict[str, int] = {}
_SERIES_IDS_LIMIT = 100_000


def series_cache_clear() -> None:
    """Forget remembered series rows (after rows were deleted outside the ingest path)."""
    _series_ids.clear()
    stable_touch_cache_clear()


def _series_id_for(header: InstanceHeader) -> int:
    uid = header.series_instance_uid
    series_id = _series_ids.get(uid)
    if series_id is None:
        series_id = _series_for(header).pk
        if len(_series_ids) >= _SERIES_IDS_LIMIT:
            _series_ids.clear()
        transaction.on_commit(lambda: _series_ids.__setitem__(uid, series_id))
    return series_id


def _series_for(header: InstanceHeader) -> Series:
    """Find or create the patient, study and series rows; the unique constraints settle races."""
    patient, _ = Patient.objects.get_or_create(
        patient_id=_fit(Patient, "patient_id", header.patient_id),
        issuer_of_patient_id=_fit(Patient, "issuer_of_patient_id", header.issuer_of_patient_id),
        defaults=_fitted(
            Patient,
            name=header.patient_name,
            birth_date=header.patient_birth_date,
            sex=header.patient_sex,
        ),
    )
    study, _ = Study.objects.get_or_create(
        study_instance_uid=header.study_instance_uid,
        defaults=_fitted(
            Study,
            patient=patient,
            study_date=header.study_date,
            study_time=header.study_time,
            accession_number=header.accession_number,
            study_id=header.study_id,
            description=header.study_description,
            referring_physician_name=header.referring_physician_name,
        ),
    )
    series, _ = Series.objects.get_or_create(
        series_instance_uid=header.series_instance_uid,
        defaults=_fitted(
            Series,
            study=study,
            modality=header.modality,
            series_number=header.series_number,
            description=header.series_description,
            body_part_examined=header.body_part_examined,
        ),
    )
    return series


def _fit(model: type[models.Model], field: str, value: str) -> str:
    """Fit a received value to its column: a sender's over-long value, or a NUL (which no DICOM
    text may hold and PostgreSQL refuses), must not fail the C-STORE."""
    max_length = model._meta.get_field(field).max_length
    value = value.replace("\x00", "")
    return value[:max_length] if max_length else value


def _fitted(model: type[models.Model], **values: Any) -> dict[str, Any]:
    return {
        field: _fit(model, field, value) if isinstance(value, str) else value
        for field, value in values.items()
    }


def instance_index_file(*, relative: str, storage: Storage) -> StoreResult:
    """Index a Part 10 file already under the storage directory, where it stays (used to repair
    an index that lost rows). Raises DatasetUnreadable for anything that is not a Part 10 file
    with the required UIDs (a missing file included), StorageFailure when the storage cannot be
    read, and IntegrityError if its SOP Instance UID is indexed already."""
    try:
        with storage.open(relative) as fh:
            meta = _skip_file_meta(fh)
            syntax = str(meta.get("TransferSyntaxUID", ""))
            if not syntax:
                raise DatasetUnreadable("the file meta group names no transfer syntax")
            header = header_read(fh.read(HEADER_PREFIX), syntax)
            file_digest = hashlib.sha256()
            fh.seek(0)
            while chunk := fh.read(_CHUNK):
                file_digest.update(chunk)
            size = fh.tell()
        received_at = storage.modified(relative)
    except FileNotFoundError:
        raise DatasetUnreadable(f"cannot read {relative}: no such file") from None
    except OSError as exc:  # the storage failing, not the file: perhaps passing
        raise StorageFailure(f"cannot read {relative}: {exc.strerror or exc}") from exc
    except (DatasetUnreadable, StorageFailure):
        raise
    except Exception as exc:  # pydicom's many errors on a damaged meta group
        raise DatasetUnreadable(f"file meta group unreadable: {exc}") from exc
    arrival = _Arrival(
        header=header,
        transfer_syntax_uid=syntax,
        received_at=received_at,
        calling_ae_title=str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        remote_address="",
        path=relative,
    )
    existing = StagedFile(
        path=Path(relative), size=size, sha256=file_digest.hexdigest(), published=True
    )
    # The instance's lock too: an ingest that uploads before indexing (see _index_new) must
    # not replace the object this indexes.
    with instance_writer(header.sop_instance_uid), index_writer(), transaction.atomic():
        instance = Instance.objects.create(
            series_id=_series_for(header).pk, **_instance_fields(arrival, existing)
        )
        # A repaired instance changes its study as a late one would: announced again.
        series_touch(series_id=instance.series_id, received_at=timezone.now())
    return StoreResult(outcome="stored", instance_id=instance.pk, path=relative)


def unflushed_watch_start() -> None:
    """Before a receiver process serves: mark the database server, whose crash the heartbeat
    then watches for (archive.unflushed). A failure is logged: the first look then checks."""
    try:
        unflushed.watch_start()
    except DatabaseError as exc:
        logger.error("Index database not marked: %s", exc)
    finally:
        connection.close()


def unflushed_repair(storage: Storage) -> int:
    """In a receiver process on PostgreSQL, now and then (its heartbeat): forget the new
    instances committed without waiting for the WAL flush that are durable by now; after a
    crash of the database server, index again from its file each of them that the index lost
    (archive.unflushed). Returns how many were indexed again.

    Raises DatabaseError when the database cannot be asked (everything stays remembered).
    """
    if connection.vendor != "postgresql":
        return 0
    unflushed.overflow_report()
    before = unflushed.now()
    with connection.cursor() as cursor:
        cursor.execute(*unflushed.marker_sql())
        if cursor.fetchone() is not None:
            if unflushed.remembered_before(before):
                # A commit that waits, as the server's synchronous_commit says (for its flush,
                # and a synchronous standby's): once it returns, so is everything before it.
                cursor.execute("SELECT txid_current()")
                unflushed.forget_before(before)
            return 0
    # The marker row is gone (crash recovery empties its table) or was never written. A new
    # one first: a crash during the repair must be seen by the next look.
    unflushed.marker_write()
    restored = None
    try:
        restored = _unflushed_reindex(unflushed.remembered(), storage)
    finally:
        if restored is None:  # failed, or the storage did for some: the next look repairs again
            unflushed.marker_forget()
    return restored or 0


def _unflushed_reindex(checked: "list[unflushed.Unflushed]", storage: Storage) -> int | None:
    """Index again those of `checked` the index lost; how many, or None if the storage failed
    for some of them (to be tried again)."""
    uids = [entry.sop_instance_uid for entry in checked]
    indexed: set[str] = set()
    for start in range(0, len(uids), 500):
        indexed.update(
            Instance.objects.filter(sop_instance_uid__in=uids[start : start + 500])
            .values_list("sop_instance_uid", flat=True)
        )  # fmt: skip
    restored = missing = 0
    complete = True
    for entry in checked:
        if entry.sop_instance_uid in indexed:
            continue
        missing += 1
        try:
            instance_index_file(relative=entry.path, storage=storage)
            restored += 1
        except IntegrityError:
            pass  # indexed again meanwhile: a resend
        except DatasetUnreadable as exc:  # its file deleted meanwhile
            logger.error(
                "Instance %s not indexed again from its file: %s", entry.sop_instance_uid, exc
            )
        except StorageFailure as exc:  # perhaps passing: tried again at the next look
            complete = False
            logger.error(
                "Instance %s not indexed again from its file yet: %s", entry.sop_instance_uid, exc
            )
    if missing:
        logger.warning(
            "The index database crashed and lost %d of the %d new instances committed here "
            "without waiting for its WAL flush; %d were indexed again from their files",
            missing,
            len(checked),
            restored,
        )
    elif checked:
        logger.info(
            "The index database crashed (or this process had not marked it): the %d new "
            "instances committed here without waiting for its WAL flush are all indexed",
            len(checked),
        )
    return restored if complete else None
