"""STOW-RS (PS3.18 10.5): each application/dicom part of a multipart/related body goes through
the archive's ingest service (archive.services.instance_store) exactly as a C-STORE does:
durable file and committed index row before success, the duplicate policy, the statistics."""

import dataclasses
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from django.conf import settings
from pydicom.filereader import _read_file_meta_info

from archive.exceptions import (
    DatasetMismatch,
    DatasetUnreadable,
    DuplicateRejected,
    IndexFailure,
    IngestError,
    StorageFailure,
)
from archive.header import HEADER_PREFIX, header_read
from archive.part10 import FileMeta, file_meta_scan
from archive.services import IngestSettings, instance_store
from archive.storage import Storage
from dicomweb.accept import media_type_parse
from dicomweb.multipart import Part, parts_read

logger = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-2 / PS3.4 B.2.3: FailureReason (0008,1197).
PROCESSING_FAILURE = 0x0110
DUPLICATE = 0x0111
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_NOT_SUPPORTED = 0x0122
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC122  # the instance is not of the study the URL names

_REASON_FOR: dict[type[IngestError], int] = {
    DatasetUnreadable: CANNOT_UNDERSTAND,
    DatasetMismatch: DATASET_MISMATCH,
    StorageFailure: OUT_OF_RESOURCES,
    IndexFailure: OUT_OF_RESOURCES,
    DuplicateRejected: DUPLICATE,
}


@dataclass
class StowOutcome:
    stored: list[dict[str, str]] = field(default_factory=list)  # class, instance, study
    failed: list[dict[str, Any]] = field(default_factory=list)  # class, instance, reason, why
    warnings: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)


def sop_class_filter() -> Callable[[str], str | None]:
    """Why a SOP class would be refused (None: accepted), by the same decision as a C-STORE
    association's (receiver.access: accepted_sop_classes of the configuration and the admin's
    SOP class rules); the AE title checks do not apply to HTTP users."""
    # The receiver's access decision, the one place that policy is written.
    from receiver.access import access_rules_load, association_decide
    from receiver.config import resolve
    from receiver.sop_classes import storage_sop_classes

    config = dataclasses.replace(
        resolve({}, settings.DICOM_CONFIG), require_known_ae=False, require_called_ae_title=False
    )
    rules = access_rules_load()
    storage = {str(uid) for uid in storage_sop_classes()}

    def refusal(sop_class: str) -> str | None:
        decision = association_decide(
            config=config,
            rules=rules,
            calling_ae="",
            called_ae="",
            address="",
            proposed=[sop_class],
            served=storage,
            storage_classes=storage,
        )
        return decision.refused[0].why if decision.refused else None

    return refusal


def ingest_settings() -> IngestSettings:
    """The same storage directory and duplicate policy as the receiver's."""
    return IngestSettings(
        storage=Storage(settings.DICOM_STORAGE_DIR), duplicates=settings.DICOM_DUPLICATES
    )


# Bytes read for the file meta group: preamble and group, a few hundred bytes as a rule.
_META_READ = 4096


class _Window(io.RawIOBase):
    """A read-only view of `stream` from `start`: the dataset after a Part 10 file meta
    group, for instance_store, which reads its dataset from offset 0."""

    def __init__(self, stream: BinaryIO, start: int) -> None:
        self.stream, self.start = stream, start
        self.stream.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            return self.stream.seek(self.start + offset) - self.start
        return self.stream.seek(offset, whence) - self.start

    def tell(self) -> int:
        return self.stream.tell() - self.start

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def file_meta_read(body: BinaryIO) -> FileMeta:
    """The part's file meta group (read by hand, or by pydicom when unusual) and where its
    dataset starts. Raises DatasetUnreadable."""
    body.seek(0)
    data = body.read(_META_READ)
    if data[128:132] != b"DICM":
        raise DatasetUnreadable("not a DICOM Part 10 file (no DICM prefix)")
    meta = file_meta_scan(data)
    if meta is None:
        body.seek(132)
        try:
            group = _read_file_meta_info(body)
        except Exception as exc:
            raise DatasetUnreadable(f"unreadable file meta group: {exc}") from None
        meta = FileMeta(
            transfer_syntax_uid=str(group.get("TransferSyntaxUID", "") or "").strip("\0 "),
            sop_class_uid=str(group.get("MediaStorageSOPClassUID", "") or "").strip("\0 "),
            sop_instance_uid=str(group.get("MediaStorageSOPInstanceUID", "") or "").strip("\0 "),
            dataset_offset=body.tell(),
        )
    for name, keyword in (
        (meta.transfer_syntax_uid, "TransferSyntaxUID"),
        (meta.sop_class_uid, "MediaStorageSOPClassUID"),
        (meta.sop_instance_uid, "MediaStorageSOPInstanceUID"),
    ):
        if not name:
            raise DatasetUnreadable(f"the file meta group lacks {keyword}")
    return meta


