"""Compare the index with the storage (directory or bucket): missing files, orphans, size and
hash errors.

Used by `manage.py verifystorage`. Reads every indexed file once (hashing it) unless asked for
a quick check of existence and size only.
"""

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import IntegrityError

from archive.exceptions import DatasetUnreadable, StorageFailure
from archive.models import Instance
from archive.services import instance_index_file
from archive.storage import Storage

logger = logging.getLogger(__name__)

_CHUNK = 2**20


@dataclass
class VerificationReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    hash_mismatch: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    indexed_orphans: list[str] = field(default_factory=list)
    unindexable_orphans: list[str] = field(default_factory=list)
    removed_rows: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """Whether index and files agree now (after any repair)."""
        unrepaired_missing = set(self.missing) - set(self.removed_rows)
        unrepaired_orphans = set(self.orphans) - set(self.indexed_orphans)
        return not (
            unrepaired_missing
            or unrepaired_orphans
            or self.size_mismatch
            or self.hash_mismatch
            or self.unreadable
        )

    def summary(self) -> str:
        lines = [
            f"indexed instances checked: {self.checked}",
            f"missing files:             {len(self.missing)}",
            f"size mismatches:           {len(self.size_mismatch)}",
            f"hash mismatches:           {len(self.hash_mismatch)}",
            f"unreadable files:          {len(self.unreadable)}",
            f"orphan files (not indexed): {len(self.orphans)}",
        ]
        if self.indexed_orphans or self.unindexable_orphans or self.removed_rows:
            lines += [
                f"orphans indexed:           {len(self.indexed_orphans)}",
                f"orphans not DICOM:         {len(self.unindexable_orphans)}",
                f"rows of missing files removed: {len(self.removed_rows)}",
            ]
        lines.append("consistent" if self.consistent else "NOT consistent")
        return "\n".join(lines)


def storage_verify(
    storage: Storage,
    *,
    check_hashes: bool = True,
    repair: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerificationReport:
    """Check every index row against its file and every file against the index.

    With `repair`, orphan files that are valid DICOM are indexed where they lie, and rows whose
    file is gone are removed; mismatching or unreadable files are only reported.
    """
    report = VerificationReport()
    total = Instance.objects.count()
    indexed: set[str] = set()
    rows = Instance.objects.values_list("id", "path", "size", "sha256").order_by("id")
    for row_id, relative, size, sha256 in rows.iterator(chunk_size=2000):
        indexed.add(relative)
        report.checked += 1
        if progress:
            progress(report.checked, total)
        problem = _check_file(storage, relative, size, sha256, check_hashes)
        if problem is not None:
            getattr(report, problem).append(relative)
            if problem == "missing" and repair:
                Instance.objects.filter(id=row_id).delete()
                report.removed_rows.append(relative)
                logger.warning("Removed the index row of missing file %s", relative)

    for relative in storage.names():
        if relative in indexed:
            continue
        report.orphans.append(relative)
        if repair:
            try:
                instance_index_file(relative=relative, storage=storage)
                report.indexed_orphans.append(relative)
            except (DatasetUnreadable, IntegrityError, StorageFailure) as exc:
                report.unindexable_orphans.append(relative)
                logger.warning("Orphan %s not indexed: %s", relative, exc)
    return report


def _check_file(
    storage: Storage, relative: str, size: int, sha256: str, check_hashes: bool
) -> str | None:
    try:
        if check_hashes:
            # One read gives existence, size and hash (one request, on a bucket).
            digest = hashlib.sha256()
            stored = 0
            with storage.open(relative) as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    stored += len(chunk)
            if stored != size:
                return "size_mismatch"
            if digest.hexdigest() != sha256:
                return "hash_mismatch"
        elif storage.size(relative) != size:
            return "size_mismatch"
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "missing"
    except OSError:
        return "unreadable"
    except Exception:  # a path the storage refuses (outside the directory) counts as unreadable
        return "unreadable"
    return None
