"""UIDs that break PS3.5 but that real senders and anonymisers produce, sent with DCMTK's
storescu: stored by default (as DCMTK's storescp and Orthanc do), refused with
`storage.strict_uids`. Missing UIDs stay refused either way."""

import logging
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread

from archive.models import Instance, Series, Study
from tests.conftest import stored_files
from tests.peers import run_dcmtk

SAMPLE_STUDY = Path(__file__).resolve().parents[2] / "fixtures" / "sample-study"

# Each breaks PS3.5 9.1 in a way seen in the field.
LETTERS = "1.2.826.0.1.3680043.9.7133.STUDY.ABC"
DIGEST = "2.25.9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
LONG_COMPONENT = "1.2.840.113619.2.55.3.0000604831.09999999999999999999999999999999999999999.1"
SLASHED = "1.2.3/../../etc/passwd"


def _file_with_uids(folder: Path, name: str, *, study: str, series: str, sop: str) -> Path:
    ds = dcmread(SAMPLE_STUDY / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very UIDs under test
        ds.save_as(path)
    return path


@pytest.fixture
def odd_files(tmp_path) -> list[Path]:
    folder = tmp_path / "odd"
    folder.mkdir()
    return [
        _file_with_uids(folder, "a.dcm", study=LETTERS, series=DIGEST, sop=LONG_COMPONENT),
        _file_with_uids(folder, "b.dcm", study=LETTERS, series=DIGEST, sop=DIGEST + ".2"),
        _file_with_uids(folder, "c.dcm", study="1.2.3", series="1.2.3.4", sop=SLASHED),
    ]


def _storescu(port: int, folder: Path):
    return run_dcmtk("storescu", "-v", "-aec", "TEST_SCP", "+sd", "127.0.0.1", port, folder)


def test_nonconforming_uids_are_stored_verbatim_under_safe_names(
    scp, storage_dir, odd_files, caplog
):
    caplog.set_level(logging.WARNING, logger="receiver.handlers")
    result = _storescu(scp.port, odd_files[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error" not in result.stdout + result.stderr

    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == {
        LONG_COMPONENT,
        DIGEST + ".2",
        SLASHED,
    }
    assert set(Study.objects.values_list("study_instance_uid", flat=True)) == {LETTERS, "1.2.3"}
    assert Series.objects.get(series_instance_uid=DIGEST).instances.count() == 2
    files = stored_files(storage_dir)
    assert len(files) == 3
    for instance in Instance.objects.all():
        stored = (storage_dir / instance.path).resolve()
        assert stored.is_relative_to(storage_dir.resolve())
        assert ".." not in Path(instance.path).parts
        assert dcmread(stored).SOPInstanceUID == instance.sop_instance_uid

    # One line for the association, with the count; not one per instance.
    lines = [r.getMessage() for r in caplog.records if "break PS3.5" in r.getMessage()]
    assert len(lines) == 1
    assert "3 instance(s) stored with UIDs that break PS3.5" in lines[0]


def test_strict_uids_refuses_them_with_cannot_understand(start_scp, storage_dir, odd_files):
    server = start_scp(strict_uids=True)
    result = _storescu(server.port, odd_files[0].parent)
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout + result.stderr
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []


def test_empty_uid_is_refused_even_when_lenient(scp, storage_dir, tmp_path):
    path = _file_with_uids(tmp_path, "empty.dcm", study="", series=DIGEST, sop="1.2.3.4.5")
    result = run_dcmtk("storescu", "-v", "-aec", "TEST_SCP", "127.0.0.1", scp.port, path)
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout + result.stderr
    assert not Instance.objects.exists()
