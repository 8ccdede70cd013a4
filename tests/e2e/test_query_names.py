"""Person names matched without regard to case in every script, end to end: pydicom's
character-set samples stored through the real ingest (C-STORE, resend, `verifystorage
--repair`), then found by DCMTK's findscu with keys in another case, with wildcards."""

import shutil
from io import StringIO

import pytest
from django.core.management import call_command
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Patient, Study
from archive.person_names import person_name_fold
from tests.conftest import sample_file
from tests.e2e.test_query_retrieve import findscu
from tests.peers import send_dataset, send_files

CHARSETS = ["chrGerm.dcm", "chrFren.dcm", "chrGreek.dcm", "chrRuss.dcm", "chrH31.dcm"]


def _ct(patient_id: str, name: str, doctor: str = ""):
    """CT_small as another patient's study, in UTF-8."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName, ds.ReferringPhysicianName = patient_id, name, doctor
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def archive(start_scp):
    server = start_scp(duplicates="overwrite")
    assert send_files(server.port, [sample_file(name) for name in CHARSETS]) == [0] * 5
    assert send_dataset(server.port, _ct("SHARP", "STRAẞER^JÖRG", "Ärztin^Σοφία")) == 0
    return server


def _found(archive, tmp_path, *keys: str, level: str = "STUDY") -> set[str]:
    responses = findscu(
        archive.port, tmp_path, "SpecificCharacterSet=ISO_IR 192",
        f"QueryRetrieveLevel={level}", "PatientID", *keys,
        model="-P" if level == "PATIENT" else "-S",
    )  # fmt: skip
    return {ds.PatientID for ds in responses}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("äneas^rüdiger", {"SCSGERM"}),
        ("ÄNEAS^RÜDIGER", {"SCSGERM"}),
        ("äneas*", {"SCSGERM"}),
        ("*RÜDIGER", {"SCSGERM"}),
        ("?neas^r?diger", {"SCSGERM"}),
        ("buc^jérôme", {"SCSFREN"}),
        ("BUC^J?RÔME", {"SCSFREN"}),
        ("*ÉRÔ*", {"SCSFREN"}),
        ("διονυσιος", {"SCSGREEK"}),
        ("ΔΙΟΝΥΣΙΟΣ", {"SCSGREEK"}),  # capital sigma for the final one
        ("δι?νυσ*", {"SCSGREEK"}),
        ("люкceмбypг", {"SCSRUSS"}),
        ("ЛЮК*", {"SCSRUSS"}),
        ("yamada^tarou", {"H31EXAMPLE"}),
        ("YAMADA^TAROU=山田^太郎=やまだ^たろう", {"H31EXAMPLE"}),
        ("straßer^jörg", {"SHARP"}),  # capital sharp s stored, small one asked
        ("stra?er*", {"SHARP"}),
        ("strasser*", set()),  # another spelling, not another case
        ("müller*", set()),
    ],
)
def test_findscu_names_in_another_case_and_with_wildcards(archive, tmp_path, key, expected):
    assert _found(archive, tmp_path, f"PatientName={key}") == expected


def test_findscu_at_patient_level_and_by_referring_physician(archive, tmp_path):
    assert _found(archive, tmp_path, "PatientName=ÄNEAS*", level="PATIENT") == {"SCSGERM"}
    for key in ("ärztin^σοφία", "ÄRZTIN^ΣΟΦΊΑ", "ärz*", "*^σοφ?α"):
        assert _found(archive, tmp_path, f"ReferringPhysicianName={key}") == {"SHARP"}, key


def test_a_resend_with_another_name_leaves_each_folded_copy_true_to_its_name(archive, tmp_path):
    first = _ct("RESENT", "ÖZTÜRK^AYŞE", "Ärztin^Σοφία")
    assert send_dataset(archive.port, first) == 0
    first.PatientName, first.ReferringPhysicianName = "ÖZTÜRK-YILMAZ^AYŞE", "Ørsted^Åse"
    assert send_dataset(archive.port, first) == 0  # overwritten (duplicates: overwrite)
    # The index keeps the patient and study attributes of the first instance (a resend does
    # not rewrite the patient's row); whatever name a row holds, its folded copy follows it.
    patient = Patient.objects.get(patient_id="RESENT")
    assert patient.name_fold == person_name_fold(patient.name)
    assert _found(archive, tmp_path, f"PatientName={patient.name.lower()}") == {"RESENT"}
    for study in Study.objects.all():
        assert study.referring_physician_name_fold == person_name_fold(
            study.referring_physician_name
        )


def test_verifystorage_repair_indexes_an_orphan_with_its_folded_name(scp, storage_dir, tmp_path):
    orphan = storage_dir / "copied-in" / "germ.dcm"
    orphan.parent.mkdir(parents=True)
    shutil.copy(sample_file("chrGerm.dcm"), orphan)
    call_command("verifystorage", "--storage-dir", str(storage_dir), "--repair", stdout=StringIO())
    assert Patient.objects.get().name_fold == "äneas^rüdiger"
    assert _found(scp, tmp_path, "PatientName=ÄNEAS^R?DIGER") == {"SCSGERM"}
