"""End to end: pynetdicom's SCU sends real files to the real SCP over loopback."""

import copy
import hashlib
import threading

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Instance, Patient, Series, Study
from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.conftest import sample_file, staging_files, stored_files
from tests.peers import dataset_bytes, send_dataset, send_files, send_partial_then_abort, send_raw

# One file per transfer syntax and a spread of SOP classes, all shipped with pydicom.
SAMPLES = [
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small_implicit.dcm",  # MR, implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "693_J2KI.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE lossless
    "rtdose_rle_1frame.dcm",  # RT Dose, RLE
    "examples_palette.dcm",  # palette colour
    "ExplVR_BigEnd.dcm",  # big endian again, another class
    "test-SR.dcm",  # Comprehensive SR
    "examples_ybr_color.dcm",  # Ultrasound multi-frame, JPEG baseline
    "waveform_ecg.dcm",  # 12-lead ECG waveform
    "liver_1frame.dcm",  # Segmentation
]


@pytest.mark.parametrize("name", SAMPLES)
def test_instance_is_stored_bit_for_bit_and_indexed(scp, storage_dir, name):
    path = sample_file(name)
    original = dcmread(path, stop_before_pixels=True)

    assert send_files(scp.port, [path]) == [0x0000]

    instance = Instance.objects.select_related("series__study__patient").get()
    stored = storage_dir / instance.path
    assert stored_files(storage_dir) == [stored]
    assert dataset_bytes(stored) == dataset_bytes(path)
    raw = stored.read_bytes()
    assert instance.size == len(raw)
    assert instance.sha256 == hashlib.sha256(raw).hexdigest()
    assert instance.sop_instance_uid == original.SOPInstanceUID
    assert instance.sop_class_uid == original.SOPClassUID
    assert instance.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
    assert instance.calling_ae_title == "TEST_SCU"
    assert instance.remote_address == "127.0.0.1"
    assert instance.series.series_instance_uid == original.SeriesInstanceUID
    assert instance.series.study.study_instance_uid == original.StudyInstanceUID
    assert instance.series.study.patient.patient_id == original.get("PatientID", "")
    assert staging_files(storage_dir) == []


def test_stored_file_is_part10_with_our_meta_group(scp, storage_dir):
    path = sample_file("MR_small_jp2klossless.dcm")
    assert send_files(scp.port, [path], calling="MODALITY_7") == [0x0000]

    stored = dcmread(storage_dir / Instance.objects.get().path)
    meta = stored.file_meta
    assert stored.preamble == b"\0" * 128
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert meta.MediaStorageSOPClassUID == stored.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "MODALITY_7"
    assert stored.PixelData == dcmread(sample_file("MR_small_jp2klossless.dcm")).PixelData


def test_hierarchy_rows_are_shared_by_instances_of_one_series(scp):
    base = dcmread(sample_file("CT_small.dcm"))
    for number in range(1, 4):
        base.SOPInstanceUID = generate_uid()
        base.InstanceNumber = number
        assert send_dataset(scp.port, base) == 0x0000
    assert Patient.objects.count() == Study.objects.count() == Series.objects.count() == 1
    assert list(Instance.objects.values_list("instance_number", flat=True)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("naming", "expected"),
    [
        ("hierarchical", "PID-1/1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.dcm"),
        ("flat", "1.2.3.4.5.6.dcm"),
        ("date", "2026/03/09/1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.dcm"),
        ("date-based", "2026/03/09/1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.dcm"),
    ],
)
def test_naming_schemes_place_the_file(start_scp, storage_dir, naming, expected):
    server = start_scp(naming=naming)
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.PatientID = "PID-1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyDate = "20260309"
    assert send_dataset(server.port, ds) == 0x0000
    assert Instance.objects.get().path == expected
    assert stored_files(storage_dir) == [storage_dir / expected]


