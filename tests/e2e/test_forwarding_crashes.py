"""Forwarding survives SIGKILL: of the receiver right after it acknowledged instances, and of
the forwarding process in the middle of a batch. Real processes (runscp, manage.py forward),
a real SQLite index file, DCMTK storescp as the destination."""

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import free_port, sample_file
from tests.peers import eventually, run_dcmtk
from tests.receiver.test_runscp import ROOT, crash_receiver, runscp, stop, wait_listening
from tests.routing.test_forwarding import StoreSCP

pytestmark = pytest.mark.slow


def write_study(folder: Path, count: int) -> list[Path]:
    base = dcmread(sample_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def config(tmp_path: Path, dest_port: int) -> Path:
    path = tmp_path / "store_scp.yaml"
    path.write_text(
        f"storage: {{directory: {tmp_path / 'received'}}}\n"
        f"database: {{path: {tmp_path / 'index.db'}}}\n"
        f"remote_aes:\n  - {{ae_title: DEST, host: 127.0.0.1, port: {dest_port}}}\n"
        "forwarding:\n  - {destination: DEST, when: instance}\n"
    )
    return path


def queue(index: Path) -> dict[str, int]:
    with sqlite3.connect(index) as db:
        return dict(
            db.execute("SELECT state, count(*) FROM routing_forwarditem GROUP BY state").fetchall()
        )


def due_now(index: Path) -> None:
    """Make every pending row due, as the admin's requeue does: the receiver's failed
    attempts while the destination was down backed them off by however long it ran."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(index) as db:
        db.execute(
            "UPDATE routing_forwarditem SET next_attempt_at = ? WHERE state = 'pending'", [now]
        )


def counters(index: Path) -> dict[str, int]:
    with sqlite3.connect(index) as db:
        return dict(db.execute("SELECT outcome, count FROM routing_forwardcount").fetchall())


def receive(tmp_path: Path, dest_port: int, paths: list[Path]) -> None:
    """Run runscp with the destination down, send `paths`, SIGKILL it right after the last
    acknowledgement."""
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--config", config(tmp_path, dest_port), "--bind", "127.0.0.1"
    )
    wait_listening(port, process)
    result = run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "MY_PACS", "127.0.0.1", port, *paths)
    crash_receiver(process)
    assert result.returncode == 0, result.stderr


def test_receiver_killed_right_after_acknowledging_loses_nothing(tmp_path):
    dest_port = free_port()
    paths = write_study(tmp_path / "study", 30)
    receive(tmp_path, dest_port, paths)
    assert sum(queue(tmp_path / "index.db").values()) == 30
    dest = StoreSCP(tmp_path / "dest", port=dest_port)
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--config", config(tmp_path, dest_port), "--bind", "127.0.0.1"
    )
    try:
        wait_listening(port, process)
        assert eventually(lambda: queue(tmp_path / "index.db") == {"sent": 30}, timeout=60)
        uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        assert set(dest.received()) == uids
    finally:
        stop(process)
        dest.stop()


def test_forwarder_killed_mid_batch_resumes_after_its_lease(tmp_path):
    dest_port = free_port()
    paths = write_study(tmp_path / "study", 300)
    receive(tmp_path, dest_port, paths)
    index = tmp_path / "index.db"
    assert queue(index) == {"pending": 300}
    due_now(index)  # the destination is back: not a test of the receiver's backoff
    dest = StoreSCP(tmp_path / "dest", port=dest_port)
    forward = [sys.executable, str(ROOT / "manage.py"), "forward", "--config"]
    forward += [str(config(tmp_path, dest_port)), "--lease", "3"]
    try:
        # Kill it in the middle of a batch.
        process = subprocess.Popen([*forward, "--watch"], cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Some of a claimed batch delivered, its outcome not recorded yet: kill it now.
            delivered = len(os.listdir(dest.folder))
            if delivered > queue(index).get("sent", 0) + 5:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert queue(index).get("sending", 0) > 0
        time.sleep(3.5)  # its lease runs out
        process = subprocess.Popen(
            [*forward, "--watch"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        delivered = eventually(lambda: queue(index) == {"sent": 300}, timeout=60)
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
        assert delivered, f"queue {queue(index)}, forwarder's log:\n{log[-3000:]}"
        assert process.returncode == 0, log
        uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        assert set(dest.received()) == uids
        counts = counters(index)
        # The killed batch was sent again; those repeats are counted, the rest once each.
        assert counts["sent"] == 300
        assert counts["repeat"] > 0
    finally:
        dest.stop()


def test_runscp_with_two_workers_forwards_each_instance_once(tmp_path):
    dest = StoreSCP(tmp_path / "dest")
    paths = write_study(tmp_path / "study", 40)
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--config", config(tmp_path, dest.port), "--bind", "127.0.0.1",
        "--workers", "2",
    )  # fmt: skip
    try:
        wait_listening(port, process)
        for half in (paths[:20], paths[20:]):  # two associations, one per worker
            result = run_dcmtk("storescu", "-aet", "MODALITY", "-aec", "MY_PACS", "127.0.0.1",
                               port, *half)  # fmt: skip
            assert result.returncode == 0, result.stderr
        index = tmp_path / "index.db"
        assert eventually(lambda: queue(index) == {"sent": 40}, timeout=60)
        assert len(dest.received()) == 40
        assert counters(index) == {"sent": 40}
    finally:
        code, output = stop(process)
        dest.stop()
    assert code == 0, output
