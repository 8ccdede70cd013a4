"""Preview images of stored instances: one frame, windowed to 8 bits, as PNG.

Compressed transfer syntaxes decode through the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000,
RLE). The PNG is written here (zlib and a few chunks), sparing an imaging library.

Memory is bounded whatever the file claims: a frame larger than a pixel budget (the dataset's
Rows x Columns x samples, and what each compressed frame's codestream declares) is refused
before anything decodes it, a deflated dataset is inflated only up to that budget, and the frame
is subsampled to the preview's size before any conversion to floating point.
"""

import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from archive.dicomfile import (
    InflateLimitExceeded,
    MiB,
    deflated_dataset_read,
    encapsulated_frames_declared,
    file_header_read,
)

MAX_SIDE = 512
# Samples (rows x columns x samples per pixel) of the largest frame decoded for a preview: a
# 4096x5120 mammogram fits. Decoding costs up to 4 bytes a sample inside the JPEG 2000 decoder
# plus the decoded frame, so a web worker stays within ~300 MB.
MAX_SAMPLES = 24_000_000


class PreviewUnavailable(Exception):
    """The instance has no pixel data we can render; the message says why."""


class FrameMissing(PreviewUnavailable):
    """The frame asked for is beyond the instance's Number of Frames."""


def preview_png(
    path: Path | BinaryIO,
    *,
    window: tuple[float, float] | None = None,
    max_side: int = MAX_SIDE,
    max_samples: int = MAX_SAMPLES,
    frame_index: int | None = None,
) -> bytes:
    """Frame `frame_index` (0-based; the middle one if None) of the file at `path` (a path, or a
    seekable binary file such as `Storage.open` returns) as PNG, at most `max_side` pixels wide
    or high.

    `window` is (center, width) in modality units; without it, the file's first Window
    Center/Width, else the 0.5th to 99.5th percentile of the frame. Raises PreviewUnavailable
    saying why there is none (no image, damaged, no decoder, above `max_samples` a frame),
    FrameMissing if the instance has no such frame.
    """
    try:
        read = file_header_read(path)
    except (OSError, ValueError) as exc:
        raise PreviewUnavailable(f"not readable: {exc}") from None
    header = read.dataset
    photometric = str(header.get("PhotometricInterpretation", ""))
    if not photometric:
        if read.truncated:
            raise PreviewUnavailable("header inflates beyond 16 MiB: not read")
        raise PreviewUnavailable("no image: the instance has no Photometric Interpretation")
    try:
        frames = int(header.get("NumberOfFrames") or 1)
        rows, columns = int(header.Rows), int(header.Columns)
        samples = int(header.get("SamplesPerPixel") or 1)
        bytes_per_sample = (int(header.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise PreviewUnavailable(f"image attributes missing or invalid: {exc}") from None
    _within_budget(rows, columns, samples, max_samples, "")
    if frame_index is not None and not 0 <= frame_index < frames:
        raise FrameMissing(f"no frame {frame_index + 1}: the instance has {frames}")
    pixel_bytes = frames * rows * columns * samples * bytes_per_sample
    frame = _frame_decode(
        path,
        header,
        index=frames // 2 if frame_index is None else frame_index,
        budget=pixel_bytes,
        max_samples=max_samples,
    )
    # Subsample first: everything after this is per preview pixel, not per stored pixel.
    step = max(1, math.ceil(max(frame.shape[:2]) / max_side))
    frame = frame[::step, ::step]
    attributes = header  # carries the modality and palette LUTs
    if photometric == "PALETTE COLOR":
        frame = _to_uint8(apply_color_lut(frame, attributes).astype(np.float64), None)
    elif frame.ndim == 3:  # RGB (pydicom converts YBR to RGB)
        frame = _to_uint8(frame.astype(np.float64), (0, 2 ** int(header.BitsStored) - 1))
    else:
        values = apply_modality_lut(frame, attributes).astype(np.float64)
        frame = _to_uint8(values, _window_bounds(values, header, window))
        if photometric == "MONOCHROME1":
            frame = 255 - frame
    return png_encode(np.ascontiguousarray(frame))


def _within_budget(rows: int, columns: int, samples: int, max_samples: int, source: str) -> None:
    if rows * columns * samples > max_samples:
        raise PreviewUnavailable(
            f"too large to preview: {columns}×{rows}{f'×{samples}' if samples > 1 else ''}"
            f"{source} is above the budget of {max_samples / 1e6:g} M samples"
        )


def _frame_decode(
    path: Path | BinaryIO,
    header: Dataset,
    *,
    index: int,
    budget: int,
    max_samples: int,
) -> np.ndarray:
    syntax = header.file_meta.TransferSyntaxUID
    try:
        if syntax.is_deflated:
            # Native pixel data behind deflate: inflate no more than the frames should take.
            try:
                dataset = deflated_dataset_read(path, limit=budget + 16 * MiB)
            except InflateLimitExceeded as exc:
                raise PreviewUnavailable(f"{exc}, more than its pixels need") from None
            return pixel_array(dataset, index=index)
        if syntax.is_encapsulated:
            # What each frame's codestream declares is what its decoder will allocate, whatever
            # Rows and Columns say.
            for image in encapsulated_frames_declared(path):
                _within_budget(
                    image.rows, image.columns, image.samples, max_samples, " in its codestream"
                )
        if not isinstance(path, Path):
            path.seek(0)  # read again from the start for the pixel data
        return pixel_array(path, index=index)
    except PreviewUnavailable:
        raise
    except Exception as exc:  # missing decoder, corrupt codestream, truncated data, ...
        raise PreviewUnavailable(f"pixel data not decodable: {exc}") from None


def _window_bounds(
    values: np.ndarray, header: Dataset, window: tuple[float, float] | None
) -> tuple[float, float]:
    if window is None and "WindowCenter" in header and "WindowWidth" in header:
        window = (_first(header.WindowCenter), _first(header.WindowWidth))
    if window is not None and window[1] > 0:
        center, width = window
        return center - width / 2, center + width / 2
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high)


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, MultiValue) else value)


def _to_uint8(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    low, high = bounds if bounds is not None else (float(values.min()), float(values.max()))
    scaled = (values - low) / max(high - low, 1e-9)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_encode(pixels: np.ndarray) -> bytes:
    """An 8-bit grey (height, width) or RGB (height, width, 3) image as PNG."""
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.reshape(height, -1)
    # Each row starts with its filter type byte: 0, none.
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, 6)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
