"""QIDO-RS (PS3.18 10.6): query parameters → an identifier for the one query service
(archive.query, shared with C-FIND) → DICOM JSON."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.http import QueryDict
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from archive.query import (
    IMAGE,
    SERIES,
    STUDY,
    STUDY_ROOT,
    Query,
    QueryInvalid,
    query_parse,
    query_run,
)

# PS3.18 Tables 10.6.3-3 to -5: what every match returns, beside includefield.
DEFAULT_FIELDS = {
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "BodyPartExamined",
    ),
    IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "InstanceAvailability"),
}
# Keys of the study level also returned by `series` and `instances` searches at the root.
_UPPER_DEFAULTS = {
    SERIES: DEFAULT_FIELDS[STUDY],
    IMAGE: DEFAULT_FIELDS[STUDY] + DEFAULT_FIELDS[SERIES],
}
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
MAX_LIMIT = 10_000


class QidoInvalid(ValueError):
    """A query parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class Search:
    query: Query
    include_all: bool
    limit: int | None
    offset: int
    fuzzy: bool


def _keyword(name: str) -> str:
    """A keyword from a keyword or an 8-hex-digit tag; QidoInvalid for neither."""
    name = name.strip()
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QidoInvalid(f"unknown attribute tag {name}")
        return keyword
    if tag_for_keyword(name) is None:
        raise QidoInvalid(f"unknown attribute {name!r}")
    return name


def search_parse(params: QueryDict, *, level: str, path_keys: dict[str, str]) -> Search:
    """The search a QIDO-RS request asks for. `path_keys` are the UIDs of the URL
    (StudyInstanceUID for studies/{study}/series). Raises QidoInvalid."""
    identifier = Dataset()
    include_all = False
    include: list[str] = []
    for value in params.getlist("includefield"):
        for name in value.split(","):
            if not name.strip():
                continue
            if name.strip().lower() == "all":
                include_all = True
            else:
                include.append(_keyword(name))
    fuzzy = params.get("fuzzymatching", "false").strip().lower() == "true"
    keys: dict[str, str] = {}
    for name in params:
        if name.lower() in _RESERVED or name == "_":  # `_`: jQuery's cache buster
            continue
        if "." in name:
            raise QidoInvalid(f"{name}: sequence matching is not supported")
        keyword = _keyword(name)
        values = params.getlist(name)
        vr = dictionary_VR(keyword)
        # UID lists come comma-separated in QIDO-RS, backslash-separated in DIMSE.
        text = "\\".join(values)
        if vr == "UI":
            text = text.replace(",", "\\")
        if fuzzy and vr == "PN" and text and not text.endswith("*"):
            text += "*"
        keys[keyword] = text
    keys.update(path_keys)
    for keyword in dict.fromkeys(
        [*DEFAULT_FIELDS[level], *_defaults_above(level, path_keys), *include]
    ):
        if keyword not in keys:
            setattr_empty(identifier, keyword)
    for keyword, text in keys.items():
        identifier.add_new(keyword, dictionary_VR(keyword), text)
    try:
        query = query_parse(identifier, model=STUDY_ROOT, level=level)
    except QueryInvalid as exc:
        raise QidoInvalid(str(exc)) from None
    limit = _number(params, "limit")
    if limit is not None:
        limit = min(limit, MAX_LIMIT)
    return Search(query, include_all, limit, _number(params, "offset") or 0, fuzzy)


def _defaults_above(level: str, path_keys: dict[str, str]) -> tuple[str, ...]:
    if level == SERIES and "StudyInstanceUID" in path_keys:
        return ()
    if level == IMAGE and "SeriesInstanceUID" in path_keys:
        return ()
    if level == IMAGE and "StudyInstanceUID" in path_keys:
        return DEFAULT_FIELDS[SERIES]
    return _UPPER_DEFAULTS.get(level, ())


def setattr_empty(identifier: Dataset, keyword: str) -> None:
    vr = dictionary_VR(keyword)
    identifier.add_new(keyword, vr, [] if vr == "SQ" else None)


def _number(params: QueryDict, name: str) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise QidoInvalid(f"{name} must be a whole number, not {text!r}") from None
    if value < 0:
        raise QidoInvalid(f"{name} must not be negative")
    return value


def search_run(search: Search, *, base_url: str) -> Iterator[dict[str, Any]]:
    """The matches as DICOM JSON objects, with RetrieveURL (0008,1190)."""
    for ds in query_run(
        search.query,
        include_all=search.include_all,
        limit=search.limit,
        offset=search.offset,
    ):
        if "QueryRetrieveLevel" in ds:
            del ds.QueryRetrieveLevel
        url = f"{base_url}/studies/{ds.StudyInstanceUID}"
        if search.query.level in (SERIES, IMAGE):
            url += f"/series/{ds.SeriesInstanceUID}"
        if search.query.level == IMAGE:
            url += f"/instances/{ds.SOPInstanceUID}"
        ds.RetrieveURL = url
        yield ds.to_json_dict(suppress_invalid_tags=True)
