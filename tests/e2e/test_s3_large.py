"""A 1 GiB instance sent by DCMTK's storescu to `runscp --storage-dir s3://BUCKET/PREFIX`: it
goes up to the bucket in checked parts read from the staged file, the receiver's peak resident
memory stays far below the instance's size, and the object holds the sent dataset byte for byte.
moto keeps the object in its own memory (this test process), not the receiver's."""

import hashlib
import sqlite3
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import free_port, sample_file
from tests.peers import run_dcmtk
from tests.receiver.test_runscp import runscp, stop, wait_listening

FRAME = 512 * 512 * 2
FRAMES = 2048  # 1 GiB of pixel data
CHUNK = 2**20
RSS_BOUND_MB = 200  # the bound for a 1 GB instance, as on the filesystem


def _large_file(path: Path) -> str:
    """CT_small with 2048 distinct 512x512x16-bit frames, written a frame at a time; its SOP
    Instance UID."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = FRAMES
    ds.PixelData = b"\0\0"  # replaced by the frames below, written after the header
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    header = data[: data.rindex(b"\xe0\x7f\x10\x00OW")]
    with path.open("wb") as out:
        out.write(header + b"\xe0\x7f\x10\x00OW\0\0" + (FRAME * FRAMES).to_bytes(4, "little"))
        frame = bytearray(FRAME)
        for n in range(FRAMES):
            frame[:8] = n.to_bytes(8, "little")
            out.write(frame)
    return str(ds.SOPInstanceUID)


def _dataset_sha256(chunks) -> tuple[str, str]:
    """(SHA-256 of the whole Part 10 stream, SHA-256 of its dataset after the file meta group),
    read a chunk at a time."""
    whole, dataset = hashlib.sha256(), hashlib.sha256()
    head = b""
    skip: int | None = None
    for chunk in chunks:
        whole.update(chunk)
        if skip is None:
            head += chunk
            if len(head) < 144:
                continue
            assert head[128:132] == b"DICM"
            group, element, vr, _ = struct.unpack("<HH2sH", head[132:140])
            assert (group, element, vr) == (2, 0, b"UL")
            skip = 144 + struct.unpack("<I", head[140:144])[0]
            chunk, head = head, b""
        if skip:
            taken = min(skip, len(chunk))
            chunk, skip = chunk[taken:], skip - taken
        dataset.update(chunk)
    return whole.hexdigest(), dataset.hexdigest()


def _file_chunks(path: Path):
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def _memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {name: int(status.split(f"{name}:")[1].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


class _Sampler(threading.Thread):
    """The largest resident set of `pid` seen while running, and its high-water mark."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.hwm, self.done = pid, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                memory = _memory_mb(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.peak = max(self.peak, memory["VmRSS"])
            self.hwm = max(self.hwm, memory["VmHWM"])
            time.sleep(0.05)


@pytest.mark.slow
def test_a_1_gib_instance_goes_to_the_bucket_with_memory_flat(moto_server, tmp_path):
    path = tmp_path / "large.dcm"
    sop_uid = _large_file(path)
    size = path.stat().st_size
    assert size > 2**30
    _, sent_dataset = _dataset_sha256(_file_chunks(path))

    bucket = moto_server.bucket_new()
    port = free_port()
    index = tmp_path / "index.db"
    staging = tmp_path / "staging"
    environment = {**moto_server.environment, "DICOM_STAGING_DIR": str(staging)}
    process = runscp(
        port,
        "MY_PACS",
        "--storage-dir",
        f"s3://{bucket}/big",
        "--index-db",
        index,
        "--bind",
        "127.0.0.1",
        env=environment,
    )
    try:
        wait_listening(port, process)
        baseline = _memory_mb(process.pid)["VmRSS"]
        sampler = _Sampler(process.pid)
        sampler.start()
        started = time.monotonic()
        # moto, in this process, takes 20-40 s to assemble the parts on a loaded machine
        # (CompleteMultipartUpload); storescu's default 60 s socket timeout then decides the
        # test, not the receiver.
        sent = run_dcmtk(
            "storescu", "-v", "-ts", "300", "-aec", "MY_PACS", "127.0.0.1", str(port), path,
            timeout=900,
        )  # fmt: skip
        seconds = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        hwm = _memory_mb(process.pid)["VmHWM"]
    finally:
        code, output = stop(process)
    print(
        f"\n1 GiB instance ({size / 2**20:.0f} MiB) into s3 (moto): storescu {seconds:.1f} s; "
        f"receiver RSS {baseline:.0f} MB before, peak sampled {sampler.peak:.0f} MB, "
        f"VmHWM {hwm:.0f} MB"
    )
    assert sent.returncode == 0, sent.stderr[-2000:] + output
    assert "Received Store Response (Success)" in sent.stdout + sent.stderr, output
    assert code == 0, output
    assert "Traceback" not in output
    assert hwm < RSS_BOUND_MB, output

    with sqlite3.connect(index) as db:
        rows = db.execute(
            "SELECT path, sha256, size FROM archive_instance WHERE sop_instance_uid = ?", (sop_uid,)
        ).fetchall()
    assert len(rows) == 1
    relative, indexed_sha256, indexed_size = rows[0]
    key = f"big/{relative}"
    assert key in moto_server.keys(bucket)
    body = moto_server.client().get_object(Bucket=bucket, Key=key)["Body"]
    stored_whole, stored_dataset = _dataset_sha256(body.iter_chunks(CHUNK))
    assert stored_dataset == sent_dataset
    assert stored_whole == indexed_sha256
    assert indexed_size == moto_server.client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    assert not [p for p in staging.rglob("*") if p.is_file()]
