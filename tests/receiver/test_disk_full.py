"""Storage faults on a real, small filesystem (a tmpfs mounted for the test, where the machine
lets us mount): the volume fills up in the middle of a write, and the free-space floor."""

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from archive.models import Instance
from tests.conftest import sample_file, staging_files, stored_files
from tests.peers import scu


def _mount(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}): the injected-error "
            "tests in tests/archive/test_services.py cover storage faults instead"
        )


@pytest.fixture
def small_volume(storage_dir):
    _mount(storage_dir, "3m")
    yield storage_dir
    subprocess.run(["umount", "-l", str(storage_dir)], check=False)


def _ct(rows: int = 512) -> object:
    """A CT instance with `rows` x `rows` 16-bit pixels (512: 0.5 MB) and fresh UIDs."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    ds.SOPInstanceUID = generate_uid()
    return ds


def _resize(volume: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(volume)], check=True)


def test_volume_full_mid_write_is_out_of_resources_and_recovers(start_scp, small_volume):
    server = start_scp(min_free_mb=0)
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    statuses = []
    try:
        while not statuses or statuses[-1] == 0x0000:
            statuses.append(assoc.send_c_store(_ct()).Status)
            assert len(statuses) < 20, "a 3 MB volume never filled up"
        assert statuses[-1] == 0xA700  # out of resources, not an error
        stored_ok = statuses.count(0x0000)
        assert stored_ok >= 2
        # Nothing half-written is left: no staging file, and every row has its whole file.
        assert staging_files(small_volume) == []
        assert len(stored_files(small_volume)) == stored_ok == Instance.objects.count()
        for instance in Instance.objects.all():
            body = (small_volume / instance.path).read_bytes()
            assert hashlib.sha256(body).hexdigest() == instance.sha256
        # Space comes back: the same association goes on.
        _resize(small_volume, "16m")
        assert assoc.send_c_store(_ct()).Status == 0x0000
    finally:
        assoc.release()
    assert Instance.objects.count() == stored_ok + 1


def test_below_min_free_nothing_is_written_until_space_returns(start_scp, small_volume):
    _resize(small_volume, "8m")
    server = start_scp(min_free_mb=5)
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (4 * 2**20))  # 4 MB free: below the 5 MB floor
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(_ct(64)).Status == 0xA700
        assert Instance.objects.count() == 0
        assert staging_files(small_volume) == []
        ballast.unlink()
        assert assoc.send_c_store(_ct(64)).Status == 0x0000
    finally:
        assoc.release()
    assert Instance.objects.count() == 1
