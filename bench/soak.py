"""Soak test: steady ingest into our receiver for a while, watching that its resident memory,
open files and threads stay flat.

    python bench/soak.py --seconds 300 --senders 4       # make soak
    python bench/soak.py --seconds 20                    # the smoke run CI does

Senders (pynetdicom SCUs in threads) open an association, send a few instances and release,
over and over. The receiver (`runscp`, in its own process) is sampled from /proc every couple
of seconds. After a warm-up round and again after the soak, with no association open, its
threads and file descriptors must be what they were, and its memory within a small margin;
during the soak, memory must not climb. Exit status 1 when any of that fails.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from bench import run as bench_run  # noqa: E402
from bench.corpus import instance  # noqa: E402

# Allowed growth of resident memory: idle before vs idle after, and first vs last third.
RSS_MARGIN_MB = 10.0


@dataclass
class Sample:
    at: float
    rss_mb: float
    threads: int
    fds: int
    sent: int
    fd_targets: tuple[str, ...] = ()


def sample(server: bench_run.Server, started: float, sent: int) -> Sample:
    rss = threads = fds = 0
    targets: list[str] = []
    for pid in server.pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            links = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            continue
        fds += len(links)
        for link in links:
            try:
                targets.append(f"{pid}:{os.readlink(link)}")
            except OSError:
                continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields["VmRSS"].split()[0]) if "VmRSS" in fields else 0
        threads += int(fields["Threads"])
    return Sample(time.monotonic() - started, rss / 1024, threads, fds, sent, tuple(targets))


class Senders:
    """`count` threads sending `per_association` instances per association until stopped."""

    def __init__(self, port: int, count: int, per_association: int, rows: int) -> None:
        self.port, self.per_association, self.rows = port, per_association, rows
        self.sent = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def round(self, number: int) -> None:
        """One association's worth, in the calling thread."""
        ae = AE(ae_title=f"SOAK{number:02d}")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="BENCH")
        if not assoc.is_established:
            with self._lock:
                self.failed += self.per_association
            return
        uids = {
            "study": generate_uid(),
            "series": generate_uid(),
            "study_number": number,
            "series_number": 1,
            "patient_number": number,
        }
        try:
            for i in range(self.per_association):
                ds = instance(i, self.rows, uids)
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                started = time.monotonic()
                status = assoc.send_c_store(ds)
                ok = status.get("Status") == 0x0000
                if not ok:
                    print(
                        f"C-STORE {ds.SOPInstanceUID} by SOAK{number:02d}: status "
                        f"{status.get('Status', 'none')} after {time.monotonic() - started:.3f} s, "
                        f"association {'established' if assoc.is_established else 'ended'}",
                        flush=True,
                    )
                with self._lock:
                    self.sent += ok
                    self.failed += not ok
        finally:
            assoc.release()

    def _run(self, number: int) -> None:
        while not self._stop.is_set():
            self.round(number)


def settle(server: bench_run.Server, started: float, sent: int, seconds: float) -> Sample:
    """The idle state: wait for associations to end, then take the median of a few samples."""
    time.sleep(seconds)
    samples = []
    for _ in range(3):
        samples.append(sample(server, started, sent))
        time.sleep(0.5)
    fewest = min(samples, key=lambda s: s.fds)
    return Sample(
        samples[-1].at,
        statistics.median(s.rss_mb for s in samples),
        min(s.threads for s in samples),
        fewest.fds,
        sent,
        fewest.fd_targets,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--per-association", type=int, default=20)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--workers", type=int, help="default: runscp's own")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    # The senders' own warnings (pynetdicom's "unexpected ... message", DIMSE timeouts) explain
    # a C-STORE that got no success.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    work = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    bench_run.OURS_WORKERS = args.workers
    server = bench_run.start_ours(work)
    started = time.monotonic()
    warm_up = Senders(server.port, args.senders, args.per_association, args.rows)
    senders = Senders(server.port, args.senders, args.per_association, args.rows)
    samples: list[Sample] = []
    try:
        # Warm-up under the same load: threads' allocator arenas, caches and the heartbeat's
        # database connection are in place before the baseline is taken.
        warm_up.start()
        time.sleep(max(10.0, args.seconds / 10))
        warm_up.stop()
        before = settle(server, started, 0, 2.0)
        senders.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(args.interval, max(deadline - time.monotonic(), 0)))
            samples.append(sample(server, started, senders.sent))
        senders.stop()
        after = settle(server, started, senders.sent, 2.0)
        stored = server.stored() - warm_up.sent
    finally:
        server.stop()

    print(f"{'t (s)':>7} {'RSS MB':>8} {'threads':>8} {'fds':>5} {'sent':>8}")
    for s in [before, *samples, after]:
        print(f"{s.at:7.1f} {s.rss_mb:8.1f} {s.threads:8d} {s.fds:5d} {s.sent:8d}")
    third = max(len(samples) // 3, 1)
    early = statistics.median(s.rss_mb for s in samples[:third])
    late = statistics.median(s.rss_mb for s in samples[-third:])
    rate = (after.sent - before.sent) / args.seconds
    print(
        f"\nsent {senders.sent} ({rate:.0f}/s during the soak), failed {senders.failed}, "
        f"stored {stored}; idle before/after: RSS {before.rss_mb:.1f}/{after.rss_mb:.1f} MB, "
        f"threads {before.threads}/{after.threads}, fds {before.fds}/{after.fds}; "
        f"RSS first/last third of the soak {early:.1f}/{late:.1f} MB"
    )
    problems = []
    if senders.failed or warm_up.failed or stored != senders.sent:
        problems.append(f"{senders.failed} failed, {stored} stored of {senders.sent} sent")
    if after.threads > before.threads:
        problems.append(f"threads grew from {before.threads} to {after.threads}")
    new_fds = Counter(after.fd_targets) - Counter(before.fd_targets)
    # SQLite cannot close a connection's descriptor while another connection of the process
    # holds a lock on the file; it parks it and reuses it for the next connection. And the
    # background loops (Storage Commitment delivery, forwarding) close their connection at
    # each round and open it again, with its write-ahead log: one may be open at the end and
    # not at the start (seen in about one run in six, with or without pinned workers). How
    # many depends on timing, bounded by the concurrent connections: not a leak. One
    # connection leaked per association would pass that bound within seconds.
    index_files = (f"{work}/index.db", f"{work}/index.db-wal")
    parked = sum(n for target, n in new_fds.items() if target.endswith(index_files))
    leaked = sorted(t for t in new_fds.elements() if not t.endswith(index_files))
    if leaked or parked > 2 * args.senders:
        problems.append(f"file descriptors grew from {before.fds} to {after.fds}: {leaked}")
    if after.rss_mb - before.rss_mb > RSS_MARGIN_MB:
        problems.append(f"idle memory grew by {after.rss_mb - before.rss_mb:.1f} MB")
    if late - early > RSS_MARGIN_MB:
        problems.append(f"memory climbed by {late - early:.1f} MB during the soak")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("flat" if not problems else "NOT flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
