"""Ingest rate and look-up times with a large index already in place.

    python bench/scale.py --rows 1000000 --count 1000

Fills a fresh SQLite index with synthetic rows (plain SQL, in seconds rather than hours), then
sends the same corpus to a receiver on an empty index and on the filled one, alternating, and
times the look-ups users make through the ORM.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archive.person_names import person_name_fold  # noqa: E402
from archive.storage.base import MARKER  # noqa: E402
from bench import run  # noqa: E402
from bench.corpus import corpus_write  # noqa: E402

PER_SERIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 100, 4, 2


def migrate(index: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v", "0"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{index}"},
        check=True,
    )


def fill(index: Path, rows: int) -> float:
    start = time.perf_counter()
    db = sqlite3.connect(index)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    # Rounded up: a series or study pointing past the last filler row would otherwise belong
    # to the first real one stored after the fill.
    series_count = -(-rows // PER_SERIES)
    study_count = -(-series_count // SERIES_PER_STUDY)
    patient_count = -(-study_count // STUDIES_PER_PATIENT)
    db.executemany(
        "INSERT INTO archive_patient (id, patient_id, issuer_of_patient_id, name, name_fold, "
        "sex) VALUES (?, ?, '', ?, ?, 'O')",
        (
            (p, f"FILL{p:08d}", name, person_name_fold(name))
            for p in range(1, patient_count + 1)
            for name in [f"FILLER^PATIENT{p:08d}"]
        ),
    )
    first = date(2015, 1, 1)
    db.executemany(
        "INSERT INTO archive_study (id, patient_id, study_instance_uid, study_date, "
        "accession_number, study_id, description, referring_physician_name, "
        "referring_physician_name_fold, stable) VALUES (?, ?, ?, ?, ?, '1', 'FILLER', '', '', 1)",
        (
            (s, (s - 1) // STUDIES_PER_PATIENT + 1, f"2.25.1{s:012d}",
             (first + timedelta(days=s % 3650)).isoformat(), f"F{s:09d}")
            for s in range(1, study_count + 1)
        ),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO archive_series (id, study_id, series_instance_uid, modality, series_number, "
        "description, body_part_examined, stable) VALUES (?, ?, ?, 'CT', 1, '', '', 1)",
        (
            (s, (s - 1) // SERIES_PER_STUDY + 1, f"2.25.2{s:012d}")
            for s in range(1, series_count + 1)
        ),
    )
    db.executemany(
        "INSERT INTO archive_instance (id, series_id, sop_instance_uid, sop_class_uid, "
        "instance_number, transfer_syntax_uid, path, size, sha256, received_at, "
        "calling_ae_title, remote_address) VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', 1, "
        "'1.2.840.10008.1.2.1', ?, 12000, '', ?, 'FILLER', '127.0.0.1')",
        (
            (i, (i - 1) // PER_SERIES + 1, f"2.25.3{i:012d}", f"fill/{i}.dcm",
             f"2026-01-01 00:{i % 60:02d}:00")
            for i in range(1, rows + 1)
        ),
    )  # fmt: skip
    db.commit()
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - start


def storage_bind(index: Path, store: Path) -> None:
    """Record `store` as the storage `index` describes, as a receiver's first start on an empty
    index does (archive.storage_identity). The filler rows name files that do not exist: a
    receiver would otherwise take the filled index for another storage's and refuse to start."""
    identity = uuid.uuid4()
    now = datetime.now(UTC)
    store.mkdir(parents=True, exist_ok=True)
    marker = {"identity": str(identity), "written_at": now.isoformat(timespec="seconds")}
    (store / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    with sqlite3.connect(index) as db:
        db.execute("DELETE FROM archive_storagelocation")
        db.execute(
            "INSERT INTO archive_storagelocation (identity, directory, recorded_at) "
            "VALUES (?, ?, ?)",
            (identity.hex, str(store.resolve()), now.strftime("%Y-%m-%d %H:%M:%S")),
        )
    db.close()


def lookups(index: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bench.lookups"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{index}",
             "DJANGO_SETTINGS_MODULE": "pacsproject.settings"},
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout


def ingest(index: Path, corpus: list[Path], base: Path, associations: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=base))
    storage_bind(index, work / "store")
    port = run.free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscp", str(port), "BENCH", "--bind",
         "127.0.0.1", "--storage-dir", str(work / "store"), "--index-db", str(index),
         *run.workers_arguments()],
        cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run.wait_port(port, process)
    server = run.Server("ours", process, port, "BENCH", work / "store", index)
    try:
        log = work / "log.cfg"
        log.write_text(run.LOG_CONFIG)
        return run.send(server, corpus, associations, log).rate
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--workers", type=int, help="default: runscp's own")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    run.OURS_WORKERS = args.workers
    args.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="scale-", dir=args.out))
    filled = base / "filled.db"
    migrate(filled)
    print(f"filled {args.rows} instances in {fill(filled, args.rows):.0f} s")
    print("| look-up | rows | median ms | max ms |\n|---|---|---|---|")
    print(lookups(filled), end="")
    corpus_dir = base / "corpus"
    rates: dict[str, list[float]] = {"empty": [], "filled": []}
    for attempt in range(args.repeat):
        # A new corpus each time: instances already indexed would count as duplicates.
        shutil.rmtree(corpus_dir, ignore_errors=True)
        corpus = corpus_write(args.count, 64, corpus_dir, args.associations)
        empty = base / f"empty-{attempt}.db"
        migrate(empty)
        rates["empty"].append(ingest(empty, corpus, base, args.associations))
        rates["filled"].append(ingest(filled, corpus, base, args.associations))
        print(f"  run {attempt + 1}: empty {rates['empty'][-1]:.0f}/s, "
              f"filled {rates['filled'][-1]:.0f}/s", flush=True)  # fmt: skip
    empty_rate = sorted(rates["empty"])[len(rates["empty"]) // 2]
    filled_rate = sorted(rates["filled"])[len(rates["filled"]) // 2]
    print(
        f"ingest, median of {args.repeat}: empty index {empty_rate:.0f}/s, "
        f"with {args.rows} instances {filled_rate:.0f}/s ({filled_rate / empty_rate:.0%})"
    )


if __name__ == "__main__":
    main()
