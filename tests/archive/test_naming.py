import datetime as dt
from pathlib import PurePosixPath

import pytest

from archive.header import InstanceHeader
from archive.naming import PLACEHOLDER, path_component, relative_path

HOSTILE = [
    "../../etc",
    "..",
    ".",
    "/tmp/x",
    "a/../../b",
    "x\0y",
    "line\nbreak",
    "back\\slash",
    "CON",
    "nul.txt",
    "COM1",
    "trailing.",
    ".hidden",
    "Ω-ünïcode",
    "x" * 300,
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_component_is_one_safe_name(value):
    name = path_component(value)
    assert name not in ("", ".", "..")
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert not name.startswith(".")
    assert not name.endswith(".")
    assert name.isascii() and name.isprintable()
    assert len(name) <= 64
    assert name.split(".")[0].upper() not in {"CON", "NUL", "COM1"}


def test_plain_values_are_kept_as_they_are():
    assert path_component("PAT-001_a.b") == "PAT-001_a.b"
    assert path_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"


def test_different_unsafe_values_do_not_share_a_name():
    assert path_component("a/b") != path_component("a_b")
    assert path_component("a/b") != path_component("a\\b")
    assert path_component("x" * 300) != path_component("x" * 299)


def test_empty_value_gets_the_placeholder():
    assert path_component("") == PLACEHOLDER


def _header(**values) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=values.pop("sop_instance_uid", "1.2.3.4.5.6"),
        study_instance_uid=values.pop("study_instance_uid", "1.2.3.4"),
        series_instance_uid=values.pop("series_instance_uid", "1.2.3.4.5"),
        **values,
    )


@pytest.mark.parametrize("scheme", ["hierarchical", "flat", "date"])
@pytest.mark.parametrize("value", HOSTILE)
def test_every_scheme_keeps_hostile_values_inside_the_storage_directory(scheme, value):
    header = _header(
        patient_id=value,
        sop_instance_uid=value or "1",
        study_instance_uid=value or "1",
        series_instance_uid=value or "1",
    )
    path = PurePosixPath(relative_path(header, scheme, dt.date(2026, 1, 2)))
    assert not path.is_absolute()
    assert ".." not in path.parts
    assert path.suffix == ".dcm"
    assert len(path.parts) == {"hierarchical": 4, "flat": 1, "date": 6}[scheme]


def test_date_scheme_uses_study_date_then_reception_date():
    received = dt.date(2026, 11, 25)
    assert relative_path(_header(study_date=dt.date(2019, 2, 3)), "date", received).startswith(
        "2019/02/03/"
    )
    assert relative_path(_header(), "date", received).startswith("2026/11/25/")
