"""Read the index attributes from an encoded dataset without decoding the rest of it.

Everything the index needs sits in groups 0x0008-0x0020, so parsing stops before the first
element of a later group: pixel data is never touched, which keeps ingest cost independent of
image size.

Datasets in little endian syntaxes with a plain character set (the common case) are scanned
here, element by element, in a few tens of microseconds; anything else (big endian, deflate,
ISO 2022 code extensions, multi-valued text, an encoding we would have to guess at) goes through
pydicom, which takes ten times longer. tests/archive/test_header.py checks that both agree on
pydicom's sample files.
"""

import datetime as dt
import functools
import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import RE_VALID_UID, UID

from archive import dicom_bytes
from archive.dicomfile import inflate_bounded
from archive.exceptions import DatasetUnreadable

_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "BodyPartExamined",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyID",
    "SeriesNumber",
    "InstanceNumber",
)
_TAGS: list[BaseTag | int] = [Tag(keyword) for keyword in _KEYWORDS]
_LAST_GROUP = 0x0020
# pydicom's UID.is_valid (PS3.5 9.1), without building a UID object per check.
_VALID_UID = re.compile(RE_VALID_UID)
# How much of a large dataset is read for its header: groups up to 0x0020 never need more.
HEADER_PREFIX = 16 * 2**20
# The longest instance, series or study UID the index keeps (archive.models.UID_KEPT): PS3.5
# allows 64 characters, but real senders and anonymisers exceed it.
UID_KEPT = 255
_IDENTIFYING_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes the index keeps, decoded to Python values (text already in Unicode)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    study_date: dt.date | None = None
    study_time: dt.time | None = None
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    # Which of the identifying UIDs break PS3.5 9.1 (letters, leading zeros, too long, ...):
    # kept verbatim unless storage.strict_uids refuses them.
    nonconforming_uids: tuple[str, ...] = ()