def stow_store(
    *, body: BinaryIO, boundary: str, study_uid: str | None, address: str
) -> StowOutcome:
    """Store every part of the body. Raises MultipartError when the body itself is malformed
    (parts before the error stay stored: each was complete and is acknowledged nowhere else,
    so the caller answers 400 listing nothing)."""
    ingest = ingest_settings()
    refusal = sop_class_filter()
    outcome = StowOutcome()
    for part in parts_read(body, boundary):
        try:
            _part_store(part, ingest, study_uid, address, outcome, refusal)
        finally:
            part.body.close()
    return outcome


def _part_store(
    part: Part,
    ingest: IngestSettings,
    study_uid: str | None,
    address: str,
    outcome: StowOutcome,
    refusal: Callable[[str], str | None] | None = None,
) -> None:
    kind = media_type_parse(part.content_type).type if part.content_type else "application/dicom"
    if kind != "application/dicom":
        outcome.failed.append(_failure("", "", SOP_CLASS_NOT_SUPPORTED, f"a {kind} part"))
        return
    file_store(
        part.body,
        ingest=ingest,
        study_uid=study_uid,
        address=address,
        outcome=outcome,
        refusal=refusal,
    )


def file_store(
    body: BinaryIO,
    *,
    ingest: IngestSettings,
    study_uid: str | None,
    address: str,
    outcome: StowOutcome,
    refusal: Callable[[str], str | None] | None = None,
) -> None:
    """Store one Part 10 file (STOW-RS part or uploaded file), adding its result to
    `outcome`."""
    part = Part({}, body, 0)
    try:
        meta = file_meta_read(part.body)
    except DatasetUnreadable as exc:
        outcome.failed.append(_failure("", "", CANNOT_UNDERSTAND, str(exc)))
        return
    sop_class, sop_instance = meta.sop_class_uid, meta.sop_instance_uid
    syntax, start = meta.transfer_syntax_uid, meta.dataset_offset
    why = refusal(sop_class) if refusal is not None else None
    if why is not None:
        outcome.failed.append(_failure(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED, why))
        return
    dataset = _Window(part.body, start)
    if study_uid is not None:
        try:
            header = header_read(_prefix(dataset), syntax, strict_uids=False)
        except IngestError as exc:
            outcome.failed.append(_failure(sop_class, sop_instance, CANNOT_UNDERSTAND, str(exc)))
            return
        if header.study_instance_uid != study_uid:
            why = f"the instance belongs to study {header.study_instance_uid}, not {study_uid}"
            outcome.failed.append(_failure(sop_class, sop_instance, STUDY_UID_MISMATCH, why))
            return
    try:
        result = instance_store(
            dataset=dataset,  # type: ignore[arg-type]
            transfer_syntax_uid=syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            calling_ae_title="",
            remote_address=address,
            settings=ingest,
        )
    except IngestError as exc:
        reason = _REASON_FOR.get(type(exc), PROCESSING_FAILURE)
        logger.warning(
            "STOW-RS of %s from %s refused (0x%04X): %s", sop_instance, address, reason, exc
        )
        outcome.failed.append(_failure(sop_class, sop_instance, reason, str(exc)))
        return
    except Exception:
        logger.exception("STOW-RS of %s from %s failed unexpectedly", sop_instance, address)
        outcome.failed.append(
            _failure(sop_class, sop_instance, PROCESSING_FAILURE, "internal error")
        )
        return
    outcome.stored.append(
        {"class": sop_class, "instance": sop_instance, "study": result.study_instance_uid}
    )
    outcome.studies.add(result.study_instance_uid)


def _prefix(dataset: BinaryIO) -> bytes:
    dataset.seek(0)
    return dataset.read(HEADER_PREFIX)


def _failure(sop_class: str, sop_instance: str, reason: int, why: str) -> dict[str, Any]:
    return {"class": sop_class, "instance": sop_instance, "reason": reason, "why": why}
