"""dicomweb.metadata_encode against the pydicom path it replaces (metadata_json_pydicom): the
same JSON, byte for byte after json.dumps, on every file pydicom ships as test data, the
charset files, our fixtures, and files written here with awkward values of every VR. A file
the encoder leaves to pydicom (Unsupported) passes as long as metadata_json then gives the
pydicom path's answer."""

import io
import json
import logging
import struct
from pathlib import Path

import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from archive import dicom_bytes
from dicomweb.instances import metadata_json, metadata_json_pydicom
from dicomweb.metadata_encode import Unsupported, metadata_encode

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
URI = "\x00root/studies/1.2/series/1.2.3/instances/1.2.3.4"


def _dumped(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False)


def _compare(data: bytes) -> str:
    """'same', 'fallback' or 'rejected' (the pydicom path raises); fails on any difference."""
    try:
        reference = metadata_json_pydicom(io.BytesIO(data), URI)
    except Exception as exc:  # InstanceUnreadable, or what converting a raw element raised
        with pytest.raises(type(exc)):
            metadata_json(io.BytesIO(data), URI)
        return "rejected"
    try:
        encoded = metadata_encode(io.BytesIO(data), URI)
    except Unsupported:
        assert _dumped(metadata_json(io.BytesIO(data), URI)) == _dumped(reference)
        return "fallback"
    assert encoded == reference or _dumped(encoded) == _dumped(reference)  # NaN != NaN
    assert _dumped(encoded) == _dumped(reference)
    assert _dumped(metadata_json(io.BytesIO(data), URI)) == _dumped(reference)
    return "same"


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    # The pydicom path logs every value it drops; thousands of lines say nothing here.
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def _sample_files() -> list[Path]:
    paths = {Path(p) for p in get_testdata_files()} | {Path(p) for p in get_charset_files()}
    paths |= set(FIXTURES.rglob("*.dcm"))
    return sorted(p for p in paths if p.is_file())


def test_every_sample_file_encodes_as_pydicom_does():
    outcomes: dict[str, list[str]] = {}
    for path in _sample_files():
        outcomes.setdefault(_compare(path.read_bytes()), []).append(path.name)
    # Most of them must go the fast way, or the encoder is not worth having.
    assert len(outcomes["same"]) > 2 * len(outcomes.get("fallback", []))
    assert {"CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"} <= set(outcomes["same"])


# --- Files written here: every VR with values at the edges of what pydicom accepts. ---------

_TEXT = [
    b"",
    b" ",
    b"  ",
    b"\x00\x00",
    b"A",
    b"AB ",
    b" AB",
    b"A\\B",
    b"A\\",
    b"\\",
    b"A \\ B \\",
    b"A\\\\B",
    b"A\x00",
    b"A\tB",
    b"A\r\nB",
    b"\xe9t\xe9",
    b"\xc3\xa9t\xc3\xa9",
    b"\xff\xfe",
    b"A" * 70,
    b"x" * 17,
    b"\x1b$B",
]
_NAMES = [
    *_TEXT,
    b"DOE^JOHN",
    b"DOE^JOHN^^^",
    b"DOE^JOHN=",
    b"DOE^JOHN==",
    b"=",
    b"==",
    b"=ID^EO=PH^ON",
    b"A^B=C^D=E^F",
    b"A^B=C^D=E^F=G",
    b"A\\B^C=D",
    b"^",
    b"DOE^JOHN\\",
]
_DECIMALS = [
    b"1.50",
    b"  2 ",
    b"2",
    b"1e3",
    b"-1.5E-3",
    b"+1.0",
    b".5",
    b"5.",
    b"-0",
    b"abc",
    b"1_0",
    b"nan",
    b"inf",
    b"12345678901234567",
    b"-158.135803222656\\-179.035797119141\\-75.6999969482422",
    b"1.23456789012345678",
    b" -0.000000000000001 ",
    b"1\\2.5",
    b"1\\\\2",
    b" 1 \\ 2 ",
    b"1\\",
    b" ",
    b"1.0\x00",
]
_INTEGERS = [
    b"1",
    b" 2 ",
    b"+3",
    b"-4",
    b"007",
    b"1.0",
    b"abc",
    b"99999999999",
    b"2147483648",
    b"-2147483648",
    b"1\\2",
    b"1\\\\2",
    b"1\\",
    b" ",
    b"\xb2",
]
_UIDS = [
    b"1.2.3",
    b"1.2.3\x00",
    b"1.2.3 ",
    b" 1.2.3",
    b"1.2.03",
    b"1.2.3\\1.2.4",
    b"1.2.3\\",
    b"abc",
    b"1." + b"2" * 70,
]


def _numbers(code: str, values: list) -> list[bytes]:
    size = struct.calcsize("<" + code)
    encoded = [struct.pack(f"<{len(values[:n])}{code}", *values[:n]) for n in (1, 2, 3)]
    return [*encoded, b"", b"\x01" * (size + 1)]


