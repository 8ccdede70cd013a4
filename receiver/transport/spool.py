"""Receive C-STORE datasets into memory when small and into a file when large.

pynetdicom collects an incoming dataset in a BytesIO, so a 1 GB instance costs 1 GB of memory
(and more when copied out); its STORE_RECV_CHUNKED_DATASET switch sends every dataset, however
small, through a temporary file flushed at each fragment, which slows the common small
instance. Here the dataset goes to a `SpoolBuffer`: a BytesIO up to a threshold, then an
unnamed file in the storage directory's staging area (same file system, gone if we crash).

This reaches into pynetdicom: incoming messages are typed through
`pynetdicom.dimse_messages._MESSAGE_TYPES`, and `DIMSEMessage.decode_msg` writes fragments to
`self.data_set`, which the C-STORE primitive insists is a BytesIO. We register a C-STORE-RQ
class whose `data_set` is a SpoolBuffer. Outgoing messages (pynetdicom.dimse) do not use that
table and are unaffected. tests/receiver/test_spool.py checks it against the pinned version.
"""

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import dimse_messages

SPOOL_THRESHOLD = 8 * 2**20


class SpoolBuffer(io.BytesIO):
    """A BytesIO that moves its content to a file once it grows past `threshold` bytes."""

    def __init__(self, threshold: int, directory: Callable[[], Path]) -> None:
        super().__init__()
        self._threshold = threshold
        self._directory = directory
        self._file: BinaryIO | None = None

    @property
    def rolled(self) -> bool:
        return self._file is not None

    def write(self, data: Any) -> int:
        if self._file is None and io.BytesIO.tell(self) + len(data) > self._threshold:
            folder = self._directory()
            folder.mkdir(parents=True, exist_ok=True)
            # Closed with this buffer by the C-STORE handler.
            self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115
            self._file.write(io.BytesIO.getvalue(self))
            io.BytesIO.seek(self, 0)
            io.BytesIO.truncate(self)
        if self._file is not None:
            return self._file.write(data)
        return io.BytesIO.write(self, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._file is not None:
            return self._file.seek(offset, whence)
        return io.BytesIO.seek(self, offset, whence)

    def tell(self) -> int:
        return self._file.tell() if self._file is not None else io.BytesIO.tell(self)

    def read(self, size: int | None = -1) -> bytes:
        if self._file is not None:
            return self._file.read(size)
        return io.BytesIO.read(self, size)

    def getvalue(self) -> bytes:
        if self._file is not None:
            raise ValueError("the dataset was spooled to disk; read it in chunks")
        return io.BytesIO.getvalue(self)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        io.BytesIO.close(self)

    def payload(self) -> bytes | BinaryIO:
        """The dataset: bytes while in memory, else this buffer to be read in chunks."""
        return self if self._file is not None else io.BytesIO.getvalue(self)


_settings: tuple[int, Callable[[], Path]] | None = None


def new_buffer() -> SpoolBuffer:
    """A buffer for one received dataset (receiver.transport.fastpath), as `install` set up."""
    if _settings is None:
        raise RuntimeError("receiver.transport.install() has not been called")
    return SpoolBuffer(*_settings)


def install(directory: Callable[[], Path], threshold: int = SPOOL_THRESHOLD) -> None:
    """Make received C-STORE datasets larger than `threshold` spool to a file in `directory()`."""
    global _settings
    _settings = (threshold, directory)

    def _get(self: Any) -> Any:
        buffer = self.__dict__.get("_spool")
        if buffer is None:
            buffer = self.__dict__["_spool"] = new_buffer()
        return buffer

    def _set(self: Any, value: Any) -> None:
        self.__dict__["_spool"] = value

    # pynetdicom finds the primitive for a message by its class name: keep "C_STORE_RQ".
    spooling = type(
        "C_STORE_RQ",
        (dimse_messages.C_STORE_RQ,),
        {"data_set": property(_get, _set), "__module__": __name__},
    )
    dimse_messages._MESSAGE_TYPES[0x0001] = ("C-STORE-RQ", spooling)
