"""Lenient parsing of Accept and Content-Type headers (RFC 9110 media ranges).

Clients differ: quoted or bare parameters, q-values, `type` missing from multipart/related,
`*/*`, no header at all. Strictness is the most reported DICOMweb interoperability complaint,
so anything a reasonable reader understands is understood.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    type: str  # "multipart/related", "application/dicom", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def related_type(self) -> str:
        """The `type` parameter of a multipart/related range ("" if absent)."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str:
        return self.params.get("transfer-syntax", "")


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def media_type_parse(text: str) -> MediaRange:
    """One media range: `multipart/related; type="application/dicom"; q=0.5`."""
    pieces = _split(text, ";")
    kind = pieces[0].strip().lower() or "*/*"
    if kind == "*":
        kind = "*/*"
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').strip()
        if not name:
            continue
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 1.0
            continue
        params[name] = value
    return MediaRange(kind, params, q)


def accept_parse(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first (q descending, then in order); an absent or
    empty header accepts anything. Ranges with q=0 are dropped."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [media_type_parse(p) for p in _split(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: ties keep their order


def matches(offered: str, wanted: str) -> bool:
    """Does the media range `wanted` (maybe with wildcards) cover the type `offered`?"""
    if wanted in ("*/*", offered):
        return True
    major, _, minor = wanted.partition("/")
    return minor == "*" and offered.split("/")[0] == major
