"""`runscp --workers N`: a parent hands connections to N worker processes on one port."""

import copy
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.conftest import free_port, sample_file
from tests.peers import eventually, scu
from tests.receiver.test_runscp import runscp, wait_listening


def _child_pids(pid: int, expected: int = 0) -> list[int]:
    """The process's children, waiting (up to 10 s) until there are `expected` of them: the
    port listens a moment before the workers are forked."""
    deadline = time.monotonic() + 10
    while True:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(children) >= expected or time.monotonic() > deadline:
            return children
        time.sleep(0.05)


def _two_workers(tmp_path: Path) -> tuple[subprocess.Popen, int, Path, list[int]]:
    """runscp --workers 2 listening: (process, port, index file, the workers' pids)."""
    port = free_port()
    index = tmp_path / "i.db"
    process = runscp(
        port, "MY_PACS", "--workers", "2", "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", index,
    )  # fmt: skip
    wait_listening(port, process)
    return process, port, index, _child_pids(process.pid, expected=2)


def test_workers_share_the_load_and_stop_together(tmp_path):
    process, port, index, workers = _two_workers(tmp_path)
    assert len(workers) == 2

    base = dcmread(sample_file("CT_small.dcm"))
    statuses: list[int] = []

    def sender() -> None:
        ae = scu()
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
        assert assoc.is_established
        for _ in range(5):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            statuses.append(assoc.send_c_store(ds).Status)
        assoc.release()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert statuses == [0x0000] * 20
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT count(*) FROM archive_instance").fetchone() == (20,)
    serving = set(re.findall(r"\[(\d+)\] INFO receiver.handlers: Association accepted", output))
    assert serving == {str(pid) for pid in workers}  # both workers took associations
    assert all(not _alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_association_limit_applies_across_workers(tmp_path):
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--workers", "2", "--max-associations", "2", "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db",
    )  # fmt: skip
    wait_listening(port, process)

    def associate():
        ae = scu()
        ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
        return ae.associate("127.0.0.1", port, ae_title="MY_PACS")

    try:
        held = [associate(), associate()]
        assert all(assoc.is_established for assoc in held)
        third = associate()
        assert third.is_rejected
        response = third.acceptor.primitive
        assert (response.result, response.result_source, response.diagnostic) == (2, 3, 2)
        held[0].release()
        again = []
        assert eventually(lambda: again.append(associate()) or again[-1].is_established)
        again[-1].release()
        held[1].release()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


def test_worker_that_dies_is_replaced(tmp_path):
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--workers", "2", "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db",
    )  # fmt: skip
    wait_listening(port, process)
    first = _child_pids(process.pid, expected=2)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(set(_child_pids(process.pid)) - set(first)) < 1:
        time.sleep(0.2)
    replacement = set(_child_pids(process.pid)) - set(first)
    assert len(replacement) == 1
    for _ in range(4):  # every worker, the new one included, serves
        ae = scu()
        ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"Worker {first[0]} " in output  # the loss was logged


def test_workers_of_a_killed_parent_finish_their_association_and_exit(tmp_path):
    process, port, index, workers = _two_workers(tmp_path)
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
    assert assoc.is_established
    os.kill(process.pid, signal.SIGKILL)  # the parent alone: the OOM killer's choice
    process.wait(10)
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    assert assoc.send_c_store(ds).Status == 0x0000  # its worker still serves it
    assoc.release()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    # No orphans left running: each worker notices its parent has gone and exits.
    assert eventually(lambda: all(gone(pid) for pid in workers), timeout=15)
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT count(*) FROM archive_instance").fetchone() == (1,)
    output = process.stdout.read()
    assert output.count("has gone; stopping this worker") == 2, output


class _Negotiating:
    """The four flags drain() reads of a pynetdicom Association, and abort()."""

    def __init__(self) -> None:
        self.is_established = self.is_released = self.is_aborted = self.is_rejected = False
        self.aborted = False

    def abort(self) -> None:
        self.aborted = self.is_aborted = True


def test_drain_lets_an_association_whose_accept_just_left_become_established(monkeypatch):
    """pynetdicom sends the A-ASSOCIATE-AC, runs the accepted handlers, then marks the
    association established: a shutdown in between must not abort what the peer was told it
    has. One still negotiating after NEGOTIATION_WAIT is aborted."""
    from types import SimpleNamespace

    from receiver import workers as pool

    monkeypatch.setattr(pool, "NEGOTIATION_WAIT", 0.5)
    accepted, silent = _Negotiating(), _Negotiating()
    ae = SimpleNamespace(active_associations=[accepted, silent])

    def peer() -> None:
        time.sleep(0.2)
        accepted.is_established = True  # the handlers have run
        time.sleep(0.5)
        accepted.is_established, accepted.is_released = False, True
        ae.active_associations = [a for a in ae.active_associations if a is not accepted]

    thread = threading.Thread(target=peer)
    thread.start()
    started = time.monotonic()
    pool.drain(ae, grace=5.0)
    thread.join()
    assert not accepted.aborted
    assert silent.aborted
    assert time.monotonic() - started < 2.0


def test_commitment_reported_on_the_requesters_association_in_every_worker(tmp_path):
    """Each worker delivers the reports of the requests it received on their own association
    (the requester is in no remote AE table: a new association to it is impossible)."""
    from tests.e2e.test_storage_commitment import _request_keeping_the_association, stored_at

    port = free_port()
    process = runscp(
        port, "TEST_SCP", "--workers", "2", "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db",
    )  # fmt: skip
    try:
        wait_listening(port, process)
        references = stored_at(port)
        for _ in range(4):  # one association after another: both workers get some
            uid = generate_uid()
            status, received = _request_keeping_the_association(
                port, references, uid, scp_role=True
            )
            assert status == 0x0000
            if not received:
                process.send_signal(signal.SIGTERM)
                pytest.fail(process.communicate(timeout=90)[0][-6000:])
            [(event_type, info)] = received
            assert (event_type, info.TransactionUID) == (1, uid)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    assert "not in the remote AE table" not in output
    reports = [line for line in output.splitlines() if "reported to" in line]
    # Each worker reported the requests it received.
    assert len({re.search(r"\[(\d+)\]", line)[1] for line in reports}) == 2, output


def test_a_stop_signal_reaching_a_worker_before_its_handlers_is_not_lost(monkeypatch):
    """A worker copies the parent's signal handlers at fork: a SIGTERM arriving before it has
    its own ran the parent's in the child, the worker never stopped and the parent waited for
    it in vain (a CI failure: runscp stopped right after it started listening)."""
    from receiver import workers as pool

    report_read, report_write = os.pipe()

    def slow_worker(config, ingest, channel, counts, cell, parent) -> None:
        time.sleep(0.5)  # starting: the SIGTERM arrives now
        stopping = pool.signals_own()
        os.write(report_write, b"stopped" if stopping.wait(5) else b"missed")
        os._exit(0)

    parent_handled = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: parent_handled.append(signum))
    monkeypatch.setattr(pool, "_worker", slow_worker)
    try:
        workers = pool.WorkerPool(config=None, ingest=None, count=1, inherited=[])
        workers.start()
        os.close(report_write)  # the worker's copy only: a worker that dies reads as b""
        (pid, channel) = workers.workers[0]
        os.kill(pid, signal.SIGTERM)
        assert os.read(report_read, 16) == b"stopped"
        assert os.waitpid(pid, 0)[1] == 0
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert not parent_handled
        channel.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(report_read)
