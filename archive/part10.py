"""The DICOM Part 10 file wrapper (PS3.10 7.1): preamble, 'DICM' and the file meta group.

Written by hand rather than through pydicom: the group is a handful of fixed elements, and
building it directly costs microseconds instead of pydicom's fraction of a millisecond per
instance.
"""

import struct

# Our root under the UUID-derived 2.25 arc (PS3.5 B.2): unique without registering an org root.
IMPLEMENTATION_CLASS_UID = "2.25.134334723121356784459245733081972169182"
IMPLEMENTATION_VERSION_NAME = "PACSRECV_1_0"

PREAMBLE = b"\0" * 128 + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR little endian; OB uses the long form with two reserved bytes.
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_header(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """Return preamble, prefix and file meta group for a dataset that follows it as received."""
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _uid(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _uid(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _uid(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _element(0x0002, 0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _element(0x0002, 0x0016, b"AE", _text(source_ae_title.strip())),
        )
    )
    return PREAMBLE + _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body
