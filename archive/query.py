"""The query service: DICOM attribute matching over the index (PS3.4 C.2.2.2), for C-FIND now
and QIDO-RS later.

It knows identifiers (pydicom Datasets of keys) and the index models, nothing of DIMSE: parse
an identifier into a `Query` with `query_parse`, then iterate matching identifiers with
`query_run`, or get the matching rows' queryset with `query_queryset` (retrieval does).

Matching runs in the database, on indexed columns where the index has them:

- single value, list of UIDs (`a\\b`), universal (zero length or `*` alone);
- wildcards `*` and `?` for text VRs other than DA/TM/DT/UI (GLOB on SQLite, LIKE elsewhere;
  a literal prefix `ABC*` is a range of the column's index: on SQLite always, on PostgreSQL
  where the index has varchar_pattern_ops, as the folded names' have, or the collation is C);
- ranges `a-b`, `-b`, `a-` for DA and TM (a TM of lower precision covers its whole span);
- PN case-insensitively by default (`case_insensitive_pn=False` for exact case): the key,
  folded as archive.person_names.person_name_fold folds it, against the name's folded copy
  that each row holds beside it (SQLite's UPPER() knows ASCII letters only); and a
  single component group also matches a name that has further groups (`Yamada^Tarou` matches
  `Yamada^Tarou=山田^太郎`).

Keys the index does not hold are returned empty, as PS3.4 C.2.2.1.1 allows, and do not
restrict the matches (C-FIND then answers 0xFF01). No indexed attribute lives in a sequence, so
sequence matching (C.2.2.2.6) never restricts either: a sequence key (e.g.
ReferencedStudySequence, RequestAttributesSequence) comes back as a zero-length sequence, and
one whose item gives a key a value counts as a key not matched. A key of a level below the
query's is an error (`QueryInvalid`).
"""

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from archive import dicom_bytes
from archive.models import Instance, Patient, Series, Study
from archive.person_names import person_name_fold

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
_DEPTH = {level: i for i, level in enumerate(LEVELS)}
_MODEL: dict[str, type[models.Model]] = {
    PATIENT: Patient,
    STUDY: Study,
    SERIES: Series,
    IMAGE: Instance,
}
# ORM path from a level's model to the model of an attribute's level (attribute level → path).
_PATH = {
    PATIENT: {PATIENT: ""},
    STUDY: {PATIENT: "patient__", STUDY: ""},
    SERIES: {PATIENT: "study__patient__", STUDY: "study__", SERIES: ""},
    IMAGE: {
        PATIENT: "series__study__patient__",
        STUDY: "series__study__",
        SERIES: "series__",
        IMAGE: "",
    },
}


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str
    field: str
    vr: str
    unique: bool = False
    # PN: the column holding the name's folded form, matched case-insensitively.
    fold: str = ""


ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("PatientID", PATIENT, "patient_id", "LO", unique=True),
        Attribute("IssuerOfPatientID", PATIENT, "issuer_of_patient_id", "LO"),
        Attribute("PatientName", PATIENT, "name", "PN", fold="name_fold"),
        Attribute("PatientBirthDate", PATIENT, "birth_date", "DA"),
        Attribute("PatientSex", PATIENT, "sex", "CS"),
        Attribute("StudyInstanceUID", STUDY, "study_instance_uid", "UI", unique=True),
        Attribute("StudyDate", STUDY, "study_date", "DA"),
        Attribute("StudyTime", STUDY, "study_time", "TM"),
        Attribute("AccessionNumber", STUDY, "accession_number", "SH"),
        Attribute("StudyID", STUDY, "study_id", "SH"),
        Attribute("StudyDescription", STUDY, "description", "LO"),
        Attribute(
            "ReferringPhysicianName",
            STUDY,
            "referring_physician_name",
            "PN",
            fold="referring_physician_name_fold",
        ),
        Attribute("SeriesInstanceUID", SERIES, "series_instance_uid", "UI", unique=True),
        Attribute("Modality", SERIES, "modality", "CS"),
        Attribute("SeriesNumber", SERIES, "series_number", "IS"),
        Attribute("SeriesDescription", SERIES, "description", "LO"),
        Attribute("BodyPartExamined", SERIES, "body_part_examined", "CS"),
        Attribute("SOPInstanceUID", IMAGE, "sop_instance_uid", "UI", unique=True),
        Attribute("SOPClassUID", IMAGE, "sop_class_uid", "UI"),
        Attribute("InstanceNumber", IMAGE, "instance_number", "IS"),
    )
}
UNIQUE_KEYS = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}

