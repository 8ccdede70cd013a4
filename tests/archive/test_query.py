"""The query service on its own (what QIDO-RS will use): paging, all fields, PN rules."""

import datetime as dt
import re

import pytest
from pydicom.dataset import Dataset

from archive.models import Instance, Patient, Series, Study
from archive.query import STUDY_ROOT, QueryInvalid, query_parse, query_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def index():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for n in range(5):
        patient = Patient.objects.create(patient_id=f"P{n}", name=f"DOE^JANE{n}")
        study = Study.objects.create(
            patient=patient,
            study_instance_uid=f"1.2.{n}",
            study_date=dt.date(2026, 1, n + 1),
            accession_number=f"A{n}",
        )
        series = Series.objects.create(study=study, series_instance_uid=f"1.3.{n}", modality="CT")
        for i in range(n + 1):
            Instance.objects.create(
                series=series,
                sop_instance_uid=f"1.4.{n}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"x/{n}/{i}.dcm",
                size=1,
                sha256="",
                received_at=now,
            )


def _study_query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_limit_and_offset_page_through_the_matches(index):
    query = query_parse(_study_query(PatientName="doe*"), model=STUDY_ROOT)
    pages = [
        [ds.StudyInstanceUID for ds in query_run(query, limit=2, offset=offset)]
        for offset in (0, 2, 4)
    ]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(uid for page in pages for uid in page) == [f"1.2.{n}" for n in range(5)]


def test_include_all_returns_every_indexed_and_computed_attribute(index):
    query = query_parse(_study_query(AccessionNumber="A3"), model=STUDY_ROOT)
    [ds] = list(query_run(query, include_all=True))
    assert ds.PatientID == "P3"
    assert ds.StudyDate == "20260104"
    assert ds.NumberOfStudyRelatedInstances == 4
    assert ds.ModalitiesInStudy == "CT"
    assert "SeriesInstanceUID" not in ds  # below the level


def test_case_sensitive_names_when_configured(index):
    query = query_parse(_study_query(PatientName="doe*"), model=STUDY_ROOT)
    assert list(query_run(query, case_insensitive_pn=False)) == []
    assert len(list(query_run(query))) == 5


def test_lower_level_keys_with_values_are_refused():
    with pytest.raises(QueryInvalid, match="SeriesInstanceUID"):
        query_parse(_study_query(SeriesInstanceUID="1.3.1"), model=STUDY_ROOT)


@pytest.mark.slow
def test_a_query_matching_100000_instances_streams_in_flat_memory():
    import tracemalloc

    from django.utils import timezone

    patient = Patient.objects.create(patient_id="MANY", name="MANY^ROWS")
    study = Study.objects.create(patient=patient, study_instance_uid="1.9.9")
    series = Series.objects.create(study=study, series_instance_uid="1.9.9.1", modality="CT")
    now = timezone.now()
    Instance.objects.bulk_create(
        (
            Instance(
                series=series,
                sop_instance_uid=f"1.9.9.1.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"m/{n}.dcm",
                size=1,
                sha256="",
                received_at=now,
            )
            for n in range(100_000)
        ),
        batch_size=5000,
    )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = "1.9.9"
    identifier.SOPInstanceUID = ""
    query = query_parse(identifier, model=STUDY_ROOT)
    tracemalloc.start()
    count = 0
    for _match in query_run(query):
        count += 1
        if count == 1000:
            early = tracemalloc.get_traced_memory()[0]
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    # Whatever 1,000 matches took, 100,000 take no more than a couple of MB beyond it.
    assert peak - early < 4 * 2**20, (early, current, peak)


@pytest.mark.parametrize("explicit_vr", [True, False])
def test_encoded_identifiers_are_what_pydicom_encodes_from_the_datasets(index, explicit_vr):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    from archive.query import query_run_encoded

    Patient.objects.filter(patient_id="P2").update(name="Müller^Jörg=ミュラー")
    Series.objects.create(
        study=Study.objects.get(study_instance_uid="1.2.2"), series_instance_uid="1.3.9",
        modality="MR",
    )  # fmt: skip
    identifier = _study_query(
        PatientName="", PatientID="", StudyDate="", StudyTime="", ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries="", StudyDescription="",
        ReferencedStudySequence=[], OtherPatientIDs="", RetrieveAETitle="",
    )  # fmt: skip
    query = query_parse(identifier, model=STUDY_ROOT)
    expected = []
    for ds in query_run(query):
        ds.RetrieveAETitle = "ARCHIVE"
        buffer = DicomBytesIO()
        buffer.is_implicit_VR, buffer.is_little_endian = not explicit_vr, True
        write_dataset(buffer, ds)
        expected.append(buffer.getvalue())
    encoded = list(
        query_run_encoded(query, explicit_vr=explicit_vr, extra={"RetrieveAETitle": "ARCHIVE"})
    )
    assert len(encoded) == 5
    assert encoded == expected
    [mixed] = [
        read_dataset(DicomBytesIO(raw), not explicit_vr, True) for raw in encoded if b"1.2.2" in raw
    ]
    mixed.decode()
    assert str(mixed.PatientName) == "Müller^Jörg=ミュラー"
    assert mixed.ModalitiesInStudy == ["CT", "MR"]


# --- Person names: case-insensitive beyond ASCII, on the folded copy and its index -----------


