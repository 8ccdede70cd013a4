"""Reading stored files for the web pages and checks with bounded memory, whatever the file claims.

A stored file is at most as large as what was received, but two things in it can claim far
more: a deflated dataset (0.5 MB inflating to 512 MiB) and a compressed frame whose codestream
declares a huge image (1 kB declaring 8192x8192). Everything here inflates at most a given
number of bytes and reads the image size a codestream declares before anything decodes it.
"""

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID

MiB = 2**20
# What a header (everything before the pixel data) may inflate to: 16 MiB, as much as the
# receiver reads of any dataset for its index (archive.header.HEADER_PREFIX).
HEADER_INFLATE_LIMIT = 16 * MiB
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


class InflateLimitExceeded(Exception):
    """A deflated dataset inflates to more than allowed."""


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """A path opened for reading, or a seekable file (what `Storage.open` returns) rewound to
    its start and left open for its owner."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            yield fh
    else:
        source.seek(0)
        yield source


def inflate_bounded(data: bytes, limit: int) -> tuple[bytes, bool]:
    """Inflate raw deflate `data` (no zlib header, PS3.5 A.5) to at most `limit` bytes.

    Returns (inflated bytes, whether that is the whole stream). A stream cut short (the start of
    a larger dataset) is not an error; raises zlib.error if the data is not deflate at all.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(data, limit)
    complete = not inflater.unconsumed_tail and not inflater.decompress(b"", 1)
    return inflated, complete


@dataclass
class FileHeader:
    """A stored file's file meta group and dataset up to its pixel data."""

    dataset: Dataset
    # The dataset was cut short: its deflated data inflates beyond the limit.
    truncated: bool = False


def file_header_read(
    path: Path | BinaryIO, *, inflate_limit: int = HEADER_INFLATE_LIMIT
) -> FileHeader:
    """The file's meta group and dataset before its pixel data, never inflating more than
    `inflate_limit` bytes. Raises ValueError if the file cannot be read as DICOM, OSError."""
    with _opened(path) as fh:
        meta, syntax = _meta_read(fh)
        if not syntax.is_deflated:
            dataset = _dataset_read(fh, syntax, stop_before_pixels=True)
            dataset.file_meta = meta
            return FileHeader(dataset)
        inflated, complete = _inflate(fh.read(), inflate_limit)
    cut: list[bool] = []
    dataset = _dataset_read(
        io.BytesIO(inflated), syntax, stop_before_pixels=True, available=len(inflated), cut=cut
    )
    dataset.file_meta = meta
    # Cut short only if the inflate limit came before the pixel data.
    return FileHeader(dataset, truncated=not complete and bool(cut))


def deflated_dataset_read(path: Path | BinaryIO, *, limit: int) -> Dataset:
    """The whole dataset of a deflated file, pixel data included, as explicit VR little endian;
    raises InflateLimitExceeded if it inflates to more than `limit` bytes."""
    with _opened(path) as fh:
        meta, syntax = _meta_read(fh)
        inflated, complete = _inflate(fh.read(), limit)
    if not complete:
        raise InflateLimitExceeded(f"the deflated dataset inflates to more than {limit // MiB} MiB")
    dataset = _dataset_read(io.BytesIO(inflated), syntax, stop_before_pixels=False)
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")  # what it is once inflated
    dataset.file_meta = meta
    return dataset


def _inflate(data: bytes, limit: int) -> tuple[bytes, bool]:
    try:
        return inflate_bounded(data, limit)
    except zlib.error as exc:
        raise ValueError(f"deflated dataset does not inflate: {exc}") from None


def _meta_read(fh: BinaryIO) -> tuple[FileMetaDataset, UID]:
    try:
        read_preamble(fh, False)
        meta = read_dataset(
            fh,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != 2,
        )
    except Exception as exc:  # pydicom's many errors on a damaged file
        raise ValueError(f"not a DICOM Part 10 file: {exc}") from None
    syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    if not syntax:
        raise ValueError("the file meta group names no transfer syntax")
    return FileMetaDataset(meta), syntax


