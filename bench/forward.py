"""Forwarding benchmark: our forwarding queue against Orthanc's store job, side by side.

    python bench/forward.py                         # 500-instance studies, 64x64 and 512x512
    python bench/forward.py --count 10 --pixels 64 --repeat 1   # smoke run

Stores one `--count`-instance CT study into our receiver (runscp, then stopped) and into
Orthanc, then sends it from each to DCMTK's storescp, alternating, `--repeat` times: ours by
queueing the study (routing.forwarding.forward_enqueue, as the admin's "send to" does) and
draining the queue (forward_once: claims, one association per batch of 100); Orthanc's by a
synchronous job `POST /modalities/storescp/store`. Prints median seconds, instances/s and
Orthanc's time over ours (target 1.0 or more).

The other half of the issue's performance target, the ingest cost of an active forwarding
rule, is `bench/ingest_service.py` run with and without `--forwarding-rule`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.qr import (  # noqa: E402
    _clear,
    _files,
    start_orthanc,
    start_ours,
    start_storescp,
    storescu,
    study_write,
)


def orthanc_store(http_port: int) -> float:
    """Seconds for Orthanc's synchronous store job of its one study to `storescp`."""
    base = f"http://127.0.0.1:{http_port}"
    with urllib.request.urlopen(f"{base}/studies", timeout=60) as answer:
        (study,) = json.loads(answer.read())
    body = json.dumps({"Resources": [study], "Synchronous": True}).encode()
    request = urllib.request.Request(f"{base}/modalities/storescp/store", data=body, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as answer:
        answer.read()
    return time.perf_counter() - started


def orthanc_http_port(work: Path) -> int:
    return json.loads((work / "orthanc.json").read_text())["HttpPort"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="instances in the study")
    parser.add_argument("--pixels", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"\nForwarding a {args.count}-instance study to storescp (median of {args.repeat}):")
    print(f"  {'':12} {'ours s':>8} {'orthanc s':>10} {'ours inst/s':>12} {'ratio':>6}")
    for px in args.pixels:
        work = Path(tempfile.mkdtemp(prefix="forward-", dir=args.out))
        index = work / "index.db"
        study_write(args.count, px, work / "corpus", tag=f"F{px}")
        destination = work / "storescp"
        storescp, destination_port = start_storescp(destination)
        ours = start_ours(work, index, destination_port)
        orthanc = start_orthanc(work, destination_port)
        try:
            storescu(ours.port, ours.ae_title, work / "corpus")
            storescu(orthanc.port, orthanc.ae_title, work / "corpus")
            ours.stop()  # its forwarding worker would drain the queue we time below
            timings: dict[str, list[float]] = {"ours": [], "orthanc": []}
            for _ in range(args.repeat):
                _clear(destination)
                timings["ours"].append(forward_ours(index, work / "store", args.count))
                assert _files(destination) == args.count, "ours: not all delivered"
                _clear(destination)
                timings["orthanc"].append(orthanc_store(orthanc_http_port(work)))
                assert _files(destination) == args.count, "Orthanc: not all delivered"
            mine = statistics.median(timings["ours"])
            theirs = statistics.median(timings["orthanc"])
            print(
                f"  {f'{px}x{px} CT':12} {mine:8.2f} {theirs:10.2f} "
                f"{args.count / mine:12.0f} {theirs / mine:6.2f}"
            )
        finally:
            orthanc.stop()
            storescp.terminate()
            storescp.wait()


_django_ready: list[bool] = []


def forward_ours(index: Path, store: Path, count: int) -> float:
    """Seconds to queue every instance of the index for STORESCP and drain the queue."""
    if not _django_ready:
        os.environ["DJANGO_SETTINGS_MODULE"] = "pacsproject.settings"
        os.environ["DATABASE_URL"] = f"sqlite:///{index}"
        import django

        django.setup()
        _django_ready.append(True)
    from django.db import connections

    from archive.models import Instance
    from archive.storage import Storage
    from pacsproject.database import use_sqlite_index
    from routing.forwarding import forward_enqueue, forward_once
    from routing.models import ForwardItem, RemoteAE

    connections.close_all()
    use_sqlite_index(index)
    ForwardItem.objects.all().delete()
    remote = RemoteAE.objects.get(ae_title="STORESCP")
    started = time.perf_counter()
    forward_enqueue(
        instance_ids=Instance.objects.values_list("pk", flat=True),
        destination=remote,
        origin="bench",
    )
    sent = forward_once(storage=Storage(store), ae_title="BENCH")
    elapsed = time.perf_counter() - started
    assert sent == count, f"ours: {sent} of {count} sent"
    return elapsed


if __name__ == "__main__":
    main()
