"""The filesystem backend: durable, atomic files under the storage directory.

A file is first written under `.incoming/<host>.<pid>/` (same file system, so the final rename
is atomic), fsync'd, then renamed to its final name and the directory fsync'd. A crash at any
point leaves either nothing or a complete file under the final name. Each process stages in a
folder of its own, so a starting process can clear what dead processes left without touching
files another live process is writing.
"""

import contextlib
import datetime as dt
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from archive.exceptions import StorageFailure
from archive.storage.base import INCOMING, MARKER, StagedFile, Storage, pid_alive
from archive.storage.dirsync import directory_fsync

logger = logging.getLogger(__name__)

_staging_names = itertools.count()
_KNOWN_DIRS_LIMIT = 10_000


def _failure(action: str, exc: OSError) -> StorageFailure:
    reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
    return StorageFailure(f"cannot {action}: {reason}")


# (pid, storage directory) of every prepare() in this process: before the first, nothing in
# the process's own staging folder is its own.
_prepared: set[tuple[int, str]] = set()


class FilesystemStorage(Storage):
    """The storage directory: staging, publishing and removing instance files."""

    def __init__(self, root: str | Path, *, min_free_bytes: int = 0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.min_free_bytes = min_free_bytes
        self._known_dirs: set[str] = set()
        # resolve() runs for every instance: plain strings are several times cheaper than
        # pathlib here.
        self._root_text = str(self.root)
        self._root_prefix = os.path.join(self._root_text, "")
        self._incoming: tuple[int, Path] | None = None

    def free_bytes(self) -> int:
        """Space available to us on the storage volume."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    @property
    def incoming(self) -> Path:
        # Per process: worker processes forked after construction get their own folder.
        pid = os.getpid()
        if self._incoming is None or self._incoming[0] != pid:
            self._incoming = (pid, self.root / INCOMING / f"{socket.gethostname()}.{pid}")
        return self._incoming[1]

    def prepare(self) -> int:
        """Create the directory, prove it writable and remove stale staging files.

        Returns the number of stale files removed. Raises StorageFailure if the directory cannot
        be created or written.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.incoming.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.incoming):
                pass
        except OSError as exc:
            raise _failure(f"write to storage directory {self.root}", exc) from exc
        return self._remove_stale_staging()

    def _first_prepare(self) -> bool:
        """Whether this is this process's first prepare() of this directory (_prepared)."""
        key = (os.getpid(), self._root_text)
        first = key not in _prepared
        _prepared.add(key)
        return first

    def release(self) -> None:
        """Remove this process's staging folder when nothing is left in it (at shutdown)."""
        # Not empty or already gone: a later start-up clears it.
        with contextlib.suppress(OSError):
            self.incoming.rmdir()

    def _remove_stale_staging(self) -> int:
        removed = 0
        host = socket.gethostname()
        first = self._first_prepare()
        for folder in (self.root / INCOMING).iterdir():
            name, _, pid = folder.name.rpartition(".")
            if name != host or not pid.isdigit():
                continue
            if folder == self.incoming:
                if not first:
                    continue
                # Ours by name before this process staged anything: an earlier process's with
                # the same pid (a container gives its receiver the same pids at every start).
                stale = [entry for entry in folder.rglob("*") if entry.is_file()]
                for entry in stale:
                    entry.unlink(missing_ok=True)
                removed += len(stale)
                continue
            if pid_alive(int(pid)):
                continue
            removed += sum(1 for entry in folder.rglob("*") if entry.is_file())
            shutil.rmtree(folder, ignore_errors=True)
        if removed:
            logger.info("Removed %d partial file(s) left by stopped receivers", removed)
        return removed

    def stage(self, parts: Iterable[bytes]) -> StagedFile:
        """Write `parts` to a new staging file, hashing as it goes, and fsync it.

        Raises StorageFailure before writing anything when free space is below the minimum.
        """
        if self.min_free_bytes:
            try:
                free = self.free_bytes()
            except OSError as exc:
                raise _failure("measure free space", exc) from exc
            if free < self.min_free_bytes:
                raise StorageFailure(
                    f"storage volume has {free // 2**20} MB free, below the minimum of "
                    f"{self.min_free_bytes // 2**20} MB"
                )
        incoming = self.incoming
        # The folder is this process's own: a counter makes names unique without the
        # random-name retries of mkstemp.
        path = incoming / f"{next(_staging_names)}.part"
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # the staging folder was removed under us
                incoming.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise _failure("create a file in the storage directory", exc) from exc
        digest = hashlib.sha256()
        size = 0
        try:
            try:
                # Plain writes: a file object costs more system calls than the writes
                # themselves for a small instance.
                for part in parts:
                    view = memoryview(part)
                    while view:
                        view = view[os.write(fd, view) :]
                    digest.update(part)
                    size += len(part)
                os.fdatasync(fd)  # data and size; the rename is made durable later
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise _failure("write the file", exc) from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedFile(path=path, size=size, sha256=digest.hexdigest())

    def publish(self, staged: StagedFile, relative: str, *, durable: bool = True) -> Path:
        """Give a staged file its final name atomically and durably; return the final path.

        With `durable=False` the new name is not yet flushed to disk: the caller then calls
        `make_durable` before it reports success (outside its index transaction, so that the
        directory fsync does not hold the index's write lock).
        """
        target = self.resolve(relative)
        try:
            self._ensure_directory(target.parent)
            try:
                os.replace(staged.path, target)
            except FileNotFoundError:
                # The folder was removed since we cached it (an admin deleted the series).
                self._known_dirs.discard(str(target.parent))
                self._ensure_directory(target.parent)
                os.replace(staged.path, target)
            staged.published = True
            if durable:
                directory_fsync(target.parent)
        except OSError as exc:
            raise _failure(f"store the file as {relative}", exc) from exc
        return target

    def make_durable(self, published: Path) -> None:
        """Flush the name of a file published with `durable=False` (the path it returned)."""
        try:
            directory_fsync(published.parent)
        except OSError as exc:
            raise _failure(f"make {published.name} durable", exc) from exc

    def discard(self, staged: StagedFile) -> None:
        """Remove a staged file that was not published (once published, its name is not ours)."""
        if not staged.published:
            staged.path.unlink(missing_ok=True)

    def set_aside(self, relative: str) -> Path | None:
        """Keep a second name for a published file, so it can be restored if its replacement
        fails; None if there is no such file."""
        return self._aside(relative, os.link, "previous")

    def move_aside(self, relative: str) -> Path | None:
        """Take a published file away from its name into our staging folder (deletion): if the
        deletion is not committed, `restore` puts it back; None if there is no such file."""
        return self._aside(relative, os.rename, "deleted")

    def _aside(
        self, relative: str, operation: Callable[[Path, Path], None], kind: str
    ) -> Path | None:
        aside = self.incoming / f"{uuid.uuid4().hex}.{kind}"
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
            operation(self.resolve(relative), aside)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _failure(f"set aside {relative}", exc) from exc
        return aside

    def prune_directories(self, relative: str) -> None:
        """Remove the now empty folders that held `relative`, up to the storage directory."""
        folder = self.resolve(relative).parent
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or gone): the folders above it are not empty either
            self._known_dirs.discard(str(folder))
            folder = folder.parent

    def restore(self, aside: Path | None, relative: str) -> None:
        """Put a file kept by `set_aside` back under its name."""
        if aside is None:
            return
        target = self.resolve(relative)
        try:
            self._ensure_directory(target.parent)
            os.replace(aside, target)
            directory_fsync(target.parent)
        except OSError as exc:
            logger.error("Could not restore %s (kept as %s): %s", relative, aside, exc.strerror)

    def drop_aside(self, aside: Path | None) -> None:
        """Forget a file kept by `set_aside` once its replacement is committed."""
        if aside is not None:
            aside.unlink(missing_ok=True)

    def remove(self, relative: str) -> None:
        """Remove a published file (missing is fine) and make the removal durable."""
        target = self.resolve(relative)
        try:
            target.unlink(missing_ok=True)
            directory_fsync(target.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("Could not remove %s: %s", relative, exc.strerror)

    def open(self, relative: str) -> BinaryIO:
        """Open a stored file for reading, as a binary stream the caller closes.

        Every reader of stored instances (downloads, previews, retrieval, verification) goes
        through here rather than building paths, so that another backend can serve them.
        Raises FileNotFoundError for a missing file and StorageFailure for a path outside the
        storage directory.
        """
        return open(self._target(relative), "rb")

    def local_path(self, relative: str) -> Path:
        """A local file holding the stored instance, for senders that stream a file by its
        path (pynetdicom's C-STORE). A remote backend would return a cached local copy."""
        return self.resolve(relative)

    def size(self, relative: str) -> int:
        """The size in bytes of a stored file; FileNotFoundError when it is missing."""
        return os.stat(self._target(relative)).st_size

    def exists(self, relative: str) -> bool:
        """Whether a stored file is present."""
        return os.path.isfile(self._target(relative))

    def marker_read(self) -> dict | None:
        """The identity marker of this storage directory; None if it has none (or an unreadable
        one, which counts as none: the index then decides, see archive.storage_identity)."""
        try:
            marker = json.loads((self.root / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) and "identity" in marker else None

    def marker_write(self, marker: dict) -> None:
        """Write the identity marker durably (atomically replacing any previous one)."""
        staging = self.root / f"{MARKER}.{os.getpid()}.tmp"
        try:
            staging.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
            with open(staging, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(staging, self.root / MARKER)
            directory_fsync(self.root)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            raise _failure(f"write {MARKER} in {self.root}", exc) from exc

    def modified(self, relative: str) -> dt.datetime:
        """When the stored file was last written (UTC); FileNotFoundError when missing."""
        return dt.datetime.fromtimestamp(os.stat(self.resolve(relative)).st_mtime, tz=dt.UTC)

    def names(self) -> Iterator[str]:
        """Every stored file's relative name, staging excluded, sorted."""
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if relative.parts[0] not in (INCOMING, MARKER) and path.is_file():
                yield relative.as_posix()

    @property
    def location(self) -> str:
        return self._root_text

    def resolve(self, relative: str) -> Path:
        """The absolute path of `relative`, refusing anything that leaves the storage directory."""
        return Path(self._target(relative))

    def _target(self, relative: str) -> str:
        """`resolve` as text, for the readers that run per instance of a retrieval (open, size):
        a Path built and turned back into text cost more than the system calls."""
        target = os.path.normpath(os.path.join(self._root_text, relative))
        prefix = self._root_prefix
        if not target.startswith(prefix) or target[len(prefix) :].partition(os.sep)[0] in (
            "",
            INCOMING,
            MARKER,
        ):
            raise StorageFailure(f"refusing path outside the storage directory: {relative!r}")
        return target

    def _ensure_directory(self, directory: Path) -> None:
        key = str(directory)
        if key in self._known_dirs:
            return
        missing: list[Path] = []
        probe = directory
        while probe != self.root and not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # another association created it first; its creator made it durable
            directory_fsync(folder.parent)
        if len(self._known_dirs) >= _KNOWN_DIRS_LIMIT:
            self._known_dirs.clear()
        self._known_dirs.add(key)
