"""The interface every storage backend offers, and the parts they share."""

import datetime as dt
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

INCOMING = ".incoming"
# The storage's identity, which the index records (archive.storage_identity).
MARKER = ".pacs-storage.json"
S3_SCHEME = "s3://"

# What `set_aside`/`move_aside` return and `restore`/`drop_aside` take back: a path on the
# file system, an object key in a bucket; None when there was nothing to set aside.
Aside = Any


def is_object_store(location: str | Path) -> bool:
    """Whether a storage location names a bucket (`s3://BUCKET/PREFIX`) rather than a directory."""
    return str(location).startswith(S3_SCHEME)


@dataclass
class StagedFile:
    """A complete dataset waiting for its final name (or object): an fsync'd file on local
    disk, or (`data`, a backend that uploads small instances from memory) its bytes."""

    path: Path | None
    size: int
    sha256: str
    published: bool = False
    data: bytes | None = None


class Storage:
    """Staging, publishing, reading and removing instance files.

    `Storage(location, ...)` builds the backend that serves `location`; the subclasses
    implement every method below. Relative names use '/' separators and never leave the
    storage (a name that would raises StorageFailure); reads of a missing file raise
    FileNotFoundError; other failures raise StorageFailure.
    """

    def __new__(cls, location: str | Path = "", **options: Any) -> "Storage":
        if cls is Storage:
            if is_object_store(location):
                from archive.storage.s3 import S3Storage

                cls = S3Storage
            else:
                from archive.storage.filesystem import FilesystemStorage

                cls = FilesystemStorage
        return super().__new__(cls)

    # Whether `publish` sends the file over the network (an upload: long for a large file),
    # rather than renaming it: ingest then publishes before its index transaction where the
    # index admits one writer at a time (archive.services).
    uploads: bool = False
    # Where the receiver spools large datasets while they arrive: always local disk.
    incoming: Path
    min_free_bytes: int

    @property
    def location(self) -> str:
        """The configured location, as an administrator would write it."""
        raise NotImplementedError

    def prepare(self) -> int:
        """Check that the storage can be written, create what is missing and remove what dead
        processes of this host left in staging; returns the number of stale files removed."""
        raise NotImplementedError

    def release(self) -> None:
        """Give back this process's staging area at shutdown."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        """Space left for instances, None where the backend has no such limit."""
        raise NotImplementedError

    def stage(self, parts: Iterable[bytes]) -> StagedFile:
        raise NotImplementedError

    def publish(self, staged: StagedFile, relative: str, *, durable: bool = True) -> Any:
        raise NotImplementedError

    def make_durable(self, published: Any) -> None:
        raise NotImplementedError

    def discard(self, staged: StagedFile) -> None:
        raise NotImplementedError

    def set_aside(self, relative: str) -> Aside:
        raise NotImplementedError

    def move_aside(self, relative: str) -> Aside:
        raise NotImplementedError

    def restore(self, aside: Aside, relative: str) -> None:
        raise NotImplementedError

    def drop_aside(self, aside: Aside) -> None:
        raise NotImplementedError

    def prune_directories(self, relative: str) -> None:
        raise NotImplementedError

    def remove(self, relative: str) -> None:
        raise NotImplementedError

    def open(self, relative: str) -> BinaryIO:
        raise NotImplementedError

    def size(self, relative: str) -> int:
        raise NotImplementedError

    def exists(self, relative: str) -> bool:
        raise NotImplementedError

    def modified(self, relative: str) -> dt.datetime:
        """When the stored file was last written (UTC); FileNotFoundError when missing."""
        raise NotImplementedError

    def local_path(self, relative: str) -> Path | None:
        """A local file holding the stored instance, for senders that stream a file by its
        path; None where the backend keeps no local copy (read it with `open` instead)."""
        return None

    def marker_read(self) -> dict | None:
        """The storage's identity marker; None if it has none (or an unreadable one, which
        counts as none: the index then decides, see archive.storage_identity)."""
        raise NotImplementedError

    def marker_write(self, marker: dict) -> None:
        """Write the identity marker durably, replacing any previous one."""
        raise NotImplementedError

    def names(self) -> Iterator[str]:
        """Every stored file's relative name (not the staging area), in sorted order."""
        raise NotImplementedError


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has that pid and is still running.

    A zombie is not: a receiver's worker killed with its parent stays one until PID 1 reaps it,
    and in a container PID 1 is often a process that never does.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows
            # the last ")".
            state = stat.read().rpartition(b")")[2].split()[:1]
    except FileNotFoundError:
        # Gone since kill(), or no /proc at all (not Linux): then kill() is all there is.
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
    return state not in ([b"Z"], [b"X"])
