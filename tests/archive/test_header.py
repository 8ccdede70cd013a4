import datetime as dt
import struct
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from archive.exceptions import DatasetUnreadable
from archive.header import _date, _header_parse, _time, header_read, header_scan
from tests.conftest import sample_file
from tests.peers import dataset_bytes


def _encode(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _minimal(**values) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_reads_index_attributes_of_a_real_file():
    path = sample_file("CT_small.dcm")
    original = dcmread(path)
    header = header_read(dataset_bytes(path), ExplicitVRLittleEndian)
    assert header.sop_instance_uid == original.SOPInstanceUID
    assert header.patient_id == original.PatientID
    assert header.patient_name == str(original.PatientName)
    assert header.study_date == dt.date(2004, 1, 19)
    assert header.modality == "CT"
    assert header.instance_number == int(original.InstanceNumber)


def test_reads_implicit_and_deflated_datasets():
    ds = _minimal(PatientID="P1", Modality="MR")
    assert (
        header_read(_encode(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian).patient_id == "P1"
    )
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = compressor.compress(_encode(ds)) + compressor.flush()
    assert header_read(deflated, DeflatedExplicitVRLittleEndian).modality == "MR"


def test_bad_optional_values_become_empty_not_errors():
    ds = _minimal(StudyDate="2026-13-45", StudyTime="25:99", PatientBirthDate="unknown")
    # InstanceNumber (0020,0013) IS "abc ": appended raw, as pydicom refuses to encode it.
    encoded = _encode(ds) + struct.pack("<HH2sH", 0x0020, 0x0013, b"IS", 4) + b"abc "
    header = header_read(encoded, ExplicitVRLittleEndian)
    assert header.study_date is None
    assert header.study_time is None
    assert header.patient_birth_date is None
    assert header.instance_number is None


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_required_uid_is_unreadable(missing):
    ds = _minimal()
    delattr(ds, missing)
    with pytest.raises(DatasetUnreadable, match=missing):
        header_read(_encode(ds), ExplicitVRLittleEndian)


@pytest.mark.parametrize("uid", ["1.2.abc", "1.02.3", "1." + "2" * 70, "1..2"])
def test_invalid_uid_is_unreadable_with_strict_uids(uid):
    with pytest.raises(DatasetUnreadable, match="not a valid UID"):
        header_read(
            _encode(_minimal(SeriesInstanceUID=uid)), ExplicitVRLittleEndian, strict_uids=True
        )


@pytest.mark.parametrize("uid", ["1.2.abc", "1.02.3", "1." + "2" * 70, "1..2"])
def test_invalid_uid_is_kept_verbatim_and_flagged_by_default(uid):
    header = header_read(_encode(_minimal(SeriesInstanceUID=uid)), ExplicitVRLittleEndian)
    assert header.series_instance_uid == uid
    assert header.nonconforming_uids == ("SeriesInstanceUID",)


@pytest.mark.parametrize(
    ("uid", "why"), [("1." + "2" * 300, "longer than 255"), ("1.2\\1.3", "several values")]
)
def test_uid_the_index_cannot_hold_is_unreadable_even_when_lenient(uid, why):
    with pytest.raises(DatasetUnreadable, match=why):
        header_read(_encode(_minimal(SeriesInstanceUID=uid)), ExplicitVRLittleEndian)


def test_garbage_is_unreadable():
    with pytest.raises(DatasetUnreadable):
        header_read(b"\x08\x00\x18\x00UI\xff\xff" + b"\x01" * 64, ExplicitVRLittleEndian)
    with pytest.raises(DatasetUnreadable):
        header_read(b"not deflate at all", DeflatedExplicitVRLittleEndian)


def test_pixel_data_is_not_parsed():
    path = sample_file("CT_small.dcm")
    raw = dataset_bytes(path)
    pixel_tag = raw.rfind(b"\xe0\x7f\x10\x00")
    # Corrupt everything from the pixel data on: the header must still read.
    corrupted = raw[:pixel_tag] + b"\xff" * (len(raw) - pixel_tag)
    assert header_read(corrupted, ExplicitVRLittleEndian).modality == "CT"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260309", dt.date(2026, 3, 9)),
        ("2026.03.09", dt.date(2026, 3, 9)),
        ("20260230", None),
        ("", None),
    ],
)
def test_dates(text, expected):
    assert _date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("101530.25", dt.time(10, 15, 30, 250000)),
        ("1015", dt.time(10, 15)),
        ("10:15:30", dt.time(10, 15, 30)),
        ("235960", dt.time(23, 59, 59)),
        ("2560", None),
        ("", None),
    ],
)
def test_times(text, expected):
    assert _time(text) == expected


