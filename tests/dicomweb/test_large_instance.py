"""A 1 GB instance through gunicorn over HTTP: stored with STOW-RS (a chunked body) and sent
with WADO-RS (transfer-syntax=*), byte for byte, while the worker's resident memory stays
within a bound far below the instance's size (sampled from /proc as it runs)."""

import hashlib
import threading
import time
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Instance
from archive.storage import Storage
from dicomweb.multipart import closing, part_header
from tests.conftest import sample_file

FRAME = 512 * 512 * 2
FRAMES = 2048  # 1 GiB of pixel data
CHUNK = 1 << 20
RSS_BOUND_MB = 32  # measured: +12 MB storing, +2 MB sending


def _large_file(path: Path) -> tuple[str, str]:
    """CT_small with 2048 frames of 512x512x16 bits, written a frame at a time: (SOP UID,
    SHA-256 of the pixel data)."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = FRAMES
    ds.PixelData = b"\0\0"  # replaced by the frames below, written after the header
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    header = data[: data.rindex(b"\xe0\x7f\x10\x00OW")]
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for piece in (header, b"\xe0\x7f\x10\x00OW\0\0", (FRAME * FRAMES).to_bytes(4, "little")):
            out.write(piece)
        frame = bytearray(FRAME)
        for n in range(FRAMES):
            frame[:8] = n.to_bytes(8, "little")  # each frame its own
            out.write(frame)
            digest.update(frame)
    return ds.SOPInstanceUID, digest.hexdigest()


def _worker(master: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise AssertionError("gunicorn started no worker")


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class _Sampler(threading.Thread):
    """The largest resident set of `pid` while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> "_Sampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


@pytest.mark.slow
def test_a_1_gb_instance_stored_and_sent_with_memory_bounded(
    gunicorn_process, auth, tmp_path, storage_dir
):
    root, master = gunicorn_process
    path = tmp_path / "large.dcm"
    sop_uid, pixels_digest = _large_file(path)
    size = path.stat().st_size
    assert size > 2**30
    worker = _worker(master.pid)
    # Warm the worker up (imports, a database connection) before its baseline.
    assert requests.get(f"{root}/studies", auth=auth, timeout=60).status_code == 200
    baseline = _rss_mb(worker)

    def body():
        yield b"--LARGE\r\nContent-Type: application/dicom\r\n\r\n"
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk
        yield b"\r\n--LARGE--\r\n"

    started = time.monotonic()
    with _Sampler(worker) as stow_memory:
        response = requests.post(
            f"{root}/studies",
            data=body(),
            auth=auth,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=LARGE'},
            timeout=600,
        )
    stow_seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    row = Instance.objects.select_related("series__study").get(sop_instance_uid=sop_uid)
    url = (
        f"{root}/studies/{row.series.study.study_instance_uid}/series/"
        f"{row.series.series_instance_uid}/instances/{sop_uid}"
    )
    started = time.monotonic()
    with _Sampler(worker) as wado_memory:
        response = requests.get(
            url,
            auth=auth,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            stream=True,
            timeout=600,
        )
        assert response.status_code == 200
        boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0]
        received, digest = 0, hashlib.sha256()
        for chunk in response.iter_content(CHUNK):
            received += len(chunk)
            digest.update(chunk)
    wado_seconds = time.monotonic() - started
    print(
        f"\n1 GiB instance ({size / 2**20:.0f} MiB): worker RSS {baseline:.0f} MB before; "
        f"STOW {stow_seconds:.1f} s, peak {stow_memory.peak:.0f} MB; "
        f"WADO {wado_seconds:.1f} s, peak {wado_memory.peak:.0f} MB"
    )
    # What was sent is the stored file, byte for byte (the ingest writes its own file meta:
    # the pixel data is what was posted).
    expected, pixels = hashlib.sha256(), hashlib.sha256()
    head = part_header(boundary, f"application/dicom; transfer-syntax={row.transfer_syntax_uid}")
    expected.update(head)
    with Storage(storage_dir).open(row.path) as source:
        stored_size = source.seek(0, 2)
        source.seek(0)
        while chunk := source.read(CHUNK):
            expected.update(chunk)
        source.seek(stored_size - FRAME * FRAMES)
        while chunk := source.read(CHUNK):
            pixels.update(chunk)
    expected.update(b"\r\n" + closing(boundary))
    assert received == len(head) + stored_size + 2 + len(closing(boundary))
    assert digest.hexdigest() == expected.hexdigest()
    assert pixels.hexdigest() == pixels_digest
    assert stow_memory.peak - baseline < RSS_BOUND_MB
    assert wado_memory.peak - baseline < RSS_BOUND_MB