# Computed attributes: keyword → (level, how it is computed).
COMPUTED: dict[str, tuple[str, str]] = {
    "NumberOfPatientRelatedStudies": (PATIENT, "count"),
    "NumberOfPatientRelatedSeries": (PATIENT, "count"),
    "NumberOfPatientRelatedInstances": (PATIENT, "count"),
    "NumberOfStudyRelatedSeries": (STUDY, "count"),
    "NumberOfStudyRelatedInstances": (STUDY, "count"),
    "ModalitiesInStudy": (STUDY, "set"),
    "SOPClassesInStudy": (STUDY, "set"),
    "NumberOfSeriesRelatedInstances": (SERIES, "count"),
    "InstanceAvailability": (IMAGE, "constant"),
}
_COUNTS = {
    "NumberOfPatientRelatedStudies": (Study, "patient"),
    "NumberOfPatientRelatedSeries": (Series, "study__patient"),
    "NumberOfPatientRelatedInstances": (Instance, "series__study__patient"),
    "NumberOfStudyRelatedSeries": (Series, "study"),
    "NumberOfStudyRelatedInstances": (Instance, "series__study"),
    "NumberOfSeriesRelatedInstances": (Instance, "series"),
}
# Never keys: they describe the query itself.
_IGNORED = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "RetrieveAETitle",
    "TimezoneOffsetFromUTC",
}
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}


class QueryInvalid(ValueError):
    """The identifier cannot be matched: unsupported level, a key of a lower level, a
    malformed value. The message says which key."""


@dataclass(frozen=True)
class Query:
    """What to match and what to return, at one level of one information model."""

    level: str
    # keyword → the key's value as text (backslash-separated for several values).
    keys: dict[str, str] = field(default_factory=dict)
    # Keywords to return, in the identifier's order (including those we return empty).
    return_keys: tuple[str, ...] = ()
    # Keys with a value that the index cannot match on (returned empty, not matched).
    unmatched: tuple[str, ...] = ()

    @property
    def matching_keys(self) -> dict[str, str]:
        return {k: v for k, v in self.keys.items() if not _universal(v)}


def query_parse(identifier: Dataset, *, model: str, level: str | None = None) -> Query:
    """The query an identifier asks for; `level` overrides the identifier's
    QueryRetrieveLevel. Raises QueryInvalid for an unsupported level in `model`
    (PATIENT_ROOT or STUDY_ROOT), a keyed attribute below the level, or a malformed value."""
    if level is None:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryInvalid(f"unsupported QueryRetrieveLevel {level!r}")
    if model == STUDY_ROOT and level == PATIENT:
        raise QueryInvalid("the Study Root information model has no PATIENT level")
    keys: dict[str, str] = {}
    order: list[str] = []
    unmatched: list[str] = []
    for element in identifier:
        tag = element.tag
        if tag.group in (0x0000, 0x0002) or tag.is_private:
            continue
        keyword = element.keyword or keyword_for_tag(tag)
        if not keyword or keyword in _IGNORED:
            continue
        if element.VR == "SQ":
            # Nothing the index holds lives in a sequence (PS3.4 C.2.2.2.6): the key is
            # returned as a zero-length sequence; an item key with a value cannot be matched.
            order.append(keyword)
            if _sequence_keyed(element.value):
                unmatched.append(keyword)
            continue
        text = _text(element.value)
        attribute_level = (
            ATTRIBUTES[keyword].level
            if keyword in ATTRIBUTES
            else COMPUTED.get(keyword, (None,))[0]
        )
        if attribute_level is not None and _DEPTH[attribute_level] > _DEPTH[level]:
            if not _universal(text):
                raise QueryInvalid(
                    f"{keyword} is a key of the {attribute_level} level, below {level}"
                )
            order.append(keyword)  # returned empty
            continue
        order.append(keyword)
        if keyword in ATTRIBUTES or keyword == "ModalitiesInStudy":
            keys[keyword] = text
            _check(keyword, text)
        elif not _universal(text) and element.VR != "SQ":
            unmatched.append(keyword)
    return Query(level=level, keys=keys, return_keys=tuple(order), unmatched=tuple(unmatched))


