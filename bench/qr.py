"""Query/Retrieve benchmark: C-FIND on a large index, C-MOVE and C-GET side by side with Orthanc.

    python bench/qr.py                                   # 1,000,000 rows, 500-instance studies
    python bench/qr.py --rows 10000 --count 20 --repeat 1 # smoke run
    python bench/qr.py --rows 800 --count 100 --no-orthanc # ours only (before/after a change)

1. Fills a fresh SQLite index with `--rows` synthetic instances (bench/scale.py; one series in
   500 is PT, so a modality query is selective), stores a real `--count`-instance CT study into
   our receiver on top of it, and times study-level C-FINDs through pynetdicom on one
   association: patient-name prefix, patient ID, accession number, date range, modality.
   Each is repeated `--finds` times; the median is printed with the number of matches
   (target: 20 ms or less).
2. Stores the same study into Orthanc (its own store and index), then retrieves it from both,
   alternating, `--repeat` times: C-MOVE to DCMTK's storescp (movescu) and C-GET (getscu),
   for each `--pixels` size (64x64 and 512x512 CT). Prints median seconds, instances/s and
   Orthanc's time over ours (1.0 or more: we are at least as fast).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # noqa: E402

from bench import run, scale  # noqa: E402
from bench.corpus import instance  # noqa: E402
from routing.scu import nodelay  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}
ORTHANC = "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else "Orthanc"
SCU = "BENCHSCU"


def study_write(count: int, rows: int, out: Path, tag: str) -> dict[str, str]:
    """One study of `count` CT instances in series of 100; return its keys."""
    out.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "study_number": 4242, "patient_number": 4242}
    for index in range(count):
        if index % 100 == 0:
            uids["series"] = generate_uid()
            uids["series_number"] = index // 100 + 1
        ds = instance(index, rows, uids)
        ds.PatientName = f"QRBENCH^{tag}"
        ds.PatientID = f"QRBENCH{tag}"
        ds.AccessionNumber = f"QRACC{tag}"
        ds.StudyDate = "20300615"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{index:05d}.dcm", enforce_file_format=True)
    return {"StudyInstanceUID": uids["study"], "PatientID": f"QRBENCH{tag}"}


def storescu(port: int, ae_title: str, folder: Path) -> None:
    subprocess.run(
        ["storescu", "-aet", SCU, "-aec", ae_title, "+sd", "127.0.0.1", str(port), str(folder)],
        env=NODELAY, check=True, capture_output=True,
    )  # fmt: skip


def start_ours(work: Path, index: Path, destination_port: int) -> run.Server:
    port = run.free_port()
    config = work / "qr.yaml"
    config.write_text(
        f"remote_aes:\n  - {{ae_title: STORESCP, host: 127.0.0.1, port: {destination_port}}}\n"
    )
    env = {**os.environ, "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}
    with (work / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runscp", str(port), "BENCH",
             "--config", str(config), "--bind", "127.0.0.1", "--storage-dir",
             str(work / "store"), "--index-db", str(index)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    run.wait_port(port, process)
    return run.Server("ours", process, port, "BENCH", work / "store", index)


def start_orthanc(work: Path, destination_port: int) -> run.Server:
    port, http = run.free_port(), run.free_port()
    config = {
        "Name": "qrbench",
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(work / "orthanc-store"),
        "IndexDirectory": str(work / "orthanc-index"),
        "DicomCheckCalledAet": False,
        "StorageCompression": False,
        "DicomAssociationCloseDelay": 0,
        "Plugins": [],
        "DicomModalities": {
            "storescp": ["STORESCP", "127.0.0.1", destination_port],
            "bench": [SCU, "127.0.0.1", 104],
        },
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(path)], env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run.wait_port(port, process)
    return run.Server("orthanc", process, port, "ORTHANC", work / "orthanc-store")


def start_storescp(folder: Path) -> tuple[subprocess.Popen, int]:
    port = run.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(folder), str(port)],
        env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run.wait_port(port, process)
    return process, port


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _clear(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)


def retrieve(kind: str, server: run.Server, study: str, out: Path) -> float:
    """Seconds for one C-MOVE (to storescp, files in `out`) or C-GET (into `out`)."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    if kind == "move":
        command = ["movescu", "-S", "-aet", SCU, "-aec", server.ae_title, "-aem", "STORESCP"]
    else:
        command = ["getscu", "-S", "-aet", SCU, "-aec", server.ae_title, "-od", str(out)]
    started = time.perf_counter()
    subprocess.run(
        [*command, *keys, "127.0.0.1", str(server.port)],
        env=NODELAY, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def finds(port: int, keys: dict[str, str], repeat: int) -> list[tuple[str, float, int]]:
    """Median milliseconds of study-level C-FINDs, one association."""
    queries = {
        "patient name prefix": {"PatientName": f"{keys['name_prefix']}*"},
        "patient ID": {"PatientID": keys["PatientID"]},
        "accession number": {"AccessionNumber": keys["AccessionNumber"]},
        "date range": {"StudyDate": "20300601-20300630"},
        "modality": {"ModalitiesInStudy": "PT"},
    }
    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    # Nagle off on our side too, as for the DCMTK tools (TCP_NODELAY=1).
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="BENCH", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
    )
    results = []
    try:
        for name, match in queries.items():
            timings, matches = [], 0
            for _ in range(repeat):
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate",
                                "AccessionNumber", "ModalitiesInStudy",
                                "NumberOfStudyRelatedInstances"):  # fmt: skip
                    setattr(identifier, keyword, "")
                for keyword, value in match.items():
                    setattr(identifier, keyword, value)
                started = time.perf_counter()
                responses = list(
                    assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
                )
                timings.append(1000 * (time.perf_counter() - started))
                matches = sum(1 for status, _ in responses if status.Status == 0xFF00)
            results.append((name, statistics.median(timings), matches))
    finally:
        assoc.release()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="indexed instances")
    parser.add_argument("--count", type=int, default=500, help="instances in the study")
    parser.add_argument("--pixels", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--finds", type=int, default=21)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--no-orthanc",
        action="store_true",
        help="time our retrievals only (comparing two versions of ours; no ratio)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qr-", dir=args.out))
    index = work / "index.db"
    print(f"work directory {work}")

    scale.migrate(index)
    seconds = scale.fill(index, args.rows)
    scale.storage_bind(index, work / "store")
    import sqlite3

    with sqlite3.connect(index) as db:
        db.execute("UPDATE archive_series SET modality = 'PT' WHERE id % 500 = 0")
        db.execute("ANALYZE")
    print(f"index filled with {args.rows:,} instances in {seconds:.1f} s")

    studies = {
        px: study_write(args.count, px, work / f"corpus-{px}", tag=f"{px}") for px in args.pixels
    }
    destination = work / "storescp"
    storescp, destination_port = start_storescp(destination)
    ours = start_ours(work, index, destination_port)
    orthanc = None if args.no_orthanc else start_orthanc(work, destination_port)
    servers = [ours] if orthanc is None else [ours, orthanc]
    try:
        for px in args.pixels:
            for server in servers:
                storescu(server.port, server.ae_title, work / f"corpus-{px}")

        first = args.pixels[0]
        keys = {
            "name_prefix": "QRBENCH",
            "PatientID": studies[first]["PatientID"],
            "AccessionNumber": f"QRACC{first}",
        }
        print(f"\nC-FIND, study level, {args.rows:,} indexed instances (median of {args.finds}):")
        for name, ms, matches in finds(ours.port, keys, args.finds):
            verdict = "ok" if ms <= 20 else "SLOWER than 20 ms"
            print(f"  {name:22} {ms:7.1f} ms  {matches:5d} match(es)  {verdict}")

        print(f"\nRetrieve of a {args.count}-instance CT study (median of {args.repeat}):")
        print(f"  {'':22} {'ours s':>8} {'orthanc s':>10} {'ours inst/s':>12} {'ratio':>6}")
        get_out = work / "get"
        get_out.mkdir()
        for px in args.pixels:
            study = studies[px]["StudyInstanceUID"]
            for kind in ("move", "get"):
                timings: dict[str, list[float]] = {"ours": [], "orthanc": []}
                for _ in range(args.repeat):
                    for server in servers:
                        target = destination if kind == "move" else get_out
                        _clear(target)
                        timings[server.name].append(retrieve(kind, server, study, get_out))
                        received = _files(target)
                        if received != args.count:
                            print(f"  ! {server.name} {kind}: {received} of {args.count} arrived")
                ours_s = statistics.median(timings["ours"])
                if orthanc is None:
                    label = f"C-{kind.upper()} {px}x{px}"
                    print(f"  {label:22} {ours_s:8.2f} {'-':>10} {args.count / ours_s:12.0f}")
                    continue
                theirs = statistics.median(timings["orthanc"])
                label = f"C-{kind.upper()} {px}x{px}"
                print(
                    f"  {label:22} {ours_s:8.2f} {theirs:10.2f} {args.count / ours_s:12.0f} "
                    f"{theirs / ours_s:6.2f}"
                )
    finally:
        ours.stop()
        if orthanc is not None:
            orthanc.stop()
        storescp.terminate()
        storescp.wait()


if __name__ == "__main__":
    main()
