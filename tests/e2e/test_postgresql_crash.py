"""A crash of the PostgreSQL server under a receiver that is storing, on a private server of the
test's own.

Under `database.synchronous: normal` (the default) a new instance's commit does not wait for
PostgreSQL's WAL flush, so the crash undoes the last ones; their files were fsync'd before
the C-STOREs succeeded, and the receiver indexes them again once the server is back
(archive.unflushed). Under `full` the crash undoes none. Either way, every instance answered
with success ends indexed, with its file.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import free_port, sample_file
from tests.peers import eventually, scu
from tests.receiver.test_runscp import runscp, stop, wait_listening

pytestmark = pytest.mark.slow


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, run as the `postgres` system user when
    the test runs as root (the server refuses root), which the test may crash and restart."""

    def __init__(self, base: Path, bin_dir: Path) -> None:
        self.base, self.bin, self.port = base, bin_dir, free_port()
        self.data = base / "data"

    def _run(self, *command: str | Path, check: bool = True) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, command)], check=check, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        # A WAL writer that wakes rarely and no autovacuum: commits that did not wait for the
        # flush stay in memory until a full WAL page or another commit's flush takes them.
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c wal_writer_delay=10000 -c fsync=on -c autovacuum=off"
        )
        self._run(
            self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-w",
            "-o", options, "start",
        )  # fmt: skip

    def backend_kill(self) -> None:
        """Kill one server process, as the OOM killer would: the server ends every other one and
        reinitialises, with crash recovery (WAL buffers lost), under the same start time."""
        db = psycopg.connect(self.url)
        pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        os.kill(pid, signal.SIGKILL)  # while its session is open: a crash, not an exit
        db.close()

    def stop_clean(self) -> None:
        """A clean shutdown (the WAL flushed, unlogged tables kept)."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def crash(self, *, check: bool = True) -> None:
        """Stop at once, as a crash would: no checkpoint, WAL buffers lost."""
        self._run(
            self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=check
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def indexed(self) -> set[str]:
        with psycopg.connect(self.url) as db:
            rows = db.execute("SELECT sop_instance_uid FROM archive_instance").fetchall()
        return {uid for (uid,) in rows}


def _version(initdb: Path) -> int:
    return int(initdb.parent.parent.name) if initdb.parent.parent.name.isdigit() else 0


@pytest.fixture
def postgres_server() -> Iterator[PrivatePostgres]:
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version)
    if not initdbs or (os.geteuid() == 0 and not shutil.which("runuser")):
        message = "PostgreSQL's server programs are not installed (Debian package postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="pacs-pgcrash-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        server = PrivatePostgres(base, initdbs[-1].parent)
        server.init()
        server.start()
        yield server
    finally:
        if (base / "data" / "postmaster.pid").exists():
            server.crash(check=False)
        shutil.rmtree(base, ignore_errors=True)


class Sender(threading.Thread):
    """Sends new CT instances on one association until stopped; keeps the UIDs that were
    answered with success."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stopping = port, threading.Event()
        self.acknowledged: list[str] = []
        self.statuses: list[int] = []

    def run(self) -> None:
        ct = dcmread(sample_file("CT_small.dcm"))
        ae = scu()
        ae.dimse_timeout = 30
        ae.add_requested_context(ct.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="MY_PACS")
        assert assoc.is_established
        try:
            while not self.stopping.is_set() and assoc.is_established:
                ct.SOPInstanceUID = generate_uid()
                response = assoc.send_c_store(ct)
                status = getattr(response, "Status", None)
                self.statuses.append(status)
                if status == 0x0000:
                    self.acknowledged.append(ct.SOPInstanceUID)
                elif status is not None:
                    time.sleep(0.05)  # refused while the database is down
        finally:
            assoc.release()


@pytest.mark.parametrize(
    ("synchronous", "crash"),
    [
        ("normal", "server"),
        ("normal", "one process"),
        ("full", "server"),
        ("normal", "none: a clean restart"),
    ],
)
def test_every_acknowledged_instance_is_indexed_after_the_database_crashes_mid_stream(
    tmp_path, postgres_server, synchronous, crash
):
    port, storage = free_port(), tmp_path / "storage"
    config = tmp_path / "pacs.yaml"
    config.write_text(
        f"server: {{port: {port}, ae_title: MY_PACS, bind: 127.0.0.1}}\n"
        f"storage: {{directory: {storage}}}\n"
        f"database: {{url: '{postgres_server.url}', synchronous: {synchronous}}}\n"
    )
    env = {
        "DATABASE_URL": postgres_server.url,
        "DICOM_STORAGE_DIR": str(storage),
        # Its write waits for the flush (and flushes the commits before): rare enough here.
        "RECEIVER_HEARTBEAT": "3",
    }
    process = runscp("--config", config, env=env)
    sender = Sender(port)
    try:
        wait_listening(port, process)
        sender.start()
        assert eventually(lambda: len(sender.acknowledged) >= 50, timeout=60)
        if crash in ("server", "none: a clean restart"):
            if crash == "server":
                postgres_server.crash()
            else:
                postgres_server.stop_clean()
            crashed_after = len(sender.acknowledged)
            time.sleep(1)
            postgres_server.start()
        else:
            postgres_server.backend_kill()
            crashed_after = len(sender.acknowledged)
        # Stores succeed again once the receiver has reconnected.
        assert eventually(lambda: len(sender.acknowledged) >= crashed_after + 20, timeout=60)
        sender.stopping.set()
        sender.join(timeout=60)
        acknowledged = set(sender.acknowledged)
        if synchronous == "full" or crash.startswith("none"):
            assert acknowledged <= postgres_server.indexed()
        # Normal: the receiver finds what the crash undid at its next heartbeat.
        assert eventually(lambda: acknowledged <= postgres_server.indexed(), timeout=30)
    finally:
        sender.stopping.set()
        code, output = stop(process)
    assert code == 0, output
    restored = [
        (int(checked), int(missing), int(again))
        for missing, checked, again in re.findall(
            r"The index database crashed and lost (\d+) of the (\d+) new instances committed "
            r"here without waiting for its WAL flush; (\d+) were indexed again",
            output,
        )
    ]
    print(f"{synchronous}, {crash}: {len(acknowledged)} acknowledged; lost, again: {restored}")
    if synchronous == "normal" and crash.startswith("none"):
        # A clean shutdown flushes everything and keeps the marker: nothing to check.
        assert "The index database crashed" not in output, output
    elif synchronous == "normal":
        # The crash undid the last commits before it, and the receiver said so.
        assert restored and all(missing == again for _, missing, again in restored), output
        assert sum(again for _, _, again in restored) >= 1, output
    else:
        assert restored == [], output  # nothing committed without the flush: nothing to check
    files = [p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(files) >= len(acknowledged)
