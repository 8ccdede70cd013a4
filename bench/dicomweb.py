"""DICOMweb benchmark: STOW-RS and WADO-RS of one study side by side with Orthanc and its
DICOMweb plugin (Debian orthanc-dicomweb), and QIDO-RS on a large index.

    python bench/dicomweb.py                                   # 1,000,000 rows, 500 instances
    python bench/dicomweb.py --rows 10000 --count 20 --repeat 1 # smoke run

1. Fills a fresh SQLite index with `--rows` synthetic instances (bench/scale.py) and serves it
   with gunicorn (`--workers`, default 2) on a free port, next to Orthanc with its DICOMweb
   plugin on its own store and index.
2. STOW-RS: the same `--count`-instance CT study (`--pixels` square) POSTed once to each as one
   multipart/related body, read from the files as it is sent. Seconds and instances/s.
3. WADO-RS: the study retrieved `--repeat` times from each, alternating, with
   `transfer-syntax=*` (as stored), the body read to the end. Median seconds; Orthanc's time
   over ours (1.0 or more: we are at least as fast); and each server's CPU per retrieval
   (its worker processes too), the median of the repeats.
4. QIDO-RS on ours: median of `--finds` study searches by patient-name prefix, date range and
   modality (target: 50 ms or less at 1,000,000 instances).
"""

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run, scale  # noqa: E402
from bench.qr import study_write  # noqa: E402

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC = "/usr/sbin/Orthanc"
USER, PASSWORD = "bench", "bench-password-0123"


def _wait_http(url: str, process: subprocess.Popen, auth=None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({process.returncode})")
        try:
            requests.get(url, auth=auth, timeout=30)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"{url}: no answer within 60 s")


def start_ours(
    work: Path, index: Path, workers: int, started: list[subprocess.Popen]
) -> tuple[subprocess.Popen, str]:
    port = run.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{index}",
        "DICOM_STORAGE_DIR": str(work / "store"),
        "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnopqrstuv",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", USER,
         "--email", "bench@example.org"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    with (work / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            [gunicorn, "pacsproject.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers),
             "--timeout", "600"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    started.append(process)
    root = f"http://127.0.0.1:{port}/dicomweb"
    _wait_http(f"{root}/studies?limit=1", process, (USER, PASSWORD))
    return process, root


def start_orthanc(work: Path, started: list[subprocess.Popen]) -> tuple[subprocess.Popen, str]:
    http = run.free_port()
    config = {
        "Name": "dwbench",
        "DicomPort": run.free_port(),
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(work / "orthanc-store"),
        "IndexDirectory": str(work / "orthanc-index"),
        "StorageCompression": False,
        "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started.append(process)
    root = f"http://127.0.0.1:{http}/dicom-web"
    _wait_http(f"http://127.0.0.1:{http}/system", process)
    return process, root


def body(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def stow(root: str, files: list[Path], auth) -> float:
    started = time.perf_counter()
    response = requests.post(
        f"{root}/studies",
        data=body(files, "BENCHBOUNDARY"),
        auth=auth,
        headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=BENCHBOUNDARY',
            "Accept": "application/dicom+json",
        },
        timeout=3600,
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        print(f"  ! STOW to {root}: {response.status_code} {response.text[:200]}")
    return elapsed


def cpu_seconds(process: subprocess.Popen) -> float:
    """User and system CPU of a server process and its children (gunicorn's workers) so far."""
    pids, total = [process.pid], 0.0
    for task in Path(f"/proc/{process.pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wado(root: str, study: str, auth) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    with requests.get(
        f"{root}/studies/{study}",
        auth=auth,
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        stream=True,
        timeout=3600,
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def qido(root: str, params: dict[str, str], auth, repeat: int) -> tuple[float, int]:
    times, matches = [], 0
    with requests.Session() as session:
        session.auth = auth
        for _ in range(repeat):
            started = time.perf_counter()
            response = session.get(f"{root}/studies", params={**params, "limit": "100"}, timeout=60)
            times.append(time.perf_counter() - started)
            matches = len(response.json())
    return statistics.median(times) * 1000, matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="indexed instances")
    parser.add_argument("--count", type=int, default=500, help="instances in the study")
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--finds", type=int, default=21)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    print(f"$ {' '.join(sys.argv)}  ({os.cpu_count()} cores)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dicomweb-", dir=args.out))
    index = work / "index.db"
    scale.migrate(index)
    seconds = scale.fill(index, args.rows)
    with sqlite3.connect(index) as db:
        db.execute("UPDATE archive_series SET modality = 'PT' WHERE id % 500 = 0")
        db.execute("ANALYZE")
    print(f"index filled with {args.rows:,} instances in {seconds:.1f} s")
    keys = study_write(args.count, args.pixels, work / "corpus", tag="DW")
    files = sorted((work / "corpus").glob("*.dcm"))
    started: list[subprocess.Popen] = []
    auth = (USER, PASSWORD)
    try:
        ours_process, ours_root = start_ours(work, index, args.workers, started)
        orthanc_process, orthanc_root = start_orthanc(work, started)
        print(f"\n{args.count} CT instances of {args.pixels}x{args.pixels}:")
        print(f"  {'':12} {'ours s':>8} {'orthanc s':>10} {'ours inst/s':>12} {'ratio':>6}")
        ours_s, theirs = stow(ours_root, files, auth), stow(orthanc_root, files, None)
        print(f"  {'STOW-RS':12} {ours_s:8.2f} {theirs:10.2f} {args.count / ours_s:12.0f} "
              f"{theirs / ours_s:6.2f}")  # fmt: skip
        timings: dict[str, list[float]] = {"ours": [], "orthanc": []}
        cpu: dict[str, list[float]] = {"ours": [], "orthanc": []}
        peers = {
            "ours": (ours_root, auth, ours_process),
            "orthanc": (orthanc_root, None, orthanc_process),
        }
        for _ in range(args.repeat):
            for name, (root, peer_auth, process) in peers.items():
                before = cpu_seconds(process)
                timings[name].append(wado(root, keys["StudyInstanceUID"], peer_auth)[0])
                cpu[name].append(cpu_seconds(process) - before)
        ours_s, theirs = statistics.median(timings["ours"]), statistics.median(timings["orthanc"])
        print(f"  {'WADO-RS':12} {ours_s:8.2f} {theirs:10.2f} {args.count / ours_s:12.0f} "
              f"{theirs / ours_s:6.2f}")  # fmt: skip
        # The server's CPU per retrieval (its workers too; clock ticks, 10 ms): on a shared
        # machine a steadier comparison than the time. The median, as for the time: a gunicorn
        # worker's first Basic-authenticated request also pays the password hash.
        ours_cpu, theirs_cpu = (statistics.median(cpu[name]) for name in ("ours", "orthanc"))
        ratio = theirs_cpu / max(ours_cpu, 0.01)
        print(f"  {'WADO-RS CPU':12} {ours_cpu:8.2f} {theirs_cpu:10.2f} {'':12} {ratio:6.2f}"
              "  (server CPU s per retrieval)")  # fmt: skip

        print(f"\nQIDO-RS studies, {args.rows:,} indexed instances (median of {args.finds}):")
        for name, params in (
            ("name prefix", {"PatientName": "QRB*"}),
            ("date range", {"StudyDate": "20300601-20300630"}),
            ("modality", {"ModalitiesInStudy": "PT"}),
        ):
            ms, matches = qido(ours_root, params, auth, args.finds)
            verdict = "ok" if ms <= 50 else "SLOWER than 50 ms"
            print(f"  {name:14} {ms:7.1f} ms  {matches:4d} match(es)  {verdict}")
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
