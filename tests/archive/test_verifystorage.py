"""`manage.py verifystorage` on a real archive filled over real associations."""

import shutil
from io import StringIO

import pytest
from django.core.management import call_command

from archive.models import Instance
from tests.conftest import sample_file
from tests.e2e.test_storescu import SAMPLE_STUDY
from tests.peers import run_dcmtk


@pytest.fixture
def archive(scp, storage_dir):
    result = run_dcmtk("dcmsend", "-aec", "TEST_SCP", "+sd", "127.0.0.1", scp.port, SAMPLE_STUDY)
    assert result.returncode == 0, result.stderr
    assert Instance.objects.count() == 6
    return storage_dir


def verify(storage_dir, *options: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("verifystorage", "--storage-dir", str(storage_dir), *options, stdout=out)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, out.getvalue()


def test_consistent_archive_passes(archive):
    code, output = verify(archive)
    assert code == 0, output
    assert "indexed instances checked: 6" in output
    assert output.strip().endswith("consistent")


def test_missing_file_is_reported_and_repair_removes_its_row(archive):
    victim = Instance.objects.first()
    (archive / victim.path).unlink()
    code, output = verify(archive)
    assert code == 1
    assert f"missing: {victim.path}" in output
    assert Instance.objects.count() == 6
    code, output = verify(archive, "--repair")
    assert code == 0, output
    assert not Instance.objects.filter(pk=victim.pk).exists()
    assert verify(archive)[0] == 0


def test_changed_bytes_are_a_hash_mismatch_and_quick_mode_checks_sizes_only(archive):
    victim = Instance.objects.first()
    path = archive / victim.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    code, output = verify(archive)
    assert code == 1
    assert f"hash mismatch: {victim.path}" in output
    assert verify(archive, "--quick")[0] == 0
    path.write_bytes(bytes(data[:-2]))
    code, output = verify(archive, "--quick")
    assert code == 1
    assert f"size mismatch: {victim.path}" in output


def test_orphan_dicom_file_is_indexed_by_repair_and_junk_stays_reported(archive):
    orphan_dir = archive / "copied-in"
    orphan_dir.mkdir()
    shutil.copy(sample_file("rtdose_rle_1frame.dcm"), orphan_dir / "dose.dcm")
    (orphan_dir / "notes.txt").write_text("not DICOM")
    code, output = verify(archive)
    assert code == 1
    assert "orphan: copied-in/dose.dcm" in output
    code, output = verify(archive, "--repair")
    assert code == 1  # the text file cannot be indexed
    assert "orphans indexed:           1" in output
    dose = Instance.objects.get(path="copied-in/dose.dcm")
    assert dose.sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.2"
    (orphan_dir / "notes.txt").unlink()
    code, output = verify(archive)
    assert code == 0, output


def test_staging_area_is_not_an_orphan(archive):
    stale = archive / ".incoming" / "somehost.1"
    stale.mkdir(parents=True)
    (stale / "0.part").write_bytes(b"partial")
    assert verify(archive)[0] == 0
