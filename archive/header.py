"""Read the index attributes from an encoded dataset without decoding the rest of it.

Everything the index needs sits in groups 0x0008-0x0020, so parsing stops before the first
element of a later group: pixel data is never touched, which keeps ingest cost independent of
image size.
"""

import datetime as dt
import io
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

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
# How much of a large dataset is read for its header: groups up to 0x0020 never need more.
HEADER_PREFIX = 16 * 2**20


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


def _stop_after_index_groups(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > _LAST_GROUP


def header_read(dataset_bytes: bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Parse the index attributes of an encoded dataset (no file meta group), or of its first
    HEADER_PREFIX bytes.

    Raises DatasetUnreadable if the bytes cannot be parsed or a required UID is missing or invalid.
    """
    syntax = UID(transfer_syntax_uid)
    if syntax.is_deflated:
        try:
            # A decompressor object, not zlib.decompress: `dataset_bytes` may be only the start
            # of a large dataset, and a truncated stream is fine for the header.
            dataset_bytes = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset_bytes)
        except zlib.error as exc:
            raise DatasetUnreadable(f"deflated dataset does not inflate: {exc}") from exc
    implicit = syntax.is_implicit_VR
    little = syntax.is_little_endian
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

    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = values[keyword]
        if not uid:
            raise DatasetUnreadable(f"{keyword} is missing")
        if not UID(uid).is_valid:
            raise DatasetUnreadable(f"{keyword} is not a valid UID: {uid[:80]!r}")

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