def _little_endian_samples() -> list:
    """pydicom's own sample files (those shipped with it, nothing downloaded) whose dataset is
    little endian and not deflated: the syntaxes the hand scanner reads."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent
    samples = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 200):
        try:
            meta = dcmread(path, stop_before_pixels=True).file_meta
            syntax = UID(meta.TransferSyntaxUID)
            data = dataset_bytes(path)
        except Exception:  # not a Part 10 file: pydicom ships other files too
            continue
        if syntax.is_little_endian and not syntax.is_deflated:
            samples.append(pytest.param(data, syntax.is_implicit_VR, id=path.name))
    return samples


@pytest.mark.parametrize(("data", "implicit"), _little_endian_samples())
def test_hand_scan_reads_what_pydicom_reads_or_leaves_it_to_pydicom(data, implicit):
    scanned = header_scan(data, implicit=implicit)
    if scanned is None:
        return  # left to pydicom: big values, code extensions, sequences it cannot skip
    assert scanned == _header_parse(data, deflated=False, implicit=implicit, little=True)


def test_hand_scan_covers_most_samples():
    scanned = [
        header_scan(param.values[0], implicit=param.values[1]) is not None
        for param in _little_endian_samples()
    ]
    assert len(scanned) > 100 and sum(scanned) > 0.8 * len(scanned)


def _nested_sequences(undefined: bool) -> Dataset:
    """Undefined-length (or defined-length) sequences, items in items, before later index
    attributes: the scanner must walk them to their delimiters and read on."""
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "9.9.9"
    inner.StudyInstanceUID = "0.0.0"  # inside an item: never the instance's own
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.SourceImageSequence = [inner]
    ds = _minimal(Modality="CT", ReferencedImageSequence=[item, Dataset()], SeriesNumber=7)
    for sequence in (ds["ReferencedImageSequence"], item["SourceImageSequence"]):
        sequence.is_undefined_length = undefined
        for child in sequence.value:
            child.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_hand_scan_walks_nested_sequences(undefined, syntax):
    data = _encode(_nested_sequences(undefined), syntax)
    implicit = syntax == ImplicitVRLittleEndian
    scanned = header_scan(data, implicit=implicit)
    assert scanned is not None
    assert scanned["StudyInstanceUID"] == "1.2.3.4"
    assert scanned["SeriesNumber"] == "7"
    assert scanned == _header_parse(data, deflated=False, implicit=implicit, little=True)


@pytest.mark.parametrize(
    "data",
    [
        # A VR the standard does not define: pydicom decides.
        b"\x08\x00\x60\x00ZZ\x02\x00CT",
        # An element running past the end of the data (a cut transfer).
        b"\x08\x00\x60\x00CS\x02\x00CT" + b"\x20\x00\x11\x00IS\x10\x00" + b"12",
        # A sequence whose item is never closed.
        b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + b"\x08\x00\x50\x11UI\x02\x001\x00",
    ],
    ids=["unknown-vr", "past-the-end", "item-not-closed"],
)
def test_hand_scan_leaves_what_it_cannot_read_to_pydicom(data):
    assert header_scan(data, implicit=False) is None