def _dataset_read(
    fh: BinaryIO,
    syntax: UID,
    *,
    stop_before_pixels: bool,
    available: int | None = None,
    cut: list[bool] | None = None,
) -> Dataset:
    """Read elements from `fh`; stop before the pixel data if asked, and before an element
    whose value runs past `available` bytes (a truncated inflate), noting that in `cut`."""

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        if stop_before_pixels and tag == _PIXEL_DATA:
            return True
        if available is not None and length != _UNDEFINED and fh.tell() + length > available:
            if cut is not None:
                cut.append(True)
            return True
        return False

    try:
        return read_dataset(
            fh,
            is_implicit_VR=syntax.is_implicit_VR,
            is_little_endian=syntax.is_little_endian,
            stop_when=stop,
        )
    except Exception as exc:
        raise ValueError(f"dataset cannot be parsed: {exc}") from None


@dataclass(frozen=True)
class DeclaredImage:
    """The image a compressed frame's codestream says it holds."""

    rows: int
    columns: int
    samples: int
    bits: int


def encapsulated_frames_declared(
    path: Path | BinaryIO, *, max_fragments: int = 100_000
) -> list[DeclaredImage]:
    """What the codestreams of an encapsulated file's fragments declare (JPEG SOF, JPEG-LS SOF55,
    JPEG 2000 / HTJ2K SIZ), read from their headers without decoding. Fragments that do not
    start a codestream are skipped."""
    declared: list[DeclaredImage] = []
    with _opened(path) as fh:
        _meta, syntax = _meta_read(fh)
        _dataset_read(fh, syntax, stop_before_pixels=True)
        head = fh.read(12)
        if len(head) < 12:
            return declared
        group, element, _vr, length = struct.unpack("<HH2s2xL", head)
        if (group << 16 | element) != _PIXEL_DATA or length != _UNDEFINED:
            return declared
        first = True
        for _ in range(max_fragments):
            item = fh.read(8)
            if len(item) < 8:
                break
            group, element, length = struct.unpack("<HHL", item)
            if (group, element) != (0xFFFE, 0xE000):
                break  # the sequence delimiter, or damage: either way the end
            start = fh.tell()
            if not first and length:  # the first item is the basic offset table
                image = _codestream_declared(fh, length)
                if image is not None:
                    declared.append(image)
            first = False
            fh.seek(start + length)
    return declared


def _codestream_declared(fh: BinaryIO, length: int) -> DeclaredImage | None:
    marker = fh.read(2)
    if marker == b"\xff\x4f":  # JPEG 2000 SOC, then SIZ
        siz = fh.read(2 + 2 + 2 + 8 * 4 + 2)
        if len(siz) < 40 or siz[:2] != b"\xff\x51":
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", siz, 6)
        (components,) = struct.unpack_from(">H", siz, 38)
        precision = fh.read(1)
        bits = ((precision[0] & 0x7F) + 1) if precision else 16
        return DeclaredImage(max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components, bits)
    if marker == b"\xff\xd8":  # JPEG / JPEG-LS SOI: walk the marker segments to the SOF
        read = 2
        while read + 4 <= length:
            segment = fh.read(4)
            read += 4
            if len(segment) < 4 or segment[0] != 0xFF:
                return None
            code = segment[1]
            (size,) = struct.unpack(">H", segment[2:])
            if code in _SOF_MARKERS:
                sof = fh.read(6)
                if len(sof) < 6:
                    return None
                bits, rows, columns, components = struct.unpack(">BHHB", sof)
                return DeclaredImage(rows, columns, components, bits)
            if code == 0xDA or size < 2:  # start of scan before any frame header
                return None
            fh.seek(size - 2, io.SEEK_CUR)
            read += size - 2
    return None


# SOF0-3, 5-7, 9-11, 13-15 (JPEG, PS3.5 A.4.1) and SOF55 (JPEG-LS).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
