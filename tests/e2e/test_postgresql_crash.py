"""A crash of the PostgreSQL server under the receiver, on a private server of the test's own.

Under `database.synchronous: normal` (the default) a new instance's commit does not wait for
PostgreSQL's WAL flush, so a crash of the server may undo the last ones; their files were
fsync'd before the C-STORE succeeded, and `verifystorage --repair` indexes them again. Under
`full` the crash undoes nothing. Either way, every instance answered with success ends indexed
with its file.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import free_port, sample_file
from tests.peers import scu
from tests.receiver.test_runscp import ROOT, runscp, stop, wait_listening

pytestmark = pytest.mark.slow

INSTANCES = 40


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, run as the `postgres` system user (the
    server refuses to run as root), which the test may crash and start again."""

    def __init__(self, base: Path, bin_dir: Path) -> None:
        self.base, self.bin, self.port = base, bin_dir, free_port()
        self.data = base / "data"

    def _as_postgres(self, *command: str | Path) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, command)], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        # A WAL writer that wakes rarely and no autovacuum: commits that did not wait for the
        # flush stay in memory until a full WAL page or another commit's flush takes them.
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c wal_writer_delay=10000 -c fsync=on -c autovacuum=off"
        )
        self._as_postgres(
            self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-w",
            "-o", options, "start",
        )  # fmt: skip

    def crash(self) -> None:
        """Stop at once, as a crash would: no checkpoint, WAL buffers lost."""
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def indexed(self) -> int:
        with psycopg.connect(self.url) as db:
            return db.execute("SELECT count(*) FROM archive_instance").fetchone()[0]


@pytest.fixture
def postgres_server() -> Iterator[PrivatePostgres]:
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bin_dirs or not shutil.which("runuser"):
        message = "PostgreSQL's server binaries are not installed (Debian package postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="pacs-pgcrash-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    server = PrivatePostgres(base, bin_dirs[-1].parent)
    server.init()
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(server.bin / "pg_ctl"), "-D",
             str(server.data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_every_acknowledged_instance_is_indexed_after_a_database_crash_and_a_repair(
    tmp_path, postgres_server, synchronous
):
    port, storage = free_port(), tmp_path / "storage"
    config = tmp_path / "pacs.yaml"
    config.write_text(
        f"server: {{port: {port}, ae_title: MY_PACS, bind: 127.0.0.1}}\n"
        f"storage: {{directory: {storage}}}\n"
        f"database: {{url: '{postgres_server.url}', synchronous: {synchronous}}}\n"
    )
    env = {"DATABASE_URL": postgres_server.url, "DICOM_STORAGE_DIR": str(storage)}
    # No heartbeat (a write that waits for the flush) between the last C-STORE and the crash.
    process = runscp("--config", config, env={**env, "RECEIVER_HEARTBEAT": "3600"})
    try:
        wait_listening(port, process)
        ct = dcmread(sample_file("CT_small.dcm"))
        ae = scu()
        ae.add_requested_context(ct.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
        assert assoc.is_established
        statuses = []
        for _ in range(INSTANCES):
            ct.SOPInstanceUID = generate_uid()
            statuses.append(assoc.send_c_store(ct).Status)
        assert statuses == [0x0000] * INSTANCES
        # The server crashes while the association is still open: nothing of ours (the
        # association's own log row at its end) has asked it to flush since.
        postgres_server.crash()
        assoc.abort()
        postgres_server.start()
        after_crash = postgres_server.indexed()
    finally:
        code, output = stop(process)
    assert code == 0, output
    print(f"synchronous {synchronous}: {after_crash} of {INSTANCES} indexed after the crash")
    if synchronous == "full":
        assert after_crash == INSTANCES
    else:
        assert after_crash < INSTANCES  # this test's WAL writer sleeps: the last ones are lost
    files = [p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(files) == INSTANCES
    repair = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "verifystorage", "--repair",
         "--storage-dir", str(storage)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert postgres_server.indexed() == INSTANCES
