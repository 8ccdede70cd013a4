"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5, 8.3.6): one frame (the
middle one, or the one a frames/{n}/rendered path names) windowed to 8
bits (archive.preview, the admin's previews) as JPEG or PNG."""

import io
from typing import BinaryIO

from PIL import Image

from archive.preview import MAX_SIDE, preview_png
from dicomweb.accept import MediaRange, matches

THUMBNAIL_SIDE = 128
MAX_VIEWPORT = 4096


class RenderInvalid(ValueError):
    """A `window` or `viewport` parameter that cannot be used."""


def window_parse(text: str | None) -> tuple[float, float] | None:
    """`window=center,width[,function]` (only the linear function is applied)."""
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise RenderInvalid(f"window is center,width[,function], not {text!r}") from None
    if width <= 0:
        raise RenderInvalid("the window width must be positive")
    return center, width


def viewport_parse(text: str | None, default: int) -> int:
    """`viewport=vw,vh`: the largest side of the image sent."""
    if not text:
        return default
    try:
        sides = [int(v) for v in text.split(",")[:2]]
    except ValueError:
        raise RenderInvalid(f"viewport is width,height, not {text!r}") from None
    if not sides or min(sides) <= 0:
        raise RenderInvalid("viewport sides must be positive")
    return min(max(sides), MAX_VIEWPORT)


def media_choose(ranges: list[MediaRange]) -> str | None:
    """image/jpeg (the default) or image/png, as the Accept header prefers."""
    for r in ranges:
        for offered in ("image/jpeg", "image/png"):
            if matches(offered, r.type):
                return offered
    return None


def render(
    source: BinaryIO,
    *,
    media: str,
    window: tuple[float, float] | None,
    side: int,
    frame_index: int | None = None,
) -> bytes:
    """Frame `frame_index` (0-based; the middle one if None) of the instance read from `source`.
    Raises archive.preview.PreviewUnavailable (FrameMissing for a frame it does not have)."""
    png = preview_png(source, window=window, max_side=side or MAX_SIDE, frame_index=frame_index)
    if media == "image/png":
        return png
    image = Image.open(io.BytesIO(png))
    out = io.BytesIO()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()
