"""End to end with DCMTK: echoscu and storescu against the real SCP."""

from pathlib import Path

import pytest
from pydicom import dcmread

from archive.models import Instance
from tests.conftest import staging_files, stored_files
from tests.peers import dataset_bytes, run_dcmtk

TRAILING_PADDING = 0xFFFCFFFC
SAMPLE_STUDY = Path(__file__).resolve().parents[2] / "fixtures" / "sample-study"


def test_echoscu_gets_verification_success(scp):
    result = run_dcmtk("echoscu", "-aet", "ECHOER", "-aec", "TEST_SCP", "127.0.0.1", scp.port)
    assert result.returncode == 0, result.stderr


def _assert_same_content(storage_dir, instance, original_path, calling_ae):
    stored = dcmread(storage_dir / instance.path)
    original = dcmread(original_path)
    assert stored.file_meta.SourceApplicationEntityTitle == calling_ae
    assert stored.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
    assert instance.calling_ae_title == calling_ae
    # storescu may re-encode uncompressed data in the syntax it negotiated, and drops trailing
    # padding; the content must be the same, element for element.
    for element in original:
        if element.tag == TRAILING_PADDING:
            continue
        assert stored[element.tag].value == element.value, (original_path.name, element.keyword)


def test_storescu_folder_arrives_complete_and_indexed(scp, storage_dir):
    # storescu proposes uncompressed syntaxes only unless told otherwise: send the uncompressed
    # part of the sample study as a folder.
    result = run_dcmtk(
        "storescu", "-aet", "MODALITY", "-aec", "TEST_SCP", "+sd", "+sp", "*_small.dcm",
        "127.0.0.1", scp.port, SAMPLE_STUDY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    originals = {dcmread(p).SOPInstanceUID: p for p in SAMPLE_STUDY.glob("*_small.dcm")}
    instances = {i.sop_instance_uid: i for i in Instance.objects.all()}
    assert len(originals) == 2
    assert set(instances) == set(originals)
    assert len(stored_files(storage_dir)) == len(originals)
    assert staging_files(storage_dir) == []
    for uid, path in originals.items():
        _assert_same_content(storage_dir, instances[uid], path, "MODALITY")


@pytest.mark.parametrize(
    ("option", "name", "syntax"),
    [
        ("-xy", "SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("-xr", "MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("-xv", "MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
        ("-xd", "image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_storescu_compressed_syntax_is_accepted_as_proposed(scp, storage_dir, option, name, syntax):
    path = SAMPLE_STUDY / name
    result = run_dcmtk("storescu", option, "-aec", "TEST_SCP", "127.0.0.1", scp.port, path)
    assert result.returncode == 0, result.stderr
    instance = Instance.objects.get()
    assert instance.transfer_syntax_uid == syntax
    _assert_same_content(storage_dir, instance, path, "STORESCU")
    # Compressed data passes through storescu untouched (it deflates anew, and drops padding).
    if syntax != "1.2.840.10008.1.2.1.99" and TRAILING_PADDING not in dcmread(path):
        assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(path)


def test_dcmsend_folder_of_mixed_syntaxes_arrives_complete(scp, storage_dir):
    # dcmsend proposes each file's own transfer syntax: the way to send a mixed folder. With -dn
    # it never decompresses, so every file must arrive in its own syntax.
    result = run_dcmtk(
        "dcmsend", "-dn", "-aec", "TEST_SCP", "+sd", "127.0.0.1", scp.port, SAMPLE_STUDY
    )
    assert result.returncode == 0, result.stderr
    originals = {dcmread(p).SOPInstanceUID: p for p in SAMPLE_STUDY.glob("*.dcm")}
    instances = {i.sop_instance_uid: i for i in Instance.objects.all()}
    assert set(instances) == set(originals)
    for uid, path in originals.items():
        _assert_same_content(storage_dir, instances[uid], path, "DCMSEND")
        assert instances[uid].transfer_syntax_uid == dcmread(path).file_meta.TransferSyntaxUID


def test_storescu_resend_of_the_folder_adds_nothing(scp, storage_dir):
    for _ in range(2):
        result = run_dcmtk(
            "dcmsend", "-aec", "TEST_SCP", "+sd", "127.0.0.1", scp.port, SAMPLE_STUDY
        )
        assert result.returncode == 0, result.stderr
    assert Instance.objects.count() == len(list(SAMPLE_STUDY.glob("*.dcm")))
    assert len(stored_files(storage_dir)) == Instance.objects.count()


def test_storescu_sees_failure_status_for_a_dataset_without_study_uid(scp, storage_dir, tmp_path):
    ds = dcmread(SAMPLE_STUDY / "CT_small.dcm")
    del ds.StudyInstanceUID
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    result = run_dcmtk("storescu", "-v", "-aec", "TEST_SCP", "127.0.0.1", scp.port, broken)
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout + result.stderr
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []
