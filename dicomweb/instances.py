"""Reading stored instances for WADO-RS, through the storage service only (`Storage.open`):
metadata as DICOM JSON, the pixel data's place in the file, single frames, and conversion to
explicit VR little endian. Files are read, never held whole: a frame is read from its offset,
an instance streamed as stored."""

import io
import itertools
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import iter_pixels, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from archive.storage import Storage
from dicomweb.metadata_encode import Unsupported, metadata_encode
from dicomweb.multipart import file_chunks

PIXEL_DATA = 0x7FE00010
# Binary values at least this long are sent as BulkDataURI in metadata, not inline.
BULK_THRESHOLD = 1024
SPOOL_MEMORY = 8 * 2**20

# PS3.18 Table 8.7.3-2: media types of compressed frames, by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
}


class InstanceUnreadable(Exception):
    """The stored file is missing, unreadable, or lacks what was asked (frames, a tag)."""


@contextmanager
def opened(storage: Storage, relative: str) -> Iterator[BinaryIO]:
    try:
        stream = storage.open(relative)
    except FileNotFoundError:
        raise InstanceUnreadable("the stored file is missing") from None
    except Exception as exc:
        raise InstanceUnreadable(f"the stored file cannot be opened: {exc}") from None
    try:
        yield stream
    finally:
        stream.close()