def _stop_after_index_groups(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > _LAST_GROUP


@functools.lru_cache(maxsize=64)
def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(deflated, implicit VR, little endian) of a transfer syntax."""
    syntax = UID(transfer_syntax_uid)
    return syntax.is_deflated, syntax.is_implicit_VR, syntax.is_little_endian


def header_read(
    dataset_bytes: bytes, transfer_syntax_uid: str, *, strict_uids: bool = False
) -> InstanceHeader:
    """Parse the index attributes of an encoded dataset (no file meta group), or of its first
    HEADER_PREFIX bytes.

    Raises DatasetUnreadable if the bytes cannot be parsed or a required UID is missing, or
    unusable (control characters, longer than UID_KEPT); with `strict_uids`, also if one
    breaks PS3.5's UID syntax (otherwise the header lists it in `nonconforming_uids`).
    """
    deflated, implicit, little = _syntax(transfer_syntax_uid)
    values = None
    if little and not deflated:
        values = header_scan(dataset_bytes, implicit=implicit)
    if values is None:
        values = _header_parse(dataset_bytes, deflated=deflated, implicit=implicit, little=little)
    return _header(values, strict_uids=strict_uids)


def _header_parse(
    dataset_bytes: bytes, *, deflated: bool, implicit: bool, little: bool
) -> dict[str, str]:
    """The index attributes as text, read by pydicom."""
    if deflated:
        try:
            # Only as much as the index groups can need: 0.5 MB of deflate can inflate to 512
            # MiB. A stream cut short is fine for the header, which comes first.
            dataset_bytes, _ = inflate_bounded(dataset_bytes, HEADER_PREFIX)
        except zlib.error as exc:
            raise DatasetUnreadable(f"deflated dataset does not inflate: {exc}") from exc
    try:
        ds = read_dataset(
            io.BytesIO(dataset_bytes),
            is_implicit_VR=implicit,
            is_little_endian=little,
            stop_when=_stop_after_index_groups,
            specific_tags=_TAGS,
        )
        values = {keyword: _value(ds, keyword) for keyword in _KEYWORDS[1:]}
    except Exception as exc:  # pydicom raises many kinds on corrupt input; all mean the same here
        raise DatasetUnreadable(f"dataset cannot be parsed: {exc}") from exc
    return values


def _header(values: dict[str, str], *, strict_uids: bool) -> InstanceHeader:
    nonconforming = []
    for keyword in _IDENTIFYING_UIDS:
        uid = values[keyword]
        if not uid:
            raise DatasetUnreadable(f"{keyword} is missing")
        if len(uid) <= 64 and _VALID_UID.match(uid):
            continue
        if strict_uids:
            raise DatasetUnreadable(f"{keyword} is not a valid UID: {uid[:80]!r}")
        # What DCMTK's storescp and Orthanc store too, as long as the index can hold it.
        if len(uid) > UID_KEPT:
            raise DatasetUnreadable(f"{keyword} is longer than {UID_KEPT} characters")
        if not uid.isprintable() or "\\" in uid:
            raise DatasetUnreadable(f"{keyword} holds control characters or several values")
        nonconforming.append(keyword)

    return InstanceHeader(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        patient_id=values["PatientID"],
        issuer_of_patient_id=values["IssuerOfPatientID"],
        patient_name=values["PatientName"],
        patient_birth_date=_date(values["PatientBirthDate"]),
        patient_sex=values["PatientSex"],
        study_date=_date(values["StudyDate"]),
        study_time=_time(values["StudyTime"]),
        accession_number=values["AccessionNumber"],
        study_id=values["StudyID"],
        study_description=values["StudyDescription"],
        referring_physician_name=values["ReferringPhysicianName"],
        modality=values["Modality"],
        series_number=_integer(values["SeriesNumber"]),
        series_description=values["SeriesDescription"],
        body_part_examined=values["BodyPartExamined"],
        instance_number=_integer(values["InstanceNumber"]),
        nonconforming_uids=tuple(nonconforming),
    )


def _value(ds: Dataset, keyword: str) -> str:
    """The element's value as text ('' when absent); multi-valued elements keep the backslash.

    A value that does not convert to its VR (an IS of "abc") falls back to its raw text: a bad
    optional attribute must not cost the sender its C-STORE.
    """
    tag = Tag(keyword)
    if tag not in ds:
        return ""
    try:
        value: Any = ds[tag].value
    except Exception:
        raw = ds.get_item(tag).value
        return raw.decode("latin-1").strip(" \0") if isinstance(raw, bytes) else ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \0")
    if isinstance(value, str):
        return value.strip(" \0")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip(" \0")
    return str(value).strip(" \0")


def _date(text: str) -> dt.date | None:
    """DA is YYYYMMDD; legacy senders use YYYY.MM.DD. Anything else is no date, never an error."""
    digits = text.replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _time(text: str) -> dt.time | None:
    """TM is HH[MM[SS[.FFFFFF]]]; legacy senders use HH:MM:SS."""
    text = text.replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return None
    try:
        micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
        return dt.time(
            int(whole[:2]),
            int(whole[2:4] or 0),
            min(int(whole[4:6] or 0), 59),  # TM allows a leap second 60; time() does not
            micro,
        )
    except ValueError:
        return None


def _integer(text: str) -> int | None:
    try:
        number = int(text.split("\\")[0].strip())
    except ValueError:
        return None
    # Keep within a 32-bit column on every database backend.
    return number if -(2**31) <= number < 2**31 else None


_LONG_VRS = dicom_bytes.LONG_VRS
_WANTED = {int(Tag(keyword)): keyword for keyword in _KEYWORDS}
# Python codecs of the character sets decoded here; others (ISO 2022 escapes, GB18030, ...)
# are left to pydicom. pydicom reads the default repertoire as ISO 8859-1 too.
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_PERSON_NAMES = frozenset(("PatientName", "ReferringPhysicianName"))
_UNDEFINED = dicom_bytes.UNDEFINED_LENGTH
_ITEM, _ITEM_END, _SEQUENCE_END = dicom_bytes.ITEM, dicom_bytes.ITEM_END, dicom_bytes.SEQUENCE_END
# Bound once: the scan below runs per element.
_HEAD = dicom_bytes.ELEMENT_IMPLICIT
_HEAD_EXPLICIT = dicom_bytes.ELEMENT_EXPLICIT_SHORT
_LONG = dicom_bytes.UINT32
_SHORT_VRS = dicom_bytes.SHORT_VRS
_NOTHING: dict[int, str] = {}


class _Unscannable(Exception):
    """Something the scanner leaves to pydicom."""


def header_scan(data: bytes, *, implicit: bool) -> dict[str, str] | None:
    """The index attributes of a little endian dataset as text, or None when pydicom must read
    it (see the module's docstring)."""
    raw: dict[str, bytes] = {}
    try:
        _elements(data, 0, implicit, raw)
    except (_Unscannable, struct.error, RecursionError):
        return None
    charset = raw.pop("SpecificCharacterSet", b"").decode("latin-1").strip(" \0")
    codec = _CODECS.get(charset)
    if codec is None:
        return None
    values = dict.fromkeys(_KEYWORDS[1:], "")
    for keyword, value in raw.items():
        if b"\\" in value:
            return None  # multi-valued: pydicom's splitting and stripping decide
        text = value.decode(codec, errors="replace").strip(" \0")
        if keyword in _PERSON_NAMES:
            text = text.rstrip("=")  # pydicom drops empty trailing component groups
        values[keyword] = text
    return values


def _elements(data: bytes, offset: int, implicit: bool, wanted: dict[str, bytes] | None) -> int:
    """Walk data elements from `offset`. At the top level (`wanted` given) collect the wanted
    values and stop after the index groups; inside a sequence item stop after its delimiter.
    Returns the offset reached.

    A real CT header holds 100-150 elements before group 0x0028, so this loop runs that often
    per instance. One unpack per element header, set look-ups for the VR and one bounds check
    after the loop (an element running past the data ends it) about halved its cost against a
    tag read, a length read, two string tests and a bounds check per element.
    """
    end = len(data)
    top = wanted is not None
    if wanted is None:
        wanted, get, last = {}, _NOTHING.get, 0xFFFD  # inside an item, up to its delimiter
    else:
        get, last = _WANTED.get, _LAST_GROUP
    if implicit:
        unpack = _HEAD.unpack_from
        while offset < end:
            group, element, length = unpack(data, offset)
            if group > last:
                return _past_last(group, element, offset, top)
            offset += 8
            if length == _UNDEFINED:  # only a sequence can have it here (PS3.5 7.5.1)
                offset = _sequence_skip(data, offset, implicit)
                continue
            if (keyword := get(group << 16 | element)) is not None:
                wanted[keyword] = data[offset : offset + length]
            offset += length
    else:
        unpack, unpack_long = _HEAD_EXPLICIT.unpack_from, _LONG.unpack_from
        short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
        while offset < end:
            group, element, vr, length = unpack(data, offset)
            if group > last:
                return _past_last(group, element, offset, top)
            if vr in short_vrs:
                offset += 8
            elif vr in long_vrs:
                (length,) = unpack_long(data, offset + 8)
                offset += 12
                if length == _UNDEFINED:
                    if vr != b"SQ":
                        raise _Unscannable("undefined length outside a sequence")
                    offset = _sequence_skip(data, offset, implicit)
                    continue
            else:
                raise _Unscannable("not an explicit VR")
            if (keyword := get(group << 16 | element)) is not None:
                wanted[keyword] = data[offset : offset + length]
            offset += length
    if offset > end:
        raise _Unscannable("element runs past the data")
    if not top:
        raise _Unscannable("sequence item not closed")
    return offset


def _past_last(group: int, element: int, offset: int, top: bool) -> int:
    """Where the walk ends at an element past its last group: before it at the top level,
    after it when it closes the item being walked."""
    if top:
        return offset
    if group << 16 | element == _ITEM_END:
        return offset + 8
    raise _Unscannable("a delimiter that does not close the item")


def _sequence_skip(data: bytes, offset: int, implicit: bool) -> int:
    """Skip the items of an undefined-length sequence; return the offset after its end."""
    while True:
        tag_group, tag_element, length = _HEAD.unpack_from(data, offset)
        tag = tag_group << 16 | tag_element
        offset += 8
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _Unscannable("not a sequence item")
        if length == _UNDEFINED:
            offset = _elements(data, offset, implicit, None)
        else:
            offset += length
