"""The storage directory under concurrency: staged files flushed in the background, directory
fsyncs shared by the threads publishing into one folder."""

import threading
from pathlib import Path

import pytest

from archive.exceptions import StorageFailure
from archive.storage import Storage

THREADS = 16


def _in_threads(work) -> list[BaseException | None]:
    """Run work(i) in THREADS threads released at once; return what each raised."""
    start = threading.Barrier(THREADS)
    outcomes: list[BaseException | None] = [None] * THREADS

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a thread never returned"
    return outcomes


def test_concurrent_publishes_into_one_folder_are_all_complete(tmp_path: Path):
    storage = Storage(tmp_path / "store")
    storage.prepare()

    def publish(i: int) -> None:
        staged = storage.stage([f"instance {i} ".encode() * 1000])
        storage.publish(staged, f"series/{i}.dcm")

    assert _in_threads(publish) == [None] * THREADS
    for i in range(THREADS):
        assert (tmp_path / "store" / "series" / f"{i}.dcm").read_bytes() == (
            f"instance {i} ".encode() * 1000
        )
    assert not list((tmp_path / "store" / ".incoming").rglob("*.part"))


def test_a_failed_directory_sync_fails_every_thread_that_needed_it(tmp_path: Path):
    storage = Storage(tmp_path / "store")
    storage.prepare()
    gone = tmp_path / "store" / "removed" / "x.dcm"  # its folder does not exist

    outcomes = _in_threads(lambda i: storage.make_durable(gone))
    assert all(isinstance(outcome, StorageFailure) for outcome in outcomes)
    # The folder's shared state is gone with its last waiter: a later sync starts afresh.
    gone.parent.mkdir()
    storage.make_durable(gone)


def test_staged_file_is_discarded_without_waiting_for_its_flush(tmp_path: Path):
    storage = Storage(tmp_path / "store")
    storage.prepare()
    staged = storage.stage([b"x" * 4096])
    storage.discard(staged)
    assert not staged.path.exists()
    with pytest.raises(StorageFailure):
        storage.publish(staged, "a/b.dcm")  # a discarded file cannot be published