def test_date_naming_uses_reception_date_when_study_date_is_invalid(start_scp, storage_dir):
    from django.utils import timezone

    server = start_scp(naming="date")
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.StudyDate = "2026-13-45"
    assert send_dataset(server.port, ds) == 0x0000
    instance = Instance.objects.get()
    today = timezone.localdate(instance.received_at)
    assert instance.path.startswith(f"{today:%Y/%m/%d}/")
    assert instance.series.study.study_date is None


@pytest.mark.parametrize("patient_id", ["../../etc", "/tmp/x", "..", "a/../../b", "x\0y", "CON"])
def test_patient_id_cannot_steer_the_path_outside_storage(scp, storage_dir, tmp_path, patient_id):
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.PatientID = patient_id
    assert send_dataset(scp.port, ds) == 0x0000
    instance = Instance.objects.get()
    stored = (storage_dir / instance.path).resolve()
    assert stored.is_relative_to(storage_dir.resolve())
    assert stored.is_file()
    assert len(instance.path.split("/")) == 4
    # Nothing anywhere else under the test's folder but the storage directory.
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(storage_dir)]
    assert outside == []
    assert Patient.objects.get().patient_id == patient_id.replace("\0", "")


def test_identical_resend_is_acknowledged_once(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    assert send_files(scp.port, [path]) == [0x0000]
    first = Instance.objects.get()
    mtime = (storage_dir / first.path).stat().st_mtime_ns
    assert send_files(scp.port, [path], calling="OTHER_AE") == [0x0000]
    assert Instance.objects.count() == 1
    assert Instance.objects.get().calling_ae_title == "TEST_SCU"
    assert (storage_dir / first.path).stat().st_mtime_ns == mtime
    assert len(stored_files(storage_dir)) == 1


def _changed_copy():
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.StudyDescription = "changed on resend"
    return ds


def test_different_bytes_keep_policy_keeps_first_copy(start_scp, storage_dir):
    server = start_scp(duplicates="keep")
    path = sample_file("CT_small.dcm")
    assert send_files(server.port, [path]) == [0x0000]
    before = Instance.objects.get()
    assert send_dataset(server.port, _changed_copy()) == 0x0000
    after = Instance.objects.get()
    assert after.sha256 == before.sha256
    assert dataset_bytes(storage_dir / after.path) == dataset_bytes(path)


def test_different_bytes_reject_policy_refuses_and_keeps_first_copy(start_scp, storage_dir):
    server = start_scp(duplicates="reject")
    path = sample_file("CT_small.dcm")
    assert send_files(server.port, [path]) == [0x0000]
    assert send_dataset(server.port, _changed_copy()) == 0x0111
    instance = Instance.objects.get()
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(path)
    assert staging_files(storage_dir) == []


def test_different_bytes_overwrite_policy_replaces_file_and_row(start_scp, storage_dir):
    server = start_scp(duplicates="overwrite")
    assert send_files(server.port, [sample_file("CT_small.dcm")]) == [0x0000]
    changed = _changed_copy()
    changed.PatientID = "MOVED"  # the new copy belongs in another folder
    assert send_dataset(server.port, changed) == 0x0000
    instance = Instance.objects.get()
    stored = storage_dir / instance.path
    assert instance.path.startswith("MOVED/")
    assert stored_files(storage_dir) == [stored]
    assert dcmread(stored).StudyDescription == "changed on resend"
    assert instance.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert staging_files(storage_dir) == []


def test_same_instance_from_concurrent_associations_gives_one_row_and_one_file(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(send_files(scp.port, [path])))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[0x0000]] * 6
    assert Instance.objects.count() == 1
    assert len(stored_files(storage_dir)) == 1
    assert staging_files(storage_dir) == []