@dataclass(frozen=True)
class PixelLocation:
    """Where the pixel data's value is in the file, and what describes it."""

    header: Dataset  # everything before the pixel data, file meta included
    value_offset: int
    length: int  # 0xFFFFFFFF: encapsulated
    vr: str

    @property
    def encapsulated(self) -> bool:
        return self.length == 0xFFFFFFFF

    @property
    def number_of_frames(self) -> int:
        try:
            return max(1, int(self.header.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def frame_length(self) -> int:
        h = self.header
        bits = int(h.Rows) * int(h.Columns) * int(h.get("SamplesPerPixel", 1))
        return (bits * int(h.BitsAllocated) + 7) // 8


def header_read(stream: BinaryIO) -> tuple[Dataset, int]:
    """Everything before the pixel data (the file meta too), and the offset where the pixel
    data element starts (or where the file ends)."""
    try:
        ds = dcmread(stream, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise InstanceUnreadable(f"the stored file cannot be parsed: {exc}") from None
    return ds, stream.tell()


def pixel_locate(stream: BinaryIO) -> PixelLocation:
    ds, offset = header_read(stream)
    stream.seek(offset)
    head = stream.read(12)
    if len(head) < 8 or struct.unpack("<HH", head[:4]) != (0x7FE0, 0x0010):
        raise InstanceUnreadable("the instance has no pixel data")
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if syntax.is_implicit_VR:
        (length,) = struct.unpack("<I", head[4:8])
        return PixelLocation(ds, offset + 8, length, "OW")
    vr = head[4:6].decode("latin-1")
    (length,) = struct.unpack("<I", head[8:12])
    return PixelLocation(ds, offset + 12, length, vr)


def stored_syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))


def frame_read(stream: BinaryIO, location: PixelLocation, number: int) -> bytes:
    """Frame `number` (1-based) as stored: the compressed codestream, or native bytes."""
    if not 1 <= number <= location.number_of_frames:
        raise InstanceUnreadable(
            f"no frame {number} (the instance has {location.number_of_frames})"
        )
    stream.seek(location.value_offset)
    if location.encapsulated:
        try:
            return get_frame(stream, number - 1, number_of_frames=location.number_of_frames)
        except Exception as exc:
            raise InstanceUnreadable(f"frame {number} cannot be read: {exc}") from None
    size = location.frame_length
    stream.seek(location.value_offset + (number - 1) * size)
    data = stream.read(size)
    if len(data) != size:
        raise InstanceUnreadable(f"frame {number} is cut short in the stored file")
    return data


def frame_decoded(stream: BinaryIO, location: PixelLocation, number: int) -> bytes:
    """Frame `number` decompressed to native little endian bytes."""
    stream.seek(0)
    try:
        array = pixel_array(stream, index=number - 1)
    except Exception as exc:
        raise InstanceUnreadable(f"frame {number} cannot be decompressed: {exc}") from None
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def explicit_little(stream: BinaryIO) -> Iterator[bytes]:
    """The instance as a Part 10 file in explicit VR little endian, a piece at a time: the
    attributes re-encoded, then the pixel data copied (implicit VR little endian) or decoded
    (compressed) a frame at a time, so memory holds one frame, not the instance. Elements
    after the pixel data (a digital signature, padding) are left out: re-encoding voids a
    signature anyway. Big endian and deflated files are converted whole (explicit_little_copy).

    Everything that can fail before the first byte is checked here, raising
    InstanceUnreadable; a frame that then fails to decode raises from the iterator."""
    ds, offset = header_read(stream)
    syntax = UID(stored_syntax(ds))
    if syntax.is_deflated or not syntax.is_little_endian:
        return _spooled(explicit_little_copy(stream))
    stream.seek(offset)
    head = stream.read(4)
    if not head:  # the file ends where the pixel data would start: it has none
        return iter([_part10_header(ds, b"")])
    if len(head) < 4 or struct.unpack("<HH", head) != (0x7FE0, 0x0010):
        # Float or double float pixel data (7FE0,0008/0009), where header_read stops too:
        # converted whole rather than left out.
        return _spooled(explicit_little_copy(stream))
    stream.seek(0)
    location = pixel_locate(stream)
    if not location.encapsulated:
        vr = "OB" if int(location.header.get("BitsAllocated", 16)) <= 8 else "OW"
        head = _part10_header(ds, _pixel_element_header(vr, location.length))
        stream.seek(location.value_offset)
        return itertools.chain([head], file_chunks(stream, length=location.length))
    frames = location.number_of_frames
    try:
        decoded = iter_pixels(stream, indices=[0], as_rgb=True)
        try:
            first = next(decoded)
        finally:
            decoded.close()  # it puts the stream back where it was: now, not when collected
        # pydicom's decompress sets what decoding changes (Photometric Interpretation,
        # Planar Configuration): on this dataset given the first frame alone.
        ds.PixelData = encapsulate([frame_read(stream, location, 1)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.NumberOfFrames = 1
        ds.decompress(generate_instance_uid=False, as_rgb=True)
    except InstanceUnreadable:
        raise
    except Exception as exc:
        raise InstanceUnreadable(f"cannot be decompressed: {exc}") from None
    del ds.PixelData
    if "NumberOfFrames" in location.header:
        ds.NumberOfFrames = frames
    else:
        del ds.NumberOfFrames
    frame_length = first.nbytes
    total = frame_length * frames
    if total + total % 2 >= 2**32 - 1:
        raise InstanceUnreadable("decompressed, the pixel data would be above 4 GiB")
    vr = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    head = _part10_header(ds, _pixel_element_header(vr, total + total % 2))
    return _decoded_frames(stream, head, frame_length, frames, total % 2)


def _decoded_frames(
    stream: BinaryIO, head: bytes, frame_length: int, frames: int, padding: int
) -> Iterator[bytes]:
    """`head` announced frames x frame_length bytes: exactly those are sent, or it raises."""
    yield head
    stream.seek(0)
    sent = 0
    decoded = iter_pixels(stream, as_rgb=True)
    while True:
        try:
            array = next(decoded, None)
        except Exception as exc:
            raise InstanceUnreadable(f"frame {sent + 1} cannot be decoded: {exc}") from None
        if array is None:
            break
        if array.nbytes != frame_length or sent == frames:
            raise InstanceUnreadable("the frames differ from what the header announced")
        sent += 1
        yield array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    if sent != frames:
        raise InstanceUnreadable(f"{sent} frames decoded of {frames}")
    yield b"\x00" * padding


def _spooled(copy: BinaryIO) -> Iterator[bytes]:
    with copy:
        yield from file_chunks(copy)


def _pixel_element_header(vr: str, length: int) -> bytes:
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr.encode(), 0, length)


def _part10_header(ds: Dataset, pixel_element: bytes) -> bytes:
    """Preamble, file meta (saying explicit VR little endian) and attributes of `ds` (without
    its pixel data), then `pixel_element` (the pixel data element's tag, VR and length)."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    except Exception as exc:
        raise InstanceUnreadable(f"cannot convert to explicit VR little endian: {exc}") from None
    return out.getvalue() + pixel_element


def explicit_little_copy(stream: BinaryIO) -> BinaryIO:
    """The instance as a Part 10 file in explicit VR little endian (decompressed where it is
    compressed), in a temporary file spooled to disk past SPOOL_MEMORY."""
    stream.seek(0)
    try:
        ds = dcmread(stream, force=True)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        elif not ds.file_meta.TransferSyntaxUID.is_little_endian:
            _big_endian_undone(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (returned)
        ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    except Exception as exc:
        raise InstanceUnreadable(f"cannot convert to explicit VR little endian: {exc}") from None
    out.seek(0)
    return out


def _big_endian_undone(ds: Dataset) -> None:
    """Makes a dataset read from explicit VR big endian (retired) writable as little endian:
    pydicom refuses to change the byte order of what it has not decoded, and keeps the values
    of OW, OL, OF, OD and OV (a LUT's data, an overlay, float pixel data) as the bytes it read.
    Numbers are decoded; the pixel data goes through its array (its words may be 32 bits
    wide); every other such value is swapped word by word, at any depth."""
    pixels = ds.get(0x7FE00010)  # by tag: the element, not its value
    for element in ds.iterall():  # decodes every value, in sequences too
        width = _WORD_BYTES.get(element.VR)
        if width and element is not pixels and isinstance(element.value, bytes):
            words = np.frombuffer(
                element.value, dtype=f">u{width}", count=len(element.value) // width
            )
            element.value = words.astype(f"<u{width}").tobytes() + element.value[words.nbytes :]
    if pixels is not None:
        array = ds.pixel_array
        ds.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    ds.set_original_encoding(False, True, ds.original_character_set)


# Binary VRs whose values pydicom keeps as read: their word width in bytes.
_WORD_BYTES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def metadata_json(stream: BinaryIO, instance_uri: str) -> dict[str, Any]:
    """The instance's attributes as DICOM JSON (PS3.18 F.2): pixel data and binary values of
    BULK_THRESHOLD bytes or more, at any depth (an icon's pixel data in its sequence), as
    BulkDataURI (`{instance}/bulkdata/{path}`, the path as `bulk_path` writes it), smaller
    ones inline; AvailableTransferSyntaxUID (0008,3002) names the stored syntax.

    Written from the encoded elements (dicomweb.metadata_encode, a few times cheaper) unless
    the file holds something only pydicom is sure to read the same way; the output is the same
    either way."""
    try:
        return metadata_encode(stream, instance_uri)
    except Unsupported:
        return metadata_json_pydicom(stream, instance_uri)


def metadata_json_pydicom(stream: BinaryIO, instance_uri: str) -> dict[str, Any]:
    """metadata_json through a pydicom Dataset: the reference, and what every file that
    metadata_encode leaves goes through."""
    stream.seek(0)
    ds, offset = header_read(stream)
    syntax = stored_syntax(ds)
    has_pixels = _has_pixel_data(stream, offset)
    paths: dict[int, BulkPath] = {}

    def uri(element: DataElement) -> str:
        return f"{instance_uri}/bulkdata/{bulk_path(paths[id(element)])}"

    try:
        # Every value converted first, in pydicom's default (warning) reading mode: to_json_dict
        # with suppress_invalid_tags converts under strict reading and would drop what breaks
        # the standard but is what the file holds (a 17-character DS, say). A value that cannot
        # be converted at all makes the instance unreadable, not a server error.
        paths.update((id(element), path) for path, element in _elements(ds, ()))
        ds.AvailableTransferSyntaxUID = syntax
        # pydicom sends a value as BulkDataURI when its length is above 3/4 of the threshold
        # (what base64 would make of it): this one makes that BULK_THRESHOLD bytes or more.
        result = ds.to_json_dict(
            bulk_data_threshold=(BULK_THRESHOLD // 3) * 4,
            bulk_data_element_handler=uri,
            suppress_invalid_tags=True,
        )
    except Exception as exc:
        raise InstanceUnreadable(f"the attributes cannot be encoded: {exc}") from None
    if has_pixels:
        try:
            small = UID(syntax).is_compressed or int(ds.get("BitsAllocated", 16)) <= 8
        except (TypeError, ValueError) as exc:  # an unknown syntax, an empty Bits Allocated
            raise InstanceUnreadable(f"the pixel data cannot be described: {exc}") from None
        vr = "OB" if small else "OW"
        result["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_uri}/bulkdata/7FE00010"}
    return dict(sorted(result.items()))


BulkPath = tuple[int, ...]  # tag, item index, tag, ..., tag


def _elements(ds: Dataset, prefix: BulkPath) -> Iterator[tuple[BulkPath, DataElement]]:
    """Every element but sequences, at any depth, with its path (pydicom decides which are
    binary: ambiguous VRs such as "OB or OW" too). An element whose value cannot be converted
    is left raw and out: to_json_dict then leaves it out of the answer (logged), not the
    instance."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except Exception:
            continue
        if element.VR == "SQ":
            for index, item in enumerate(element.value or ()):
                yield from _elements(item, (*prefix, element.tag, index))
        else:
            yield (*prefix, element.tag), element


def bulk_path(path: BulkPath) -> str:
    """`00880200/0/7FE00010`: tags in hex, each sequence's item index (from 0) after it."""
    return "/".join(f"{v:08X}" if i % 2 == 0 else str(v) for i, v in enumerate(path))


def bulk_path_parse(text: str) -> BulkPath | None:
    parts = text.strip("/").split("/")
    if len(parts) % 2 == 0:
        return None
    try:
        return tuple(int(p, 16) if i % 2 == 0 else int(p) for i, p in enumerate(parts))
    except ValueError:
        return None


def _has_pixel_data(stream: BinaryIO, offset: int) -> bool:
    stream.seek(offset)
    head = stream.read(4)
    return len(head) == 4 and struct.unpack("<HH", head) == (0x7FE0, 0x0010)


def bulk_value(stream: BinaryIO, path: BulkPath) -> bytes:
    """A binary value other than the top-level pixel data, at `path` (see bulk_path)."""
    ds, _ = header_read(stream)
    where = bulk_path(path)
    for tag, index in zip(path[:-1:2], path[1::2], strict=True):
        if tag not in ds or ds[tag].VR != "SQ" or not 0 <= index < len(ds[tag].value):
            raise InstanceUnreadable(f"no sequence item at {where} in the instance")
        ds = ds[tag].value[index]
    tag = path[-1]
    value = ds[tag].value if tag in ds else None
    if not isinstance(value, bytes | bytearray):
        raise InstanceUnreadable(f"no binary value at {where} in the instance")
    return bytes(value)
