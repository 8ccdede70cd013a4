"""Directory fsyncs shared between threads: every caller is answered only by an fsync that
began after it asked, and callers arriving together share one."""

import os
import threading
import time

import pytest

from archive.storage import dirsync


@pytest.fixture
def fsyncs(monkeypatch):
    """The real fsync, with the start and end of each call recorded and stretched a little so
    that threads arrive while one runs."""
    calls: list[tuple[float, float]] = []
    real = dirsync._fsync

    def recorded(path: str) -> None:
        start = time.monotonic()
        real(path)
        time.sleep(0.02)
        calls.append((start, time.monotonic()))

    monkeypatch.setattr(dirsync, "_fsync", recorded)
    return calls


def test_concurrent_callers_share_fsyncs_each_started_after_their_rename(tmp_path, fsyncs):
    answered: list[tuple[float, float]] = []
    start = threading.Barrier(16)

    def store(n: int) -> None:
        staged = tmp_path / f"{n}.part"
        staged.write_bytes(b"x")
        start.wait()
        os.replace(staged, tmp_path / f"{n}.dcm")
        asked = time.monotonic()
        dirsync.directory_fsync(tmp_path)
        answered.append((asked, time.monotonic()))

    threads = [threading.Thread(target=store, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answered) == 16
    assert 1 <= len(fsyncs) < 16, fsyncs
    for asked, returned in answered:
        assert any(asked <= began and ended <= returned for began, ended in fsyncs)
    assert dirsync._directories == {}


def test_a_failed_fsync_is_raised_and_the_next_caller_syncs_again(tmp_path):
    with pytest.raises(FileNotFoundError):
        dirsync.directory_fsync(tmp_path / "gone")
    dirsync.directory_fsync(tmp_path)
    assert dirsync._directories == {}


def test_callers_covered_by_a_failed_fsync_all_get_its_error(tmp_path, monkeypatch):
    """A retry after a failed fsync may succeed with the names lost (Linux reports a writeback
    error once): every caller whose rename the failed fsync covered must fail too."""
    real = dirsync._fsync
    calls = []
    arrived = threading.Event()

    def second_fails(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            arrived.wait(5)  # the others ask while the first fsync runs
            time.sleep(0.05)
            real(path)
        elif len(calls) == 2:
            raise OSError(5, "Input/output error")
        else:
            real(path)  # a retry succeeds: it must not be asked for

    monkeypatch.setattr(dirsync, "_fsync", second_fails)
    outcomes: list[str] = []

    def store() -> None:
        try:
            dirsync.directory_fsync(tmp_path)
            outcomes.append("durable")
        except OSError:
            outcomes.append("failed")

    first = threading.Thread(target=store)
    first.start()
    while not calls:
        time.sleep(0.001)
    waiting = [threading.Thread(target=store) for _ in range(3)]
    for thread in waiting:
        thread.start()
    while dirsync._directories[str(tmp_path)].waiting < 4:
        time.sleep(0.001)
    arrived.set()
    for thread in [first, *waiting]:
        thread.join()
    # The first fsync made the first name durable; the second, run by one of the three that
    # arrived meanwhile on behalf of all three, failed: none of the three is told otherwise.
    assert sorted(outcomes) == ["durable", "failed", "failed", "failed"]
    assert len(calls) == 2
    assert dirsync._directories == {}