def test_concurrent_senders_share_patient_study_and_series_rows(scp, storage_dir):
    base = dcmread(sample_file("CT_small.dcm"))
    statuses: list[int] = []

    def sender(count: int) -> None:
        for _ in range(count):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            statuses.append(send_dataset(scp.port, ds))

    threads = [threading.Thread(target=sender, args=(5,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [0x0000] * 20
    assert Instance.objects.count() == 20
    assert Patient.objects.count() == Study.objects.count() == Series.objects.count() == 1
    assert len(stored_files(storage_dir)) == 20


def test_dataset_with_other_sop_instance_uid_than_request_is_refused(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    ds = dcmread(path)
    status = send_raw(
        scp.port,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid="1.2.3.999",
        payload=dataset_bytes(path),
    )
    assert status == 0xA900
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []


def test_file_whose_meta_names_another_instance_is_refused(scp, storage_dir):
    # pydicom's rtplan.dcm has a MediaStorageSOPInstanceUID differing from its SOPInstanceUID;
    # pynetdicom's SCU announces the former, so the request and the dataset disagree.
    assert send_files(scp.port, [sample_file("rtplan.dcm")]) == [0xA900]
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []


def test_dataset_with_other_sop_class_than_request_is_refused(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    ds = dcmread(path)
    status = send_raw(
        scp.port,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        sop_instance_uid=ds.SOPInstanceUID,
        payload=dataset_bytes(path),
    )
    assert status == 0xA900
    assert not Instance.objects.exists()


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_dataset_without_required_uid_cannot_be_understood(scp, storage_dir, missing):
    ds = dcmread(sample_file("CT_small.dcm"))
    delattr(ds, missing)
    assert send_dataset(scp.port, ds) == 0xC000
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []


def test_dataset_with_invalid_uid_cannot_be_understood_with_strict_uids(start_scp, storage_dir):
    server = start_scp(strict_uids=True)
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.StudyInstanceUID = "1.2.abc.4"
    assert send_dataset(server.port, ds) == 0xC000
    assert not Instance.objects.exists()


def test_dataset_with_invalid_uid_is_stored_verbatim_by_default(scp, storage_dir):
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.StudyInstanceUID = "1.2.abc.4"
    assert send_dataset(scp.port, ds) == 0x0000
    assert Instance.objects.get().series.study.study_instance_uid == "1.2.abc.4"


def test_unparsable_dataset_cannot_be_understood(scp, storage_dir):
    status = send_raw(
        scp.port,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4",
        payload=b"\x08\x00\x18\x00UI\xff\xff" + b"\x00garbage" * 50,
    )
    assert status == 0xC000
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []
    assert staging_files(storage_dir) == []


def test_association_aborted_mid_dataset_leaves_nothing_and_server_keeps_serving(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    send_partial_then_abort(
        scp.port,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        payload=dataset_bytes(path),
    )
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []
    assert staging_files(storage_dir) == []
    assert send_files(scp.port, [path]) == [0x0000]
    assert Instance.objects.count() == 1


def test_over_long_values_are_truncated_in_the_index_not_refused(scp, storage_dir):
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.AccessionNumber = "A" * 40  # SH allows 16
    ds.StudyDescription = "D" * 100  # LO allows 64
    assert send_dataset(scp.port, ds) == 0x0000
    study = Instance.objects.get().series.study
    assert study.accession_number == "A" * 16
    assert study.description == "D" * 64
    assert dcmread(storage_dir / Instance.objects.get().path).AccessionNumber == "A" * 40


CHARSET_SAMPLES = [
    "chrArab.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrHbrw.dcm",
    "chrI2.dcm",
    "chrFrenMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
]


@pytest.mark.parametrize("name", CHARSET_SAMPLES)
def test_names_are_decoded_with_the_specific_character_set(scp, name):
    path = sample_file(name)
    assert send_files(scp.port, [path]) == [0x0000]
    patient = Patient.objects.get()
    expected = str(dcmread(path).PatientName)
    assert patient.name == expected
    assert patient.name.isascii() is expected.isascii()
    assert not any(ch in patient.name for ch in "\x1b\ufffd")


def test_resend_restores_a_stored_file_that_went_missing(scp, storage_dir):
    path = sample_file("CT_small.dcm")
    assert send_files(scp.port, [path]) == [0x0000]
    stored = storage_dir / Instance.objects.get().path
    stored.unlink()
    assert send_files(scp.port, [path]) == [0x0000]
    assert dataset_bytes(stored) == dataset_bytes(path)
    assert Instance.objects.count() == 1
    assert Instance.objects.get().sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