def _sequence_keyed(items: Any) -> bool:
    """Whether any item of a sequence key (at any depth) gives a key a value."""
    for item in items or []:
        for element in item:
            if element.VR == "SQ":
                if _sequence_keyed(element.value):
                    return True
            elif not _universal(_text(element.value)):
                return True
    return False


def _level_of(keyword: str) -> str | None:
    if keyword in ATTRIBUTES:
        return ATTRIBUTES[keyword].level
    return COMPUTED[keyword][0] if keyword in COMPUTED else None


def query_queryset(query: Query, *, case_insensitive_pn: bool = True) -> QuerySet:
    """The rows of the query's level that match its keys."""
    level = query.level
    queryset = _MODEL[level].objects.all()
    for keyword, text in query.matching_keys.items():
        if keyword == "ModalitiesInStudy":
            path = _PATH[level][STUDY]
            series = Series.objects.filter(_text_match("modality", text, "CS"))
            queryset = queryset.filter(**{f"{path}pk__in": series.values("study_id")})
            continue
        attribute = ATTRIBUTES[keyword]
        path = _PATH[level][attribute.level] + attribute.field
        if attribute.vr == "PN" and case_insensitive_pn and not _is_list(text):
            folded = _PATH[level][attribute.level] + attribute.fold
            queryset = queryset.filter(_pn_match(folded, person_name_fold(text.strip(" "))))
        else:
            queryset = queryset.filter(_match(path, text, attribute.vr))
    return queryset.order_by()


def query_run(
    query: Query,
    *,
    case_insensitive_pn: bool = True,
    include_all: bool = False,
    limit: int | None = None,
    offset: int = 0,
    chunk_size: int = 100,
) -> Iterator[Dataset]:
    """The matching identifiers, one Dataset per match, streamed from the database.

    Each holds the requested return keys (or, with `include_all`, every attribute the index
    holds at the query's level and above, and its computed attributes), the unique keys of
    the level and those above it, and QueryRetrieveLevel. Text is Unicode; SpecificCharacterSet
    is ISO_IR 192 when any value is not ASCII (or when it was asked for).
    """
    run = _Run(query, case_insensitive_pn, include_all, limit, offset, chunk_size)
    for values, non_ascii in run.matches():
        ds = Dataset()
        for keyword, value in values:
            _set(ds, keyword, value)
        if non_ascii or run.charset_asked:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = query.level
        yield ds


def query_run_encoded(
    query: Query,
    *,
    explicit_vr: bool,
    extra: dict[str, str] | None = None,
    case_insensitive_pn: bool = True,
    chunk_size: int = 100,
) -> Iterator[bytes]:
    """As `query_run`, each identifier encoded in little endian, explicit or implicit VR,
    with the `extra` text attributes added (e.g. RetrieveAETitle); what C-FIND sends.

    Written element by element (archive.dicom_bytes) instead of building and encoding a
    pydicom Dataset, which cost about half a millisecond per match (bench/qr.py: the modality
    query's 20 matches took 37-39 ms at 1,000,000 instances). A key whose dictionary VR is
    ambiguous (`US or SS`) is rare enough to go through pydicom.
    """
    run = _Run(query, case_insensitive_pn, False, None, 0, chunk_size)
    extra = extra or {}
    names = [*run.returned, *extra, "QueryRetrieveLevel", "SpecificCharacterSet"]
    layout = {}
    for keyword in names:
        try:
            tag, vr = tag_for_keyword(keyword), dictionary_VR(keyword)
        except KeyError:
            continue  # _set skips these too
        if tag is not None:
            layout[keyword] = (tag >> 16, tag & 0xFFFF, vr)
    simple = all(len(vr) == 2 for _, _, vr in layout.values())
    for values, non_ascii in run.matches():
        items = [(k, v) for k, v in values if k in layout]
        items += list(extra.items())
        items.append(("QueryRetrieveLevel", query.level))
        if non_ascii or run.charset_asked:
            items.append(("SpecificCharacterSet", "ISO_IR 192"))
        if not simple:
            ds = Dataset()
            for keyword, value in items:
                _set(ds, keyword, value)
            yield _pydicom_encode(ds, explicit_vr)
            continue
        elements = {}
        for keyword, value in items:
            group, element, vr = layout[keyword]
            elements[(group, element)] = _element_bytes(group, element, vr, value, explicit_vr)
        yield b"".join(elements[key] for key in sorted(elements))