_BINARY = [b"", b"\x01\x02", bytes(range(256)) * 3, bytes(1022), bytes(1024), bytes(2048)]
# VR, a tag of that VR in the dictionary, values
_CASES = [
    ("AE", 0x00080054, _TEXT),
    ("AS", 0x00101010, _TEXT),
    ("CS", 0x00080060, _TEXT),
    ("DA", 0x00080020, _TEXT),
    ("DT", 0x0008002A, _TEXT),
    ("TM", 0x00080030, _TEXT),
    ("LO", 0x00081030, _TEXT),
    ("SH", 0x00080050, _TEXT),
    ("LT", 0x00204000, _TEXT),
    ("ST", 0x00080081, _TEXT),
    ("UT", 0x00400280, _TEXT),
    ("UC", 0x00189193, _TEXT),  # not UC in the dictionary: what explicit VR says counts
    ("UR", 0x00081190, _TEXT),
    ("PN", 0x00100010, _NAMES),
    ("DS", 0x00281050, _DECIMALS),
    ("IS", 0x00200013, _INTEGERS),
    ("UI", 0x00080018, _UIDS),
    ("US", 0x00280010, _numbers("H", [1, 65535, 0])),
    ("SS", 0x00189219, _numbers("h", [-1, 32767, 0])),
    ("UL", 0x00081161, _numbers("L", [1, 2**32 - 1, 0])),
    ("SL", 0x00186020, _numbers("l", [-1, 2**31 - 1, 0])),
    ("FL", 0x00189087, _numbers("f", [0.1, -1e30, float("nan")])),
    ("FD", 0x00189089, _numbers("d", [0.1, -1e300, float("inf")])),
    ("SV", 0x00720082, _numbers("q", [-1, 2**63 - 1, 0])),
    ("UV", 0x00720083, _numbers("Q", [1, 2**64 - 1, 0])),
    ("AT", 0x00209165, [b"\x08\x00\x18\x00", b"\x08\x00\x18\x00\x10\x00\x10\x00", b"\x08\x00"]),
    ("OB", 0x00420011, _BINARY),
    ("OW", 0x00660023, _BINARY),
    ("OF", 0x00640009, _BINARY),
    ("OD", 0x00720075, _BINARY),
    ("OL", 0x00660024, _BINARY),
    ("UN", 0x00191001, _BINARY),
]
_CHARSETS = [b"", b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 6 ", b"ISO_IR 144"]
_USES_CHARSET = {"LO", "SH", "LT", "ST", "UT", "UC", "PN"}


def _file(elements: list[bytes], syntax: str) -> bytes:
    """A Part 10 file of the encoded `elements` (already in tag order)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + b"".join(elements)


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b" "
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return dicom_bytes.implicit_element(group, element, value)
    return dicom_bytes.explicit_element(group, element, vr.encode(), value)


def _item(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return dicom_bytes.ELEMENT_IMPLICIT.pack(0xFFFE, 0xE000, len(body)) + body


def _sequence(tag: int, items: list[bytes], implicit: bool, undefined: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    body = b"".join(items)
    if undefined:
        body += dicom_bytes.ELEMENT_IMPLICIT.pack(0xFFFE, 0xE0DD, 0)
    length = 0xFFFFFFFF if undefined else len(body)
    if implicit:
        return dicom_bytes.ELEMENT_IMPLICIT.pack(group, element, length) + body
    return dicom_bytes.ELEMENT_EXPLICIT_LONG.pack(group, element, b"SQ", length) + body


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_awkward_values_encode_as_pydicom_does(implicit):
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    counts: dict[str, int] = {}
    for vr, tag, values in _CASES:
        for charset in _CHARSETS if vr in _USES_CHARSET else _CHARSETS[:1]:
            for value in values:
                elements = []
                if charset:
                    elements.append(_element(0x00080005, "CS", charset, implicit))
                elements.append(_element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7", implicit))
                elements.append(_element(tag, vr, value, implicit))
                # The same value in a sequence item, where bulk data gets a path.
                elements.append(
                    _sequence(
                        0x00400275,
                        [_item([_element(tag, vr, value, implicit)])],
                        implicit,
                        undefined=False,
                    )
                )
                outcome = _compare(_file(sorted(elements, key=_tag_of), syntax))
                counts[outcome] = counts.get(outcome, 0) + 1
    assert counts["same"] > counts.get("fallback", 0)


def _tag_of(encoded: bytes) -> tuple[int, int]:
    group, element = struct.unpack_from("<HH", encoded)
    return group, element


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("representation", [None, 0, 1])
def test_nested_sequences_private_tags_and_pixel_values(implicit, representation):
    """Undefined and defined lengths, bulk data two items deep, private tags of a creator
    pydicom knows (their VR from its private dictionary in implicit VR) and of one it does
    not, and "US or SS" values whose VR Pixel Representation decides."""
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    deep = _item(
        [
            _element(0x00080100, "SH", b"CODE", implicit),
            _element(0x00420011, "OB", bytes(3000), implicit),
        ]
    )
    inner = _sequence(0x0040A730, [deep, deep], implicit, undefined=True)
    items = [
        _item([_element(0x00081150, "UI", b"1.2.3", implicit), inner]),
        _item([]),
        dicom_bytes.ELEMENT_IMPLICIT.pack(0xFFFE, 0xE000, 0xFFFFFFFF)
        + _element(0x00081155, "UI", b"1.2.3.4", implicit)
        + dicom_bytes.ELEMENT_IMPLICIT.pack(0xFFFE, 0xE00D, 0),
    ]
    elements = [
        _element(0x00080005, "CS", b"ISO_IR 100", implicit),
        _element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2", implicit),
        _element(0x00100010, "PN", b"M\xfcller^J\xfcrgen", implicit),
        _sequence(0x00081115, items, implicit, undefined=False),
        _sequence(0x00081140, [], implicit, undefined=True),
        _element(0x00090010, "LO", b"GEMS_IDEN_01", implicit),
        _element(0x00091001, "LO", b"private text", implicit),
        _element(0x00091002, "SH", b"ABC", implicit),
        _element(0x00110010, "LO", b"NOBODY KNOWS", implicit),
        _element(0x00111001, "UN", b"\x01\x02\x03\x04", implicit),
        _element(0x00280100, "US", struct.pack("<H", 16), implicit),
        _element(0x00280106, "US", struct.pack("<H", 2), implicit),
        _element(0x00280107, "US", struct.pack("<H", 4000), implicit),
        _element(0x7FE00010, "OW", bytes(8), implicit),
    ]
    if representation is not None:
        elements.append(_element(0x00280103, "US", struct.pack("<H", representation), implicit))
    data = _file(sorted(elements, key=_tag_of), syntax)
    assert _compare(data) == "same"
    encoded = metadata_encode(io.BytesIO(data), URI)
    deep_uri = encoded["00081115"]["Value"][0]["0040A730"]["Value"][1]["00420011"]
    assert deep_uri == {"vr": "OB", "BulkDataURI": f"{URI}/bulkdata/00081115/0/0040A730/1/00420011"}
    assert encoded["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{URI}/bulkdata/7FE00010"}
    assert encoded["00083002"] == {"vr": "UI", "Value": [syntax]}


def test_compressed_pixel_data_is_ob_and_a_long_header_is_read_in_pieces():
    big = bytes(200_000)  # more than the first read: the encoder reads on
    elements = [
        _element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7", False),
        _element(0x00280100, "US", struct.pack("<H", 16), False),
        _element(0x00420011, "OB", big, False),
        dicom_bytes.ELEMENT_EXPLICIT_LONG.pack(0x7FE0, 0x0010, b"OB", 0xFFFFFFFF),
    ]
    data = _file(elements, JPEG2000Lossless)
    assert _compare(data) == "same"
    assert metadata_encode(io.BytesIO(data), URI)["7FE00010"]["vr"] == "OB"


def test_values_that_break_the_standard_are_kept_the_fast_way():
    """Scanners write Image Position Patient with 17 or more characters a number, and UIDs and
    IS values that break the standard: the reference keeps them (pydicom converts in its
    default, warning reading mode), and so does the encoder, without falling back."""
    position = b"-158.135803222656\\-179.035797119141\\-75.6999969482422"
    for implicit in (False, True):
        elements = [
            _element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2", implicit),
            _element(0x00080018, "UI", b"1.2.03.4", implicit),
            _element(0x00189193, "UC", b"unknown in implicit VR", implicit),
            _element(0x00200013, "IS", b"99999999999", implicit),
            _element(0x00200032, "DS", position, implicit),
        ]
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        data = _file(elements, syntax)
        assert _compare(data) == "same"
        encoded = metadata_encode(io.BytesIO(data), URI)
        assert encoded["00200032"]["Value"] == [float(v) for v in position.split(b"\\")]
        assert encoded["00080018"]["Value"] == ["1.2.03.4"]
        assert encoded["00200013"]["Value"] == [99999999999]


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("vr", ["SS", "US"])
def test_a_lut_descriptor_with_a_negative_first_value_encodes_as_pydicom_does(implicit, vr):
    """pydicom reads a LUT descriptor's first value as unsigned or not depending on how it
    learnt the VR: whatever it says is what the metadata says."""
    descriptor = _element(0x00283002, vr, struct.pack("<3h", -4096, 0, 16), implicit)
    item = _item([descriptor, _element(0x00283006, "OW", b"\x00\x01" * 4, implicit)])
    lut = _sequence(0x00283010, [item], implicit, undefined=False)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert _compare(_file([lut], syntax)) in ("same", "fallback")