@pytest.fixture
def names():
    for n, (name, doctor) in enumerate(
        [
            ("MÜLLER^HANS", "Ärztin^Σοφία"),
            ("Straße^Jörg", ""),
            ("ΔΙΟΝΥΣΙΟΣ", "DOE^JOHN"),
            ("Yamada^Tarou=山田^太郎", ""),
        ]
    ):
        patient = Patient.objects.create(patient_id=f"N{n}", name=name)
        Study.objects.create(
            patient=patient, study_instance_uid=f"1.5.{n}", referring_physician_name=doctor
        )


def _patients(**keys) -> set[str]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    query = query_parse(identifier, model=STUDY_ROOT)
    return {ds.PatientID for ds in query_run(query)}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("müller^hans", {"N0"}),
        ("müller*", {"N0"}),
        ("m?ller^hans", {"N0"}),
        ("*ÜLLER*", {"N0"}),
        ("STRASSE*", set()),  # ss is another spelling, not another case, of ß
        ("STRAẞE^JÖRG", {"N1"}),
        ("stra?e^j?rg", {"N1"}),  # one ? for one ß
        ("διονυσιος", {"N2"}),  # final sigma
        ("Διον*", {"N2"}),
        ("yamada^tarou", {"N3"}),
        ("YAMADA*", {"N3"}),
    ],
)
def test_patient_names_match_without_regard_to_case_in_any_script(names, key, expected):
    assert _patients(PatientName=key) == expected


def test_referring_physician_names_match_without_regard_to_case(names):
    assert _patients(ReferringPhysicianName="ÄRZTIN^ΣΟΦΊΑ") == {"N0"}
    assert _patients(ReferringPhysicianName="ärztin*") == {"N0"}
    assert _patients(ReferringPhysicianName="doe^john") == {"N2"}


def test_exact_case_when_configured_compares_the_names_as_stored(names):
    query = query_parse(_study_query(PatientName="müller*"), model=STUDY_ROOT)
    assert list(query_run(query, case_insensitive_pn=False)) == []
    identifier = _study_query(PatientName="MÜLLER*", PatientID="")
    found = query_run(query_parse(identifier, model=STUDY_ROOT), case_insensitive_pn=False)
    assert [ds.PatientID for ds in found] == ["N0"]


def test_every_write_of_a_name_writes_its_folded_copy(names):
    patient = Patient.objects.get(patient_id="N0")
    assert patient.name_fold == "müller^hans"
    patient.name = "GRÜN^ÖDA"
    patient.save(update_fields=["name"])
    assert Patient.objects.get(pk=patient.pk).name_fold == "grün^öda"
    Patient.objects.filter(pk=patient.pk).update(name="ÉCOLE^ÈVE")
    assert Patient.objects.get(pk=patient.pk).name_fold == "école^ève"
    patient.name = "ÅSE^ØRJAN"
    Patient.objects.bulk_update([patient], ["name"])
    assert Patient.objects.get(pk=patient.pk).name_fold == "åse^ørjan"
    [created] = Patient.objects.bulk_create([Patient(patient_id="N9", name="ŁUKASZ^ŻÓŁW")])
    assert Patient.objects.get(pk=created.pk).name_fold == "łukasz^żółw"
    study = Study.objects.get(study_instance_uid="1.5.0")
    Study.objects.filter(pk=study.pk).update(referring_physician_name="ÇELIK^ŞÜKRÜ")
    assert Study.objects.get(pk=study.pk).referring_physician_name_fold == "çelik^şükrü"
    study.referring_physician_name = "ΣΟΦΊΑ"
    study.save()
    assert Study.objects.get(pk=study.pk).referring_physician_name_fold == "σοφία"
    from django.db.models import F

    with pytest.raises(TypeError, match="name must be given as text"):
        Patient.objects.update(name=F("patient_id"))


def _plan(queryset) -> str:
    """The database's plan for a queryset (PostgreSQL: with sequential scans off, so that a
    table of a few rows shows which indexes could serve it)."""
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.parametrize(
    ("level", "keyword", "column", "index"),
    [
        ("PATIENT", "PatientName", "name_fold", "archive_patient_name_fold_idx"),
        ("STUDY", "PatientName", "name_fold", "archive_patient_name_fold_idx"),
        (
            "STUDY",
            "ReferringPhysicianName",
            "referring_physician_name_fold",
            "archive_study_refphys_fold_idx",
        ),
    ],
)
def test_a_name_prefix_is_a_range_scan_of_the_folded_index(names, level, keyword, column, index):
    from django.db import connection

    from archive.query import PATIENT_ROOT, query_queryset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    setattr(identifier, keyword, "müller^h*")
    plan = _plan(query_queryset(query_parse(identifier, model=PATIENT_ROOT)))
    if connection.vendor == "postgresql":
        # LIKE 'müller^h%' becomes the range the varchar_pattern_ops index serves.
        assert re.search(rf"(Index Scan using|Bitmap Index Scan on) {index}", plan), plan
        assert f"Index Cond: ((({column})::text ~>=~ 'müller^h'::text)" in plan, plan
    else:
        assert re.search(rf"INDEX {index} \({column}>\? AND {column}<\?\)", plan), plan


def test_a_fold_longer_than_its_name_is_cut_to_the_column():
    # NFC writes U+0958 (DEVANAGARI LETTER QA) as two characters.
    patient = Patient.objects.create(patient_id="LONG", name="\u0958" * 194)
    assert len(Patient.objects.get(pk=patient.pk).name_fold) == 194
