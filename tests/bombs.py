"""Hostile files built in code: small on the wire, huge once decoded ("decompression bombs")."""

import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

MiB = 2**20


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sxxL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _image_elements(uids: dict[str, str], side: int, modality: str = "CT") -> bytes:
    return b"".join(
        [
            _element(0x00080016, b"UI", CTImageStorage.encode()),
            _element(0x00080018, b"UI", uids["sop"].encode()),
            _element(0x00080060, b"CS", modality.encode()),
            _element(0x00100020, b"LO", b"BOMB"),
            _element(0x0020000D, b"UI", uids["study"].encode()),
            _element(0x0020000E, b"UI", uids["series"].encode()),
            _element(0x00280002, b"US", struct.pack("<H", 1)),
            _element(0x00280004, b"CS", b"MONOCHROME2"),
            _element(0x00280010, b"US", struct.pack("<H", side)),
            _element(0x00280011, b"US", struct.pack("<H", side)),
            _element(0x00280100, b"US", struct.pack("<H", 16)),
            _element(0x00280101, b"US", struct.pack("<H", 16)),
            _element(0x00280102, b"US", struct.pack("<H", 15)),
            _element(0x00280103, b"US", struct.pack("<H", 0)),
        ]
    )


def _uids() -> dict[str, str]:
    return {"sop": generate_uid(), "study": generate_uid(), "series": generate_uid()}


def deflate_bomb_dataset(inflated_mib: int = 512) -> tuple[bytes, str]:
    """A deflated explicit VR little endian dataset of ~0.5 MB that inflates to `inflated_mib`
    MiB of pixel data (zeros); returns (deflated bytes, SOP Instance UID)."""
    uids = _uids()
    side = int((inflated_mib * MiB // 2) ** 0.5)
    pixel_bytes = side * side * 2
    head = _image_elements(uids, side) + struct.pack("<HH2sxxL", 0x7FE0, 0x0010, b"OW", pixel_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head)]
    zeros = bytes(MiB)
    remaining = pixel_bytes
    while remaining:
        chunk = zeros[: min(MiB, remaining)]
        parts.append(compressor.compress(chunk))
        remaining -= len(chunk)
    parts.append(compressor.flush())
    return b"".join(parts), uids["sop"]


def part10_write(path: Path, dataset: bytes, *, sop_instance_uid: str, syntax: str) -> Path:
    """Write an encoded dataset as a Part 10 file (preamble, meta group, dataset as given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1"
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + dataset)
    return path


def deflate_bomb_file(path: Path, inflated_mib: int = 512) -> tuple[Path, str]:
    data, sop = deflate_bomb_dataset(inflated_mib)
    return part10_write(
        path, data, sop_instance_uid=sop, syntax=DeflatedExplicitVRLittleEndian
    ), sop


def j2k_bomb_codestream(side: int = 8192) -> bytes:
    """A real JPEG 2000 lossless codestream of a 64x64 16-bit image whose SIZ marker segment
    is patched to declare `side`x`side` pixels (image and tile)."""
    import openjpeg

    pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    stream = bytearray(openjpeg.encode(pixels, bits_stored=16, photometric_interpretation=2))
    siz = stream.index(b"\xff\x51")
    # SIZ: marker, Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, ...
    struct.pack_into(">IIIIII", stream, siz + 6, side, side, 0, 0, side, side)
    return bytes(stream)


def j2k_bomb_file(path: Path, *, side: int = 8192, dataset_side: int | None = None) -> Path:
    """A CT in JPEG 2000 lossless whose codestream declares side x side 16-bit pixels; the
    dataset's Rows/Columns say `dataset_side` (default: the same)."""
    from pydicom.encaps import encapsulate

    uids = _uids()
    codestream = j2k_bomb_codestream(side)
    pixel_item = encapsulate([codestream])
    # encapsulate() returns the items (basic offset table, fragments) without the element's
    # header and the sequence delimiter.
    data = (
        _image_elements(uids, dataset_side or side)
        + struct.pack("<HH2sxxL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)
        + pixel_item
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    return part10_write(path, data, sop_instance_uid=uids["sop"], syntax=JPEG2000Lossless)
