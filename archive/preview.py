"""Preview images of stored instances: one frame, windowed to 8 bits, as PNG.

Compressed transfer syntaxes decode through the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000,
RLE). The PNG is written here (zlib and a few chunks), sparing an imaging library.
"""

import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

MAX_SIDE = 512


class PreviewUnavailable(Exception):
    """The instance has no pixel data we can render; the message says why."""


def preview_png(
    path: Path | BinaryIO,
    *,
    window: tuple[float, float] | None = None,
    max_side: int = MAX_SIDE,
) -> bytes:
    """The middle frame of the file at `path` (a path, or a seekable binary file such as
    `Storage.open` returns) as PNG, at most `max_side` pixels wide or high.

    `window` is (center, width) in modality units; without it, the file's first Window
    Center/Width, else the 0.5th to 99.5th percentile of the frame.
    """
    try:
        header = dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds for a damaged file
        raise PreviewUnavailable(f"not readable: {exc}") from None
    photometric = str(header.get("PhotometricInterpretation", ""))
    if not photometric:
        raise PreviewUnavailable("no image: the instance has no Photometric Interpretation")
    frames = int(header.get("NumberOfFrames") or 1)
    attributes = Dataset()
    if not isinstance(path, Path):
        path.seek(0)  # read again from the start for the pixel data
    try:
        frame = pixel_array(path, index=frames // 2, ds_out=attributes)
    except Exception as exc:  # missing decoder, corrupt codestream, truncated data, ...
        raise PreviewUnavailable(f"pixel data not decodable: {exc}") from None
    if photometric == "PALETTE COLOR":
        frame = _to_uint8(apply_color_lut(frame, attributes).astype(np.float64), None)
    elif frame.ndim == 3:  # RGB (pydicom converts YBR to RGB)
        frame = _to_uint8(frame.astype(np.float64), (0, 2 ** int(header.BitsStored) - 1))
    else:
        values = apply_modality_lut(frame, attributes).astype(np.float64)
        frame = _to_uint8(values, _window_bounds(values, header, window))
        if photometric == "MONOCHROME1":
            frame = 255 - frame
    step = max(1, math.ceil(max(frame.shape[:2]) / max_side))
    return png_encode(np.ascontiguousarray(frame[::step, ::step]))


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