def _element_bytes(group: int, element: int, vr: str, value: Any, explicit_vr: bool) -> bytes:
    if vr == "SQ" or value is None or value == "" or value == []:
        raw = b""
    else:
        text = "\\".join(value) if isinstance(value, list) else str(value)
        raw = text.encode("utf-8")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    if not explicit_vr:
        return dicom_bytes.ELEMENT_IMPLICIT.pack(group, element, len(raw)) + raw
    return dicom_bytes.explicit_element(group, element, vr.encode("ascii"), raw)


def _pydicom_encode(ds: Dataset, explicit_vr: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = not explicit_vr
    buffer.is_little_endian = True
    write_dataset(buffer, ds)
    return buffer.getvalue()


class _Run:
    """One query's rows, streamed in batches, and the values of each match's return keys."""

    def __init__(
        self,
        query: Query,
        case_insensitive_pn: bool,
        include_all: bool,
        limit: int | None,
        offset: int,
        chunk_size: int,
    ) -> None:
        level = self.level = query.level
        returned = list(query.return_keys)
        if include_all:
            returned += [k for k, a in ATTRIBUTES.items() if _DEPTH[a.level] <= _DEPTH[level]]
            returned += [k for k, (lv, _) in COMPUTED.items() if lv == level]
        for upper in LEVELS[: _DEPTH[level] + 1]:
            returned.append(UNIQUE_KEYS[upper])
        self.returned = returned = list(dict.fromkeys(returned))

        queryset = query_queryset(query, case_insensitive_pn=case_insensitive_pn)
        columns = self.columns = {"pk": "pk"}
        for keyword in returned:
            attribute = ATTRIBUTES.get(keyword)
            if attribute is not None and _DEPTH[attribute.level] <= _DEPTH[level]:
                columns[keyword] = _PATH[level][attribute.level] + attribute.field
        counts = {}
        for keyword in returned:
            if keyword in _COUNTS and _DEPTH[COMPUTED[keyword][0]] <= _DEPTH[level]:
                model, fk = _COUNTS[keyword]
                outer = _PATH[level][COMPUTED[keyword][0]] + "pk"
                counts[f"_n_{keyword}"] = Coalesce(
                    Subquery(
                        model.objects.filter(**{fk: OuterRef(outer)})
                        .order_by()
                        .values(fk)
                        .annotate(n=Count("*"))
                        .values("n")[:1]
                    ),
                    Value(0),
                )
        if counts:
            queryset = queryset.annotate(**counts)
        study_pk = self.study_pk = (
            _PATH[level][STUDY] + "pk" if _DEPTH[level] >= _DEPTH[STUDY] else None
        )
        self.sets = sets = [k for k in returned if COMPUTED.get(k, (None, None))[1] == "set"]
        fields = list(dict.fromkeys([*columns.values(), *counts]))
        if sets and study_pk:
            fields.append(study_pk)
        rows = queryset.values(*fields)
        if limit is not None or offset:
            rows = rows.order_by("pk")[offset : None if limit is None else offset + limit]
            self.rows: Iterator[dict[str, Any]] = iter(rows)
        else:
            self.rows = rows.iterator(chunk_size=chunk_size)
        self.chunk_size = chunk_size
        self.charset_asked = "SpecificCharacterSet" in query.return_keys

    def matches(self) -> Iterator[tuple[list[tuple[str, Any]], bool]]:
        """Each match's (keyword, value) pairs and whether any value is not ASCII."""
        batch: list[dict[str, Any]] = []
        for row in self.rows:
            batch.append(row)
            if len(batch) >= self.chunk_size:
                yield from _identifiers(
                    batch, self.level, self.returned, self.columns, self.sets, self.study_pk
                )
                batch = []
        if batch:
            yield from _identifiers(
                batch, self.level, self.returned, self.columns, self.sets, self.study_pk
            )


def _identifiers(
    rows: list[dict[str, Any]],
    level: str,
    returned: list[str],
    columns: dict[str, str],
    sets: list[str],
    study_pk: str | None,
) -> Iterator[tuple[list[tuple[str, Any]], bool]]:
    per_study: dict[str, dict[int, list[str]]] = {}
    if sets and study_pk:
        study_ids = {row[study_pk] for row in rows}
        if "ModalitiesInStudy" in sets:
            per_study["ModalitiesInStudy"] = _grouped(
                Series.objects.filter(study_id__in=study_ids).values_list("study_id", "modality")
            )
        if "SOPClassesInStudy" in sets:
            per_study["SOPClassesInStudy"] = _grouped(
                Instance.objects.filter(series__study_id__in=study_ids).values_list(
                    "series__study_id", "sop_class_uid"
                )
            )
    for row in rows:
        values: list[tuple[str, Any]] = []
        non_ascii = False
        for keyword in returned:
            if keyword in columns:
                value = _format(row[columns[keyword]], ATTRIBUTES[keyword].vr)
            elif f"_n_{keyword}" in row:
                value = str(row[f"_n_{keyword}"])
            elif keyword in per_study and study_pk:
                value = per_study[keyword].get(row[study_pk], [])
            elif keyword == "InstanceAvailability":
                value = "ONLINE"
            else:
                value = None
            values.append((keyword, value))
            if isinstance(value, str) and not value.isascii():
                non_ascii = True
        yield values, non_ascii


def _grouped(pairs: Any) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for key, value in pairs.distinct():
        if value and value not in grouped.setdefault(key, []):
            grouped[key].append(value)
    for values in grouped.values():
        values.sort()
    return grouped


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    try:
        vr = dictionary_VR(keyword)
    except KeyError:
        return
    if vr == "SQ":
        setattr(ds, keyword, [])
        return
    if value in (None, "", []):
        ds.add_new(keyword, vr, None)
    else:
        ds.add_new(keyword, vr, value)


def _format(value: Any, vr: str) -> str | None:
    if value is None or value == "":
        return None
    if vr == "DA":
        return value.strftime("%Y%m%d")
    if vr == "TM":
        text = value.strftime("%H%M%S")
        return f"{text}.{value.microsecond:06d}" if value.microsecond else text
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _universal(text: str) -> bool:
    return text.strip(" ") in ("", "*")


def _is_list(text: str) -> bool:
    return "\\" in text


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def _check(keyword: str, text: str) -> None:
    """Raise QueryInvalid for a value that no matching rule accepts."""
    if _universal(text):
        return
    vr = ATTRIBUTES[keyword].vr if keyword in ATTRIBUTES else "CS"
    try:
        if vr == "DA":
            _date_range(text)
        elif vr == "TM":
            _time_range(text)
        elif vr == "IS":
            [int(v) for v in text.split("\\")]
        elif vr == "UI":
            if "*" in text or "?" in text:
                raise ValueError("wildcards are not allowed in UIDs")
            if any(len(v.strip()) > 64 for v in text.split("\\")):
                raise ValueError("longer than 64 characters")
    except ValueError as exc:
        raise QueryInvalid(f"{keyword}: malformed value {text!r}: {exc}") from None


def _date(text: str) -> dt.date:
    text = text.strip()
    if not _DATE.match(text):
        raise ValueError("expected YYYYMMDD")
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _date_range(text: str) -> tuple[dt.date | None, dt.date | None]:
    if "-" not in text:
        day = _date(text)
        return day, day
    low, _, high = text.partition("-")
    if not low.strip() and not high.strip():
        raise ValueError("a range needs at least one end")
    return (_date(low) if low.strip() else None, _date(high) if high.strip() else None)


def _time_bounds(text: str) -> tuple[dt.time, dt.time]:
    """The earliest and latest times a TM value of its precision stands for."""
    match = _TIME.match(text.strip().replace(":", ""))
    if not match:
        raise ValueError("expected HHMMSS.FFFFFF")
    hours, minutes, seconds, fraction = match.groups()
    h = int(hours)
    low = dt.time(
        h,
        int(minutes or 0),
        int(seconds or 0),
        int((fraction or "0").ljust(6, "0")),
    )
    high = dt.time(
        h,
        int(minutes) if minutes else 59,
        int(seconds) if seconds else 59,
        int(fraction.ljust(6, "0")) if fraction else 999999,
    )
    return low, high


def _time_range(text: str) -> tuple[dt.time | None, dt.time | None]:
    if "-" not in text:
        return _time_bounds(text)
    low, _, high = text.partition("-")
    if not low.strip() and not high.strip():
        raise ValueError("a range needs at least one end")
    return (
        _time_bounds(low)[0] if low.strip() else None,
        _time_bounds(high)[1] if high.strip() else None,
    )


def _match(path: str, text: str, vr: str) -> Q:
    if vr == "UI":
        uids = [v.strip() for v in text.split("\\") if v.strip()]
        return Q(**{path: uids[0]}) if len(uids) == 1 else Q(**{f"{path}__in": uids})
    if vr == "DA":
        low, high = _date_range(text)
        return _range(path, low, high)
    if vr == "TM":
        low, high = _time_range(text)
        return _range(path, low, high)
    if vr == "IS":
        numbers = [int(v) for v in text.split("\\")]
        return Q(**{f"{path}__in": numbers})
    if vr == "PN":
        return _pn_match(path, text.strip(" "))
    return _text_match(path, text, vr)


def _range(path: str, low: Any, high: Any) -> Q:
    if low is not None and high is not None:
        return Q(**{f"{path}__range": (low, high)})
    if low is not None:
        return Q(**{f"{path}__gte": low})
    return Q(**{f"{path}__lte": high})


def _text_match(path: str, text: str, vr: str) -> Q:
    values = [v.strip(" ") for v in text.split("\\")] if vr == "CS" else [text.strip(" ")]
    condition = Q()
    for value in values:
        if vr in _WILDCARD_VRS and ("*" in value or "?" in value):
            condition |= _wildcard(path, value)
        else:
            condition |= Q(**{path: value})
    return condition


def _pn_match(path: str, value: str) -> Q:
    """A name, or its first component groups: `Yamada^Tarou` also matches
    `Yamada^Tarou=山田^太郎`."""
    if "*" in value or "?" in value:
        condition = _wildcard(path, value)
        if not value.endswith("*") and "=" not in value:
            condition |= _wildcard(path, value + "=*")
        return condition
    condition = Q(**{path: value})
    if "=" not in value:
        condition |= _wildcard(path, value + "=*")
    return condition


def _wildcard(path: str, pattern: str) -> Q:
    # A literal prefix (`ABC*`) is a range scan on the column's index: SQLite does it for GLOB
    # on a column of BINARY collation, PostgreSQL for LIKE on a varchar_pattern_ops index (or
    # any index under the C collation).
    return Q(**{f"{path}__dicom_wildcard": pattern})


@models.CharField.register_lookup
class DicomWildcard(models.Lookup):
    """`*` any run of characters, `?` any one character; everything else literal and
    case-sensitive (GLOB on SQLite, LIKE with escapes elsewhere)."""

    lookup_name = "dicom_wildcard"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        pattern = str(self.rhs)
        if connection.vendor == "sqlite":
            glob = pattern.replace("[", "\0").replace("]", "[]]").replace("\0", "[[]")
            return f"{lhs} GLOB %s", [*lhs_params, glob]
        like = (
            pattern.replace("\\", "\\\\")
            .replace("%", "\\%")
            .replace("_", "\\_")
            .replace("*", "%")
            .replace("?", "_")
        )
        return f"{lhs} LIKE %s ESCAPE '\\'", [*lhs_params, like]
