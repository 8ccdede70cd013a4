"""A connection flood against `runscp` with its defaults, as an attacker or a broken client
would send it: 10,000 idle connections and 200 slow ones (a byte every few seconds) from one
address, while an honest sender on another address keeps storing. Every honest C-STORE must
succeed, memory and threads stay bounded, and all is back to idle figures within a minute."""

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, sample_file
from tests.peers import send_files
from tests.receiver.test_runscp import ROOT, runscp, wait_listening

IDLE = 10_000
SLOW = 200
# The flood comes from 127.0.0.1, the honest sender from another host.
HONEST_ADDRESS = "127.0.0.2"
HONEST_FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm"]


def _processes(pid: int) -> list[int]:
    """The receiver and its workers."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def _figures(pid: int) -> dict[str, int]:
    """Largest resident memory (MB) of one process, threads and sockets over all. (Not all
    files: SQLite keeps some of the index's open once written, as in bench/soak.py's warm-up.)"""
    rss, threads, sockets = 0, 0, 0
    for one in _processes(pid):
        try:
            status = Path(f"/proc/{one}/status").read_text()
            links = [os.readlink(f"/proc/{one}/fd/{fd}") for fd in os.listdir(f"/proc/{one}/fd")]
        except OSError:
            continue
        sockets += sum(link.startswith("socket:") for link in links)
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = max(rss, int(fields["VmRSS"].split()[0]) // 1024)
        threads += int(fields["Threads"])
    return {"rss_mb": rss, "threads": threads, "sockets": sockets}


def _files(pid: int) -> list[str]:
    names = []
    for one in _processes(pid):
        with contextlib.suppress(OSError):
            names += [os.readlink(f"/proc/{one}/fd/{fd}") for fd in os.listdir(f"/proc/{one}/fd")]
    return sorted(names)


class Flood:
    """tests/receiver/flood_client.py in its own process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        port = self.port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.receiver.flood_client", *map(str, (port, IDLE, SLOW))],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._progress, daemon=True).start()

    def _progress(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("opened "):
                self.opened = int(line.split()[1])

    def end(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_flood_of_idle_and_slow_connections_leaves_honest_senders_served(tmp_path, workers):
    # The flood's process raises its soft limit to the hard one, which must allow IDLE sockets.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE + 2 * SLOW + 1000:
        pytest.fail(f"the open file limit ({hard}) is too low for {IDLE} connections")
    port = free_port()
    index = tmp_path / "index.db"
    process = runscp(
        port,
        "MY_PACS",
        "--bind",
        "127.0.0.1",
        "--storage-dir",
        tmp_path / "received",
        "--index-db",
        index,
        "--workers",
        str(workers),
    )
    flood = Flood(port)
    try:
        _flood_survived(process, port, flood, workers, index)
    except AssertionError as failure:
        flood.end()
        if process.poll() is None:
            process.kill()
        output, _ = process.communicate(timeout=60)
        # What the receiver said about refused or failed C-STOREs explains a failure.
        lines = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
        raise AssertionError(f"{failure}\nreceiver log:\n" + "\n".join(lines[-40:])) from None
    finally:
        flood.end()
        if process.poll() is None:
            process.kill()
            process.wait()


def _flood_survived(process, port: int, flood: Flood, workers: int, index: Path) -> None:
    try:
        wait_listening(port, process)
        honest = [sample_file(name) for name in HONEST_FILES]
        first = send_files(port, honest, called="MY_PACS", source=HONEST_ADDRESS)
        assert first == [0] * len(honest)
        time.sleep(1.0)
        idle = _figures(process.pid)

        flood.start()
        statuses: list[int] = []
        peak = dict(idle)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline or flood.opened < IDLE:
            assert time.monotonic() < deadline + 30, f"only {flood.opened} connections opened"
            statuses += send_files(port, honest, called="MY_PACS", source=HONEST_ADDRESS)
            figures = _figures(process.pid)
            peak = {key: max(peak[key], figures[key]) for key in peak}
        assert flood.opened == IDLE
        assert statuses and set(statuses) == {0}, f"honest C-STOREs failed: {set(statuses)}"
        assert peak["rss_mb"] < 200, peak
        assert peak["threads"] < idle["threads"] + 20, (idle, peak)
    finally:
        flood.end()

    def back_to_idle() -> bool:
        now = _figures(process.pid)
        return now["threads"] <= idle["threads"] and now["sockets"] <= idle["sockets"]

    deadline = time.monotonic() + 60
    while not back_to_idle():
        assert time.monotonic() < deadline, (idle, _figures(process.pid), _files(process.pid))
        time.sleep(0.5)
    assert _figures(process.pid)["rss_mb"] < 200

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    warnings = [line for line in output.splitlines() if "before association" in line]
    assert warnings and all(" WARNING " in line for line in warnings)
    # At most one line per 10 s per process, however many connections were dropped.
    assert len(warnings) <= 10 * workers + 2, len(warnings)
    with sqlite3.connect(index) as db:
        (dropped,) = db.execute(
            "SELECT COUNT(*) FROM receiver_associationlog WHERE outcome = 'dropped'"
        ).fetchone()
    assert dropped == len(warnings)
