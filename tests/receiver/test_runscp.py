"""`manage.py runscp` as an operator runs it: a real process, real signals, real exit codes."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import free_port, sample_file
from tests.peers import eventually, scu, send_files

ROOT = Path(__file__).resolve().parents[2]


def runscp(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """runscp in a process group of its own, so that crash_receiver() takes its workers too."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscp", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def crash_receiver(process: subprocess.Popen) -> None:
    """SIGKILL the receiver and its workers at once, as a power cut or a kill of its cgroup
    would (a parent killed alone leaves workers that finish their associations)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=10)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"runscp exited early:\n{process.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("runscp did not start listening")


def stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output


def test_fresh_index_file_is_created_migrated_and_filled(tmp_path):
    port = free_port()
    index = tmp_path / "new" / "index.db"
    storage = tmp_path / "received"
    process = runscp(
        port, "MY_PACS", "--storage-dir", storage, "--index-db", index, "--bind", "127.0.0.1"
    )
    wait_listening(port, process)
    assert send_files(port, [sample_file("CT_small.dcm")], called="MY_PACS") == [0x0000]
    code, output = stop(process)

    assert code == 0, output
    startup = next(line for line in output.splitlines() if "Storage SCP started" in line)
    for expected in ("MY_PACS", f"127.0.0.1:{port}", str(storage), str(index), "hierarchical"):
        assert expected in startup
    with sqlite3.connect(index) as db:
        (path,) = db.execute("SELECT path FROM archive_instance").fetchone()
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert (storage / path).is_file()
    assert "Traceback" not in output
    # No patient name at INFO level (CT_small's patient is "CompressedSamples^CT1").
    assert "CompressedSamples" not in output


def test_default_database_from_environment_is_migrated_at_start(tmp_path):
    port = free_port()
    database = tmp_path / "env.db"
    process = runscp(
        port, "MY_PACS", "--bind", "127.0.0.1",
        env={"DATABASE_URL": f"sqlite:///{database}", "DICOM_STORAGE_DIR": str(tmp_path / "st")},
    )  # fmt: skip
    wait_listening(port, process)
    assert send_files(port, [sample_file("MR_small.dcm")], called="MY_PACS") == [0x0000]
    code, output = stop(process)
    assert code == 0, output
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM archive_instance").fetchone() == (1,)
    assert len(list((tmp_path / "st").rglob("*.dcm"))) == 1


def test_sigterm_lets_an_open_association_finish_and_refuses_new_ones(tmp_path):
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--bind", "127.0.0.1", "--storage-dir", tmp_path / "st",
        "--index-db", tmp_path / "i.db",
    )  # fmt: skip
    wait_listening(port, process)
    ae = scu()
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
    assert assoc.is_established

    process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        return False

    assert eventually(refused)
    status = assoc.send_c_store(dcmread(sample_file("CT_small.dcm")))
    assert status.Status == 0x0000
    assoc.release()
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT count(*) FROM archive_instance").fetchone() == (1,)


def _fails_with(args: list, tmp_path: Path, expected: str) -> None:
    process = runscp(*args, "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert expected in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _fails_with([port, "MY_PACS", "--bind", "127.0.0.1"], tmp_path, "port is already in use")


def test_privileged_port_without_privileges_is_one_clear_line(tmp_path):
    if os.geteuid() == 0:
        # Root may bind low ports; prove the same message path with an address we do not own.
        _fails_with(
            [free_port(), "MY_PACS", "--bind", "192.0.2.1"], tmp_path, "not one of this machine's"
        )
    else:
        _fails_with([104, "MY_PACS"], tmp_path, "permission denied")


@pytest.mark.parametrize(
    ("title", "message"),
    [
        ("", "AE title is empty"),
        ("   ", "AE title is empty"),
        ("A" * 17, "longer than 16 characters"),
        ("BAD\\AE", "no backslash"),
        ("BAD\tAE", "printable ASCII"),
    ],
)
def test_invalid_ae_title_is_one_clear_line(tmp_path, title, message):
    _fails_with([free_port(), title], tmp_path, message)


def test_port_out_of_range_is_one_clear_line(tmp_path):
    _fails_with([70000, "MY_PACS"], tmp_path, "not between 1 and 65535")


def test_unwritable_storage_directory_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    process = runscp(
        free_port(), "MY_PACS", "--storage-dir", blocker / "sub", "--index-db", tmp_path / "i.db"
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "cannot write to storage directory" in output
    assert "Traceback" not in output


def test_stale_staging_files_of_dead_processes_are_removed_at_start(tmp_path):
    storage = tmp_path / "st"
    dead = storage / ".incoming" / f"{socket.gethostname()}.999999999"
    dead.mkdir(parents=True)
    (dead / "tmpabc.part").write_bytes(b"half a dataset")
    port = free_port()
    process = runscp(
        port,
        "MY_PACS",
        "--bind",
        "127.0.0.1",
        "--storage-dir",
        storage,
        "--index-db",
        tmp_path / "i.db",
    )
    wait_listening(port, process)
    code, output = stop(process)
    assert code == 0, output
    assert not dead.exists()
    assert list((storage / ".incoming").iterdir()) == []
