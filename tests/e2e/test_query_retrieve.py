"""Query/Retrieve end to end: DCMTK's findscu, movescu and getscu, and pynetdicom as SCU, against
the real SCP over loopback."""

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from receiver.config import AllowedPeer
from routing.models import RemoteAE
from tests.conftest import free_port, sample_file
from tests.peers import dcmtk_tool, scu, send_dataset, send_files

SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrRuss.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrX1.dcm",
]
CT = dcmread(sample_file("CT_small.dcm"), stop_before_pixels=True)
MR = dcmread(sample_file("MR_small.dcm"), stop_before_pixels=True)
NM = dcmread(sample_file("JPEG2000.dcm"), stop_before_pixels=True)


@pytest.fixture
def archive(start_scp):
    server = start_scp()
    statuses = send_files(server.port, [sample_file(name) for name in SAMPLES])
    assert statuses == [0] * len(SAMPLES)
    return server


def _dcmtk(name: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk_tool(name), *map(str, args)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        timeout=timeout,
    )


def findscu(port: int, out: Path, *keys: str, model: str = "-S", extra=()) -> list[Dataset]:
    """Run findscu with `keys` (-k each); return the responses' identifiers."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [model, "-aet", "FINDSCU", "-aec", "TEST_SCP", "-X", "-od", out, *extra]
    for key in keys:
        args += ["-k", key]
    result = _dcmtk("findscu", *args, "127.0.0.1", port)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _names(responses: list[Dataset]) -> set[str]:
    return {str(ds.PatientName) for ds in responses}


def test_findscu_study_level_by_patient_id_returns_indexed_and_computed_keys(archive, tmp_path):
    [found] = findscu(
        archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=1CT1",
        "StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "SOPClassesInStudy",
        "AccessionNumber", "StudyDescription", "RetrieveAETitle", "InstitutionName",
    )  # fmt: skip
    assert found.StudyInstanceUID == CT.StudyInstanceUID
    assert str(found.PatientName) == "CompressedSamples^CT1"
    assert found.StudyDate == "20040119"
    assert found.ModalitiesInStudy == "CT"
    assert found.NumberOfStudyRelatedInstances == 1
    assert found.NumberOfStudyRelatedSeries == 1
    assert found.SOPClassesInStudy == CTImageStorage
    assert found.RetrieveAETitle == "TEST_SCP"
    assert found.QueryRetrieveLevel == "STUDY"
    # Not indexed: returned, empty.
    assert "InstitutionName" in found and found.InstitutionName in ("", None)


def test_findscu_wildcards_and_case_insensitive_names(archive, tmp_path):
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=compressed*")
    assert _names(found) == {
        "CompressedSamples^CT1",
        "CompressedSamples^MR1",
        "CompressedSamples^NM1",
    }
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=?CT?")
    assert [ds.PatientID for ds in found] == ["1CT1"]
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=*MR*")
    assert [ds.PatientID for ds in found] == ["4MR1"]
    # Case-sensitive outside PN.
    assert findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=1ct1") == []


def test_findscu_universal_matching_returns_everything(archive, tmp_path):
    for value in ("PatientName=*", "PatientName="):
        found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", value)
        assert len(found) == len(SAMPLES)


def test_findscu_date_ranges(archive, tmp_path):
    def dates(value: str) -> set[str]:
        found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate={value}")
        return {ds.PatientID for ds in found}

    assert dates("20040801-20041231") == {"4MR1", "8NM1"}
    assert dates("-20040131") == {"1CT1"}
    assert dates("20170101-") == {"ID1"}
    assert dates("20040119") == {"1CT1"}


def test_findscu_time_range(archive, tmp_path):
    found = findscu(
        archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=1CT1", "StudyTime=07-08"
    )
    assert len(found) == (1 if CT.get("StudyTime", "").startswith("07") else 0)


def test_findscu_list_of_uids(archive, tmp_path):
    uids = f"{CT.StudyInstanceUID}\\{MR.StudyInstanceUID}"
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids}")
    assert {ds.StudyInstanceUID for ds in found} == {CT.StudyInstanceUID, MR.StudyInstanceUID}


def test_findscu_every_level_in_both_models(archive, tmp_path):
    [patient] = findscu(
        archive.port, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID=SCSGERM",
        "PatientName", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances",
        model="-P",
    )  # fmt: skip
    assert str(patient.PatientName) == "Äneas^Rüdiger"
    assert patient.NumberOfPatientRelatedStudies == 1
    assert patient.NumberOfPatientRelatedInstances == 1

    for model in ("-P", "-S"):
        [study] = findscu(
            archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=4MR1",
            "StudyInstanceUID", model=model,
        )  # fmt: skip
        assert study.StudyInstanceUID == MR.StudyInstanceUID
        [series] = findscu(
            archive.port, tmp_path, "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={MR.StudyInstanceUID}", "SeriesInstanceUID", "Modality",
            "NumberOfSeriesRelatedInstances", model=model,
        )  # fmt: skip
        assert series.SeriesInstanceUID == MR.SeriesInstanceUID
        assert series.Modality == "MR"
        assert series.NumberOfSeriesRelatedInstances == 1
        [image] = findscu(
            archive.port, tmp_path, "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={MR.StudyInstanceUID}",
            f"SeriesInstanceUID={MR.SeriesInstanceUID}", "SOPInstanceUID", "SOPClassUID",
            "InstanceNumber", model=model,
        )  # fmt: skip
        assert image.SOPInstanceUID == MR.SOPInstanceUID
        assert image.SOPClassUID == MR.SOPClassUID
    # Modality at series level with a wildcard; ModalitiesInStudy at study level.
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=SERIES", "Modality=M?")
    assert {ds.SeriesInstanceUID for ds in found} == {MR.SeriesInstanceUID}
    found = findscu(archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=NM")
    assert {ds.StudyInstanceUID for ds in found} == {NM.StudyInstanceUID}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Buc^Jérôme", "Buc^Jérôme"),
        ("Äneas*", "Äneas^Rüdiger"),
        ("ÄNEAS*", "Äneas^Rüdiger"),
        ("Люкceмбypг", "Люкceмбypг"),
        ("Διονυσιος", "Διονυσιος"),
        ("Yamada^Tarou", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("Wang*", "Wang^XiaoDong=王^小東"),
    ],
)
def test_findscu_non_ascii_names_found_and_returned_in_utf8(archive, tmp_path, key, expected):
    found = findscu(
        archive.port, tmp_path, "SpecificCharacterSet=ISO_IR 192", "QueryRetrieveLevel=STUDY",
        f"PatientName={key}",
    )  # fmt: skip
    assert len(found) == 1, key
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == expected


def _indexed_rows(count: int) -> str:
    """Index `count` instances of one new study (rows only: C-FIND needs no files)."""
    from django.utils import timezone

    from archive.models import Instance, Patient, Series, Study

    patient = Patient.objects.create(patient_id="BULK", name="BULK^ROWS")
    study = Study.objects.create(patient=patient, study_instance_uid=generate_uid())
    series = Series.objects.create(study=study, series_instance_uid=generate_uid(), modality="CT")
    now = timezone.now()
    Instance.objects.bulk_create(
        Instance(
            series=series,
            sop_instance_uid=generate_uid(),
            sop_class_uid=CTImageStorage,
            instance_number=n,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"bulk/{n}.dcm",
            size=0,
            sha256="",
            received_at=now,
        )
        for n in range(count)
    )
    return study.study_instance_uid


def test_findscu_cancel_stops_the_responses(scp, tmp_path):
    study = _indexed_rows(3000)
    out = tmp_path / "cancel"
    out.mkdir()
    result = _dcmtk(
        "findscu", "-v", "-S", "-aec", "TEST_SCP", "--cancel", "1", "-X", "-od", out,
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
        "-k", "SOPInstanceUID", "127.0.0.1", scp.port,
    )  # fmt: skip
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "MatchingTerminatedDueToCancelRequest" in text, text
    assert len(list(out.glob("rsp*.dcm"))) < 3000


def test_a_query_matching_many_instances_streams_all_of_them(scp):
    study = _indexed_rows(5000)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SOPInstanceUID = ""
    statuses = [status for status, _ in _find_statuses(scp.port, identifier)]
    assert statuses.count(0xFF00) == 5000
    assert statuses[-1] == 0x0000


def _find_statuses(
    port: int, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind
):
    ae = scu()
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        return [(status.Status, ds) for status, ds in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"QueryRetrieveLevel": "FOO"}, 0xA900),
        ({"QueryRetrieveLevel": "PATIENT"}, 0xA900),  # Study Root has no PATIENT level
        ({"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": "1.2.3"}, 0xA900),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2004-01-19x"}, 0xA900),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, 0xA900),
        ({"QueryRetrieveLevel": "STUDY", "StudyTime": "2500"}, 0xA900),
    ],
)
def test_bad_identifiers_get_an_error_status_and_the_server_lives_on(archive, keys, status):
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assert [s for s, _ in _find_statuses(archive.port, identifier)] == [status]
    ok = Dataset()
    ok.QueryRetrieveLevel = "STUDY"
    ok.PatientID = "1CT1"
    assert [s for s, _ in _find_statuses(archive.port, ok)] == [0xFF00, 0x0000]


def test_query_in_latin1_matches_the_unicode_index(archive):
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = "Buc^Jérôme"
    identifier.PatientID = ""
    results = _find_statuses(archive.port, identifier, PatientRootQueryRetrieveInformationModelFind)
    assert [s for s, _ in results] == [0xFF00, 0x0000]
    assert results[0][1].PatientID == "SCSFREN"


def test_unknown_calling_ae_cannot_query(start_scp, tmp_path):
    server = start_scp(require_known_ae=True, allowed_aes=[AllowedPeer("TEST_SCU")])
    result = _dcmtk(
        "findscu", "-S", "-aet", "STRANGER", "-aec", "TEST_SCP", "-k", "QueryRetrieveLevel=STUDY",
        "127.0.0.1", server.port,
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        b"Rejected" in result.stderr + result.stdout
        or b"reject" in (result.stderr + result.stdout).lower()
    )
    result = _dcmtk(
        "movescu", "-S", "-aet", "STRANGER", "-aec", "TEST_SCP", "-aem", "STRANGER",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT.StudyInstanceUID}",
        "127.0.0.1", server.port,
    )  # fmt: skip
    assert result.returncode != 0


# --- retrieval ----------------------------------------------------------------------------


def _received(folder: Path) -> dict[str, Dataset]:
    return {
        ds.SOPInstanceUID: ds for ds in map(dcmread, folder.rglob("*")) if "SOPInstanceUID" in ds
    }


def _register(title: str, port: int) -> None:
    RemoteAE.objects.create(ae_title=title, host="127.0.0.1", port=port)


def test_movescu_study_arrives_converted_where_needed(archive, tmp_path):
    port = free_port()
    _register("MOVESCU", port)
    out = tmp_path / "moved"
    out.mkdir()
    for study in (CT.StudyInstanceUID, NM.StudyInstanceUID):
        result = _dcmtk(
            "movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", "TEST_SCP", "-aem", "MOVESCU",
            "+P", port, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "127.0.0.1", archive.port,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    received = _received(out)
    assert set(received) == {CT.SOPInstanceUID, NM.SOPInstanceUID}
    # movescu accepts uncompressed syntaxes only: the JPEG 2000 instance was decompressed.
    nm = received[NM.SOPInstanceUID]
    assert not nm.file_meta.TransferSyntaxUID.is_compressed
    assert nm.pixel_array.shape == dcmread(sample_file("JPEG2000.dcm")).pixel_array.shape


def test_movescu_accepting_all_syntaxes_gets_the_stored_bytes(archive, tmp_path):
    port = free_port()
    _register("MOVESCU", port)
    out = tmp_path / "moved"
    out.mkdir()
    result = _dcmtk(
        "movescu", "-S", "-aet", "MOVESCU", "-aec", "TEST_SCP", "-aem", "MOVESCU", "+xa",
        "+P", port, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={NM.StudyInstanceUID}", "127.0.0.1", archive.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    [nm] = _received(out).values()
    original = dcmread(sample_file("JPEG2000.dcm"))
    assert nm.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert nm.PixelData == original.PixelData


def test_movescu_unknown_destination_gets_a801(archive, tmp_path):
    result = _dcmtk(
        "movescu", "-v", "-S", "-aec", "TEST_SCP", "-aem", "NOBODY", "-k",
        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT.StudyInstanceUID}",
        "127.0.0.1", archive.port,
    )  # fmt: skip
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "MoveDestinationUnknown" in text, text


def _move(port: int, identifier: Dataset, destination: str, cancel_after: int | None = None):
    ae = scu()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    responses = []
    try:
        for status, ds in assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove, msg_id=7
        ):
            responses.append((status, ds))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelMove)
    finally:
        assoc.release()
    return responses


def _study(port: int, count: int) -> str:
    """Store `count` CT instances of one new study; return its UID."""
    template = dcmread(sample_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    for n in range(count):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.PatientID = "MANY"
        assert send_dataset(port, ds) == 0
    return study


def _study_identifier(uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = uid
    return identifier


def test_move_to_a_destination_that_is_down_fails_every_sub_operation(archive):
    _register("DOWN", free_port())
    responses = _move(archive.port, _study_identifier(CT.StudyInstanceUID), "DOWN")
    [(status, identifier)] = responses
    assert status.Status == 0xA702
    assert status.NumberOfFailedSuboperations == 1
    assert status.NumberOfCompletedSuboperations == 0
    assert identifier.FailedSOPInstanceUIDList == CT.SOPInstanceUID


class _Destination:
    """pynetdicom's Storage SCP as C-MOVE destination, slow enough to cancel, failing on
    request."""

    def __init__(self, title: str, *, delay: float = 0.0, refuse: set[str] = frozenset()):
        self.received: list[str] = []
        self.delay = delay
        self.refuse = refuse
        self.ae = AE(ae_title=title)
        self.ae.supported_contexts = StoragePresentationContexts
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event):
        time.sleep(self.delay)
        uid = event.request.AffectedSOPInstanceUID
        if uid in self.refuse:
            return 0xA700
        self.received.append(uid)
        return 0x0000

    def stop(self):
        self.server.shutdown()


def test_move_reports_counts_and_failed_uids(archive):
    study = _study(archive.port, 6)
    from archive.models import Instance

    uids = list(
        Instance.objects.filter(series__study__study_instance_uid=study).values_list(
            "sop_instance_uid", flat=True
        )
    )
    destination = _Destination("DEST", refuse={uids[2]})
    _register("DEST", destination.port)
    try:
        responses = _move(archive.port, _study_identifier(study), "DEST")
    finally:
        destination.stop()
    statuses = [status.Status for status, _ in responses]
    # Pending responses come at most every PENDING_INTERVAL; the first after the first instance.
    assert statuses[0] == 0xFF00 and set(statuses[:-1]) == {0xFF00} and statuses[-1] == 0xB000
    pending = responses[0][0]
    assert pending.NumberOfRemainingSuboperations == 5
    assert pending.NumberOfCompletedSuboperations + pending.NumberOfFailedSuboperations == 1
    final, identifier = responses[-1]
    assert final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 1
    assert identifier.FailedSOPInstanceUIDList == uids[2]
    assert sorted(destination.received) == sorted(set(uids) - {uids[2]})


def test_move_cancel_stops_between_instances(archive):
    study = _study(archive.port, 12)
    destination = _Destination("SLOW", delay=0.1)
    _register("SLOW", destination.port)
    try:
        responses = _move(archive.port, _study_identifier(study), "SLOW", cancel_after=2)
    finally:
        destination.stop()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert len(destination.received) < 12


def test_getscu_pulls_a_study_on_the_same_association(archive, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    for study in (MR.StudyInstanceUID, NM.StudyInstanceUID):
        result = _dcmtk(
            "getscu", "-S", "-aet", "GETSCU", "-aec", "TEST_SCP", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", archive.port,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    received = _received(out)
    assert set(received) == {MR.SOPInstanceUID, NM.SOPInstanceUID}
    assert received[MR.SOPInstanceUID].PixelData == dcmread(sample_file("MR_small.dcm")).PixelData


def test_getscu_series_and_image_levels_patient_root(archive, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    result = _dcmtk(
        "getscu", "-P", "-aec", "TEST_SCP", "-od", out, "-k", "QueryRetrieveLevel=IMAGE",
        "-k", f"PatientID={CT.PatientID}", "-k", f"StudyInstanceUID={CT.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={CT.SeriesInstanceUID}",
        "-k", f"SOPInstanceUID={CT.SOPInstanceUID}", "127.0.0.1", archive.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert set(_received(out)) == {CT.SOPInstanceUID}


def test_get_of_a_large_match_streams_and_can_be_cancelled(archive):
    study = _study(archive.port, 15)
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    ae = scu("GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    from pynetdicom import build_role

    got: list[str] = []
    stop = threading.Event()

    def store(event):
        got.append(event.request.AffectedSOPInstanceUID)
        time.sleep(0.05)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        archive.port,
        ae_title="TEST_SCP",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )
    assert assoc.is_established
    statuses = []
    try:
        for status, _ in assoc.send_c_get(
            _study_identifier(study), StudyRootQueryRetrieveInformationModelGet, msg_id=3
        ):
            statuses.append(status)
            if len(statuses) == 3 and not stop.is_set():
                stop.set()
                assoc.send_c_cancel(3, query_model=StudyRootQueryRetrieveInformationModelGet)
    finally:
        assoc.release()
    assert statuses[-1].Status == 0xFE00
    assert len(got) < 15


def test_a_stored_file_gone_missing_fails_its_sub_operation_only(archive, storage_dir, tmp_path):
    from archive.models import Instance

    study = _study(archive.port, 3)
    instances = list(Instance.objects.filter(series__study__study_instance_uid=study))
    (storage_dir / instances[1].path).unlink()
    destination = _Destination("DEST")
    _register("DEST", destination.port)
    try:
        responses = _move(archive.port, _study_identifier(study), "DEST")
    finally:
        destination.stop()
    final, identifier = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert identifier.FailedSOPInstanceUIDList == instances[1].sop_instance_uid
    assert len(destination.received) == 2


def test_sequence_keys_come_back_empty_and_an_item_value_is_a_key_not_matched(archive, tmp_path):
    # findscu: a universal sequence key (one item, its key empty) → a zero-length sequence.
    [found] = findscu(
        archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=1CT1",
        "ReferencedStudySequence[0].ReferencedSOPInstanceUID",
    )  # fmt: skip
    assert found.PatientID == "1CT1"
    assert "ReferencedStudySequence" in found
    assert len(found.ReferencedStudySequence) == 0
    # An item key with a value cannot be matched (nothing indexed lives in a sequence): the
    # match is still returned, with 0xFF01 (PS3.4 C.4.1.1.4), not refused.
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "1CT1"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    identifier.ReferencedStudySequence = [item]
    responses = _find_statuses(archive.port, identifier)
    assert [status for status, _ in responses] == [0xFF01, 0x0000]
    assert len(responses[0][1].ReferencedStudySequence) == 0
