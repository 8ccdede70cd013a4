"""DICOM at the byte level: element and item headers, the long-VR set, UID and text padding,
PDU and PDV headers. One copy, shared by the hand-written codecs that avoid pydicom on the hot
path: `archive/header.py` (index attributes from the raw dataset), `archive/part10.py` (the file
meta group), `receiver/transport/fastpath.py` (command sets, PDVs) and
`receiver/transport/pdu_guard.py` (PDU headers).

It lives in `archive` although half of it is network framing because `archive` must never
import `receiver` (the arrows point down), while `receiver` may import `archive`; a module of
constants and pure functions with no Django import costs `archive` nothing.

The structs are module-level objects so that hot loops bind `unpack_from` once; the functions
are small enough to be inlined by hand where a loop runs per element.
"""

import struct

# --- Data elements (PS3.5 7.1) -------------------------------------------------------------

# Tag and 4-byte length: implicit VR little endian, and item / delimitation headers (PS3.5 7.5).
ELEMENT_IMPLICIT = struct.Struct("<HHL")
UINT16 = struct.Struct("<H")
UINT32 = struct.Struct("<L")
# Explicit VR little endian: tag, VR, 2-byte length; or tag, VR, 2 reserved bytes, 4-byte length.
ELEMENT_EXPLICIT_SHORT = struct.Struct("<HH2sH")
ELEMENT_EXPLICIT_LONG = struct.Struct("<HH2s2xL")

# Explicit VRs whose length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2, Table 7.1-1).
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)

# The other explicit VRs: a 2-byte length right after the VR.
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element in explicit VR little endian; `value` already padded to even length."""
    if vr in LONG_VRS:
        return ELEMENT_EXPLICIT_LONG.pack(group, element, vr, len(value)) + value
    return ELEMENT_EXPLICIT_SHORT.pack(group, element, vr, len(value)) + value


def implicit_element(group: int, element: int, value: bytes) -> bytes:
    """One element in implicit VR little endian (command sets, PS3.7 E.1). An odd-length value
    is padded with NUL: in a command set only UIDs can have one (PS3.5 9.1)."""
    if len(value) % 2:
        value += b"\0"
    return ELEMENT_IMPLICIT.pack(group, element, len(value)) + value


# --- Values (PS3.5 6.2) --------------------------------------------------------------------


def uid_pad(raw: bytes) -> bytes:
    """A UID value padded to even length with a trailing NUL (PS3.5 9.1)."""
    return raw + b"\0" if len(raw) % 2 else raw


def uid_encode(text: str) -> bytes:
    return uid_pad(text.encode("ascii", "replace"))


def uid_decode(raw: bytes | None) -> str:
    """A UID value as text, without its padding (senders pad with NUL or, wrongly, a space)."""
    return raw.rstrip(b"\0 ").decode("ascii", "replace") if raw else ""


def text_encode(text: str) -> bytes:
    """A text value (AE, SH, CS, ...) in the default repertoire padded with a space."""
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


# --- Upper layer (PS3.8 9.3) ---------------------------------------------------------------

PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length of what follows
PDV_ITEM_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, control header
A_ASSOCIATE_RQ, P_DATA_TF, A_ABORT = 0x01, 0x04, 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))
# Message control header bits of a PDV (PS3.8 E.2).
PDV_COMMAND, PDV_LAST = 0x01, 0x02


def a_abort(*, source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8): source 0 service user, 2 service provider."""
    return PDU_HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, source, reason))
