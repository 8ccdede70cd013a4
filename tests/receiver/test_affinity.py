"""A worker serving two associations or more keeps its threads on a core of its own
(receiver.affinity): the decision with plain objects, then real worker processes."""

import errno
import logging
import os
import signal
from pathlib import Path

import pytest
from pynetdicom.sop_class import Verification

from receiver.affinity import CorePinning, pinned_cpus
from receiver.limits import AssociationSlots
from tests.conftest import free_port
from tests.peers import eventually, scu
from tests.receiver.test_runscp import runscp, wait_listening
from tests.receiver.test_workers import _child_pids


@pytest.mark.parametrize(
    ("cell", "workers", "allowed", "expected"),
    [
        (0, 2, {0, 1}, {0}),
        (1, 2, {0, 1}, {1}),
        (1, 2, {5, 2}, {5}),  # the cores this process may use, in order
        (0, 3, {0, 1}, None),  # more workers than cores: none of its own
        (0, 1, {0}, None),  # one core: nothing to choose
        (0, 2, {0, 1, 2, 3}, None),  # fewer workers than cores: not measured, left alone
        (2, 2, {0, 1}, None),  # not a worker of this pool
    ],
)
def test_a_worker_has_a_core_of_its_own_only_where_workers_are_one_per_core(
    cell, workers, allowed, expected
):
    pinned = pinned_cpus(cell=cell, workers=workers, allowed=allowed)
    assert pinned == (frozenset(expected) if expected is not None else None)


class FakeThreads:
    """The process's threads and the masks set on them."""

    def __init__(self, threads: list[int], failing: dict[int, OSError] | None = None) -> None:
        self.threads = threads
        self.failing = failing or {}
        self.masks: dict[int, frozenset[int]] = {}
        self.calls = 0

    def list(self) -> list[int]:
        return list(self.threads)

    def set(self, thread: int, cpus: frozenset[int]) -> None:
        self.calls += 1
        if thread in self.failing:
            raise self.failing[thread]
        self.masks[thread] = cpus


def _pinning(fake: FakeThreads, cell: int = 1) -> CorePinning:
    return CorePinning(
        cell=cell, workers=2, threads=fake.list, setaffinity=fake.set, allowed={0, 1}
    )


def test_threads_share_one_core_from_two_associations_and_are_freed_below():
    fake = FakeThreads([10, 11, 12])
    pinning = _pinning(fake)

    pinning.count_changed(1)
    assert fake.calls == 0  # one association: left where the kernel puts it
    pinning.count_changed(2)
    assert fake.masks == {10: {1}, 11: {1}, 12: {1}}
    fake.threads.append(13)  # started by a thread that had the old mask: it inherited that
    calls = fake.calls
    pinning.count_changed(3)
    assert fake.calls == calls + 1 and fake.masks[13] == {1}  # only the new one
    pinning.count_changed(1)
    assert fake.masks == {10: {0, 1}, 11: {0, 1}, 12: {0, 1}, 13: {0, 1}}


def test_a_thread_started_while_the_mask_changes_gets_it_too():
    fake = FakeThreads([10, 11])
    listings = []

    def listing() -> list[int]:
        if len(listings) == 1:  # started after the first listing, with the old mask
            fake.threads.append(12)
        listings.append(fake.list())
        return listings[-1]

    pinning = CorePinning(cell=0, workers=2, threads=listing, setaffinity=fake.set, allowed={0, 1})
    pinning.count_changed(2)
    assert fake.masks == {10: {0}, 11: {0}, 12: {0}}
    assert len(listings) == 3  # listed again until nothing new


def test_a_thread_that_ended_meanwhile_is_skipped():
    fake = FakeThreads([10, 11], failing={10: ProcessLookupError(errno.ESRCH, "gone")})
    pinning = _pinning(fake)
    pinning.count_changed(2)
    assert fake.masks == {11: {1}}


