"""Which storage directory the index describes.

At its first start a receiver writes a marker with a new identity into the storage directory
(`.pacs-storage.json`) and records identity and location in the index (StorageLocation). Later
starts compare: a storage directory that is not the index's refuses the start, with one line
saying which index, which storage and how to proceed, instead of indexing new files in one place
while the existing rows point at another. `verifystorage --relocate NEW_DIR` checks that the
files are all in NEW_DIR, then records the move.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from archive.exceptions import StorageFailure, StorageMismatch
from archive.models import Instance, StorageLocation
from archive.storage import Storage
from archive.verification import VerificationReport, storage_verify

logger = logging.getLogger(__name__)

# An index older than the identity record is checked by looking for its newest files.
_SAMPLE = 20
_RELOCATE = "python manage.py verifystorage --relocate"


@dataclass(frozen=True)
class IdentityState:
    """What the index and the storage directory say about each other."""

    location: StorageLocation | None
    marker: str | None
    instances: int  # 0 or 1: whether the index holds any


def storage_identity_state(storage: Storage) -> IdentityState:
    """Read both sides, without changing anything."""
    marker = storage.marker_read()
    return IdentityState(
        location=StorageLocation.objects.order_by("pk").first(),
        marker=str(marker["identity"]) if marker else None,
        # Only whether there are any: counting a large index would slow every start.
        instances=int(Instance.objects.exists()),
    )


def storage_identity_problem(storage: Storage) -> str | None:
    """Why `storage` is not the index's storage (for verifystorage), or None if it is or may be."""
    state = storage_identity_state(storage)
    location = state.location
    if location is None or not state.instances or state.marker == str(location.identity):
        return None
    return (
        f"storage {storage.location} is not the storage this index describes "
        f"({location.directory}, identity {location.identity})"
    )


def storage_identity_bind(*, storage: Storage, index_label: str) -> str:
    """Make sure `storage` is the directory the index describes, record it, and return one line
    for the log saying what was found.

    An empty index takes any storage. Raises StorageMismatch when a non-empty index describes
    another directory (one line: which index, which storage, how to proceed), StorageFailure
    when the marker cannot be written.
    """
    state = storage_identity_state(storage)
    root = str(storage.location)
    location, marker = state.location, state.marker
    if location is not None and marker == str(location.identity):
        if location.directory != root:
            _record(location.identity, root)
            return f"storage {root} is the index's storage, moved from {location.directory}"
        return f"storage {root} is the index's storage"
    if state.instances and location is not None:
        why = (
            "has another index's marker"
            if marker is not None
            else f"has no marker of this index (identity {location.identity})"
        )
        raise StorageMismatch(
            f"index {index_label} describes storage {location.directory} "
            f"({_instances(Instance.objects.count())}), but storage {root} {why}: set "
            f"storage.directory back to {location.directory}, or move the files to {root} and "
            f"run `{_RELOCATE} {root}`"
        )
    if state.instances and not _sample_present(storage):
        raise StorageMismatch(
            f"index {index_label} holds {_instances(Instance.objects.count())}, but none of its "
            f"newest files is in storage {root}: set storage.directory to where they are, or "
            f"move them to {root} and run `{_RELOCATE} {root}`"
        )
    identity = uuid.UUID(marker) if marker is not None else uuid.uuid4()
    if marker is None:
        storage.marker_write(_marker(identity))
    _record(identity, root)
    return f"storage {root} recorded as the storage of index {index_label}"


def storage_relocate(
    *,
    storage: Storage,
    check_hashes: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerificationReport:
    """Check that every indexed file is in `storage` (size, and SHA-256 unless told not to),
    then record `storage` as the index's storage and write its marker.

    Raises StorageMismatch (nothing recorded) when files are missing or differ; orphan files are
    only reported.
    """
    report = storage_verify(storage, check_hashes=check_hashes, progress=progress)
    problems = (
        len(report.missing)
        + len(report.size_mismatch)
        + len(report.hash_mismatch)
        + len(report.unreadable)
    )
    if problems:
        refused = StorageMismatch(
            f"not relocated: {problems} of {report.checked} indexed files are missing or "
            f"differ in {storage.location}"
        )
        refused.report = report  # type: ignore[attr-defined]  # which files, for the command
        raise refused
    location = StorageLocation.objects.order_by("pk").first()
    identity = location.identity if location is not None else uuid.uuid4()
    storage.marker_write(_marker(identity))
    _record(identity, str(storage.location))
    return report


def _record(identity: uuid.UUID, directory: str) -> None:
    with transaction.atomic():
        StorageLocation.objects.exclude(identity=identity).delete()
        StorageLocation.objects.update_or_create(
            identity=identity, defaults={"directory": directory, "recorded_at": timezone.now()}
        )
    logger.debug("Index records storage %s (identity %s)", directory, identity)


def _marker(identity: uuid.UUID) -> dict:
    return {
        "identity": str(identity),
        "written_at": timezone.now().isoformat(timespec="seconds"),
        "note": "Identity of this storage directory, recorded in its index; do not copy it "
        "into another storage directory.",
    }


def _sample_present(storage: Storage) -> bool:
    paths = Instance.objects.order_by("-pk").values_list("path", flat=True)[:_SAMPLE]
    for path in paths:
        try:
            if storage.exists(path):
                return True
        except StorageFailure:  # a path outside the storage directory: not present
            continue
    return False


def _instances(count: int) -> str:
    return f"{count} instance{'' if count == 1 else 's'}"
