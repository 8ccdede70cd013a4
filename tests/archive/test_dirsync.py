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