def test_where_pinning_is_refused_it_is_given_up_with_one_warning(caplog):
    fake = FakeThreads([10, 11, 12], failing={11: PermissionError(errno.EPERM, "refused")})
    pinning = _pinning(fake)
    with caplog.at_level(logging.WARNING, logger="receiver.affinity"):
        pinning.count_changed(2)
        pinning.count_changed(1)
        pinning.count_changed(2)
    assert [r.getMessage() for r in caplog.records] == [
        "Worker threads stay unpinned: [Errno 1] refused"
    ]
    assert fake.masks == {10: {0, 1}, 12: {0, 1}}  # the one pinned before the refusal, freed


def test_without_proc_an_association_is_still_accepted(caplog):
    def no_proc() -> list[int]:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/self/task")

    pinning = CorePinning(
        cell=0, workers=2, threads=no_proc, setaffinity=FakeThreads([]).set, allowed={0, 1}
    )
    slots = AssociationSlots(4, on_count=pinning.count_changed)
    first, second = Alive(), Alive()
    with caplog.at_level(logging.WARNING, logger="receiver.affinity"):
        assert slots.acquire(first) and slots.acquire(second)
    assert "Worker threads stay unpinned" in caplog.text


def test_without_a_core_of_its_own_a_worker_is_never_pinned():
    fake = FakeThreads([10])
    pinning = CorePinning(
        cell=0, workers=3, threads=fake.list, setaffinity=fake.set, allowed={0, 1}
    )
    pinning.count_changed(5)
    assert fake.calls == 0


class Alive:
    """An association as AssociationSlots sees it."""

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


def test_slots_tell_each_change_of_the_count_in_order():
    counts: list[int] = []
    slots = AssociationSlots(3, on_count=counts.append)
    first, second, third, fourth = Alive(), Alive(), Alive(), Alive()
    assert slots.acquire(first) and slots.acquire(second) and slots.acquire(third)
    assert not slots.acquire(fourth)  # refused: no change
    slots.release(second)
    slots.release(second)  # released twice: no change
    third.alive = False  # its thread ended without an end event
    assert slots.in_use() == 1
    assert counts == [1, 2, 3, 2, 1]


def _cpu_set(text: str) -> frozenset[int]:
    """A CPU list as /proc writes it ("0-1,3") as a set."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def _masks(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of process `pid`."""
    masks = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        lines = status.splitlines()
        masks |= {
            _cpu_set(line.split()[1]) for line in lines if line.startswith("Cpus_allowed_list")
        }
    return masks


CORES = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


@pytest.mark.skipif(not 2 <= len(CORES) <= 8, reason="needs 2 to 8 cores, one worker each")
def test_a_worker_with_two_associations_runs_on_its_own_core_until_one_ends(tmp_path):
    workers_count = len(CORES)
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--workers", str(workers_count), "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db",
    )  # fmt: skip
    try:
        wait_listening(port, process)
        workers = _child_pids(process.pid, expected=workers_count)
        associations = []
        for _ in range(workers_count + 1):  # handed round robin: one worker gets two
            ae = scu()
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
            assert assoc.is_established
            associations.append(assoc)

        def pinned() -> list[int]:
            """Workers whose threads all run on one core, not on every core."""
            return [pid for pid in workers if len(m := _masks(pid)) == 1 and m != {CORES}]

        assert eventually(lambda: len(pinned()) == 1)
        (busy,) = pinned()
        (mask,) = _masks(busy)
        assert len(mask) == 1 and mask <= CORES
        assert all(_masks(pid) == {CORES} for pid in workers if pid != busy)  # one each: free
        assert all(assoc.send_c_echo().Status == 0 for assoc in associations)

        associations.pop().release()  # the busy worker is down to one: free again
        assert eventually(lambda: all(_masks(pid) == {CORES} for pid in workers))
        for assoc in associations:
            assoc.release()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
