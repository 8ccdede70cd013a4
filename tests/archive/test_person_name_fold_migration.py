"""Migration 0007 on an index that already holds names: every folded copy filled (in batches
of archive/migrations/0007's BATCH, so more rows than one batch), the old UPPER(name) index
replaced, on SQLite and on PostgreSQL, by `manage.py migrate` as an upgrade runs it."""

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from archive.person_names import person_name_fold

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROWS = 25_000  # two and a half batches
NAMES = ["DOE^JOHN{}", "MÜLLER^HANS{}", "Straße^Jörg{}", "ΔΙΟΝΥΣΙΟΣ{}", "山田^太郎{}", ""]


def _migrate(url: str, *target: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_")}
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", *target, "-v", "0"],
        cwd=ROOT, env={**env, "DATABASE_URL": url}, check=True, timeout=600,
    )  # fmt: skip


def _postgres_server() -> str:
    for candidate in (os.environ.get("DATABASE_URL", ""), os.environ.get("PG_URL", "")):
        if candidate.startswith(("postgres://", "postgresql://")):
            return candidate
    return "postgres://postgres:postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> Iterator[tuple[str, object]]:
    """(DATABASE_URL, an open DB-API connection) of a new, empty database."""
    if request.param == "sqlite":
        path = tmp_path / "index.db"
        yield f"sqlite:///{path}", lambda: sqlite3.connect(path)
        return
    import psycopg

    server = urlsplit(_postgres_server())
    name = f"pacs_fold_migration_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(
            urlunsplit(server._replace(path="/postgres")), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(server._replace(path=f"/{name}"))
    try:
        yield url, lambda: psycopg.connect(url)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _indexes(db, table: str) -> set[str]:
    cursor = db.cursor()
    if isinstance(db, sqlite3.Connection):
        cursor.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?", [table])
    else:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
    return {row[0] for row in cursor.fetchall()}


def test_the_migration_fills_every_folded_name_and_indexes_it(database):
    url, connect = database
    _migrate(url, "archive", "0006")
    names = [NAMES[n % len(NAMES)].format(n) for n in range(ROWS)]
    db = connect()
    mark = "?" if isinstance(db, sqlite3.Connection) else "%s"
    cursor = db.cursor()
    cursor.executemany(
        "INSERT INTO archive_patient (id, patient_id, issuer_of_patient_id, name, sex) "
        f"VALUES ({mark}, {mark}, '', {mark}, '')",
        [(n + 1, f"P{n}", name) for n, name in enumerate(names)],
    )
    cursor.executemany(
        "INSERT INTO archive_study (id, patient_id, study_instance_uid, accession_number, "
        "study_id, description, referring_physician_name, stable) "
        f"VALUES ({mark}, {mark}, {mark}, '', '', '', {mark}, FALSE)",
        [(n + 1, n + 1, f"1.2.{n}", names[-n - 1]) for n in range(ROWS)],
    )
    db.commit()
    assert "archive_patient_name_upper_idx" in _indexes(db, "archive_patient")
    db.close()

    _migrate(url)

    db = connect()
    cursor = db.cursor()
    cursor.execute("SELECT name, name_fold FROM archive_patient")
    patients = cursor.fetchall()
    cursor.execute(
        "SELECT referring_physician_name, referring_physician_name_fold FROM archive_study"
    )
    studies = cursor.fetchall()
    assert len(patients) == len(studies) == ROWS
    assert [fold for _, fold in patients] == [person_name_fold(name) for name, _ in patients]
    assert [fold for _, fold in studies] == [person_name_fold(name) for name, _ in studies]
    assert ("Straße^Jörg2", "straße^jörg2") in patients
    assert ("ΔΙΟΝΥΣΙΟΣ3", "διονυσιοσ3") in patients
    patient_indexes = _indexes(db, "archive_patient")
    assert "archive_patient_name_fold_idx" in patient_indexes
    assert "archive_patient_name_upper_idx" not in patient_indexes
    assert "archive_study_refphys_fold_idx" in _indexes(db, "archive_study")
    db.close()
