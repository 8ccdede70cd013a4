"""study_stable across real receiver processes: `runscp --workers 2` on one SQLite index, and
two runscp processes (two "nodes") on one PostgreSQL database. The example app stable_log
(tests/library_project) is loaded through INSTALLED_APPS and records each announcement."""

import copy
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import free_port, sample_file
from tests.peers import eventually, run_dcmtk, send_files
from tests.receiver.test_runscp import ROOT, runscp, stop, wait_listening

pytestmark = pytest.mark.slow

STABLE_AGE = "1"
# Loads stable_log into the receiver's processes, as a site adds its own apps.
RECEIVER_ENV = {
    "DJANGO_SETTINGS_MODULE": "research.receiver_settings",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "library_project"), str(ROOT)]),
}
# Stability needs its full quiet period plus the sweeper's slack and poll before it fires.
ANNOUNCED_WITHIN = 20


def node_of(pid: int) -> int:
    """The receiver process `pid` belongs to: its parent when it is a worker."""
    status = Path(f"/proc/{pid}/status").read_text()
    parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return parent if "runscp" in Path(f"/proc/{parent}/cmdline").read_text() else pid


def write_study(folder: Path, series: int, per_series: int) -> list[list[Path]]:
    """A study of `series` series as Part 10 files; one list of paths per series."""
    base = dcmread(sample_file("CT_small.dcm"))
    study_uid = generate_uid()
    result = []
    for s in range(series):
        series_uid = generate_uid()
        paths = []
        for n in range(per_series):
            ds = copy.deepcopy(base)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = n + 1
            path = folder / f"s{s}_{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        result.append(paths)
    return result


def storescu(port: int, paths: list[Path]) -> None:
    result = run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "MY_PACS", "127.0.0.1", port, *paths)
    assert result.returncode == 0, result.stderr


def test_study_stable_fires_once_per_quiet_period_with_two_workers(tmp_path):
    index = tmp_path / "index.db"
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--workers", "2", "--bind", "127.0.0.1", "--stable-age", STABLE_AGE,
        "--storage-dir", tmp_path / "received", "--index-db", index,
        env=RECEIVER_ENV,
    )  # fmt: skip
    try:
        wait_listening(port, process)
        (tmp_path / "study").mkdir()
        first, second, late = write_study(tmp_path / "study", series=3, per_series=3)
        # Two associations, handed to the two workers in turn: both ingest the study, and both
        # run a sweeper that may claim it.
        storescu(port, first)
        storescu(port, second)

        def arrivals() -> list[tuple]:
            with sqlite3.connect(index) as db:
                return db.execute(
                    "SELECT study_instance_uid, updated, instances, pid "
                    "FROM stable_log_studyarrival ORDER BY id"
                ).fetchall()

        assert eventually(lambda: len(arrivals()) == 1, timeout=ANNOUNCED_WITHIN)
        time.sleep(4)  # many more sweeps in both workers
        ((uid, updated, instances, _),) = arrivals()
        assert (updated, instances) == (0, 6)

        # A late series (pynetdicom this time) re-arms it: one more, updated, announcement.
        assert send_files(port, late, called="MY_PACS") == [0] * 3
        assert eventually(lambda: len(arrivals()) == 2, timeout=ANNOUNCED_WITHIN)
        time.sleep(4)
        assert [(u, n) for _, u, n, _ in arrivals()] == [(0, 6), (1, 9)]
        assert {row[0] for row in arrivals()} == {uid}
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "Study " in output and "stable (updated)" in output


def _postgres_url(name: str) -> str:
    """A URL for database `name` on the PostgreSQL server the suite uses."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith("postgres"):
        configured = os.environ.get("PG_URL", "postgres://postgres:postgres@127.0.0.1:5432/pacs")
    return urlunsplit(urlsplit(configured)._replace(path=f"/{name}"))


@pytest.fixture
def postgres_database():
    """A fresh PostgreSQL database of its own; skipped (failed under CI) without a server."""
    import psycopg

    url = _postgres_url("pacs_events_nodes")
    admin = _postgres_url("postgres")
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable: {exc}")
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    with connection:
        connection.execute("DROP DATABASE IF EXISTS pacs_events_nodes WITH (FORCE)")
        connection.execute("CREATE DATABASE pacs_events_nodes")
    yield url
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("DROP DATABASE IF EXISTS pacs_events_nodes WITH (FORCE)")


def test_study_stable_fires_once_across_two_receiver_nodes_on_postgresql(
    tmp_path, postgres_database
):
    import psycopg

    env = {**RECEIVER_ENV, "DATABASE_URL": postgres_database}
    ports = [free_port(), free_port()]
    processes = []
    try:
        for node, port in enumerate(ports):
            process = runscp(
                port, "MY_PACS", "--bind", "127.0.0.1", "--stable-age", STABLE_AGE,
                "--storage-dir", tmp_path / f"node{node}",
                env=env,
            )  # fmt: skip
            processes.append(process)
            # One at a time: the first migrates the new database.
            wait_listening(port, processes[-1])
        (tmp_path / "study").mkdir()
        first, second, late = write_study(tmp_path / "study", series=3, per_series=2)
        storescu(ports[0], first)
        assert send_files(ports[1], second, called="MY_PACS") == [0] * 2

        def arrivals() -> list[tuple]:
            with psycopg.connect(postgres_database) as db:
                return db.execute(
                    "SELECT updated, instances, pid FROM stable_log_studyarrival ORDER BY id"
                ).fetchall()

        assert eventually(lambda: len(arrivals()) == 1, timeout=ANNOUNCED_WITHIN)
        time.sleep(4)
        assert [(u, n) for u, n, _ in arrivals()] == [(False, 4)]

        storescu(ports[1], late)
        assert eventually(lambda: len(arrivals()) == 2, timeout=ANNOUNCED_WITHIN)
        time.sleep(4)
        assert [(u, n) for u, n, _ in arrivals()] == [(False, 4), (True, 6)]
        # Announced by a node's process: the node itself or one of its workers.
        nodes = {process.pid for process in processes}
        assert {node_of(pid) for _, _, pid in arrivals()} <= nodes
    finally:
        outputs = [stop(process) for process in processes]
    for code, output in outputs:
        assert code == 0, output


def test_a_quiet_period_that_spans_a_restart_is_announced_once_after_it(tmp_path):
    index = tmp_path / "index.db"
    port = free_port()
    options = (
        port, "MY_PACS", "--bind", "127.0.0.1", "--stable-age", "5",
        "--storage-dir", tmp_path / "received", "--index-db", index,
    )  # fmt: skip
    (tmp_path / "study").mkdir()
    (paths,) = write_study(tmp_path / "study", series=1, per_series=2)

    def arrivals() -> list[tuple]:
        with sqlite3.connect(index) as db:
            return db.execute("SELECT updated, instances FROM stable_log_studyarrival").fetchall()

    process = runscp(*options, env=RECEIVER_ENV)
    wait_listening(port, process)
    storescu(port, paths)
    code, output = stop(process)  # long before the study is quiet for 5 s
    assert code == 0, output
    assert arrivals() == []

    process = runscp(*options, env=RECEIVER_ENV)
    try:
        wait_listening(port, process)
        assert eventually(lambda: len(arrivals()) == 1, timeout=ANNOUNCED_WITHIN)
        time.sleep(3)
        assert arrivals() == [(0, 2)]
    finally:
        code, output = stop(process)
    assert code == 0, output
