"""Per-instance cost of the ingest service alone (no network), on a temporary SQLite index or
a fresh PostgreSQL database (`--database-url`).

    python bench/ingest_service.py --count 400 --series 4 --repeat 5
    python bench/ingest_service.py --count 400 --series 4 --repeat 5 --forwarding-rule

Calls archive.services.instance_store for `count` small CT instances spread over `series`
series of one study (sent interleaved, as several associations would), in a fresh index and
storage directory per repeat, and prints the median wall time per instance and the SQL
statements it ran per instance. Point PYTHONPATH at another checkout to compare revisions.
The audit trail is written as the receiver writes it (one record per study when each
association of `--association-size` instances ends) and its share of the time is printed.
With `--forwarding-rule`, a rule (modality CT, to a remote AE nothing listens on) is active:
each instance is also queued in its transaction (routing.forwarding), the cost to compare.
With `--profile FILE`, cProfile records the store loop alone (not the corpus it builds
first): `python -m pstats FILE`. Statements sent on the DB-API connection itself (BEGIN and
COMMIT of archive.dblock's bare transaction, forwarding's queue INSERT on SQLite) pass
Django's execute wrappers uncounted.
"""

import argparse
import copy
import cProfile
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--work-dir", help="where index and files go (/dev/shm takes the disk's fsyncs out)"
    )
    parser.add_argument(
        "--forwarding-rule", action="store_true", help="with a forwarding rule that matches"
    )
    parser.add_argument(
        "--association-size",
        type=int,
        default=500,
        help="instances per association (storescu sends a folder over one): its audit records "
        "are written when it ends",
    )
    parser.add_argument(
        "--database-url",
        help="index in this PostgreSQL server (postgres://...; a fresh database per run), "
        "not a temporary SQLite file",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write cProfile statistics of the store loop alone (not the corpus) to FILE, "
        "for `python -m pstats FILE`",
    )
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.profile else None

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.work_dir))
    os.environ["DJANGO_SETTINGS_MODULE"] = "pacsproject.settings"
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{work / 'placeholder.db'}"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import generate_uid

    from archive import services
    from archive.services import IngestSettings, instance_store
    from archive.storage import Storage
    from bench.run import fresh_postgres, postgres_drop
    from pacsproject.database import use_database_url, use_sqlite_index
    from receiver.association_audit import association_audit_write

    base = dcmread(get_testdata_file("CT_small.dcm"))
    syntax = "1.2.840.10008.1.2.1"  # explicit VR little endian, as encoded below

    def corpus() -> list[tuple[str, str, bytes]]:
        study, series = generate_uid(), [generate_uid() for _ in range(args.series)]
        items = []
        for n in range(args.count):
            ds = copy.deepcopy(base)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series[n % args.series]
            ds.SOPInstanceUID = generate_uid()
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, False
            write_dataset(buffer, ds)
            items.append((ds.SOPClassUID, ds.SOPInstanceUID, buffer.getvalue()))
        return items

    per_instance, cpu_per_instance, statements, audit_shares = [], [], [], []
    for repeat in range(args.repeat):
        run_dir = work / f"run{repeat}"
        database = None
        if args.database_url:
            database = fresh_postgres(args.database_url, "pacs_bench_ingest")
            use_database_url(database)
        else:
            use_sqlite_index(run_dir / "index.db")
        call_command("migrate", verbosity=0)
        services.series_cache_clear()
        if args.forwarding_rule:
            from routing.forwarding import forwarding_rules_load
            from routing.models import ForwardingRule, RemoteAE

            remote = RemoteAE.objects.create(ae_title="NOWHERE", host="127.0.0.1", port=9)
            ForwardingRule.objects.create(destination=remote, modalities="CT")
            forwarding_rules_load()
        storage = Storage(run_dir / "received")
        storage.prepare()
        # As the receiver's default (database.synchronous: normal) configures it.
        settings = IngestSettings(storage=storage, index_flush=False)
        items = corpus()
        executed = [0]

        def count(execute, sql, params, many, context, executed=executed):
            executed[0] += 1
            return execute(sql, params, many, context)

        audit_seconds = 0.0
        studies: Counter[tuple[str, str]] = Counter()
        with connection.execute_wrapper(count):
            start, cpu_start = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            for n, (sop_class, sop_instance, data) in enumerate(items, 1):
                result = instance_store(
                    dataset=data,
                    transfer_syntax_uid=syntax,
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    calling_ae_title="BENCH",
                    remote_address="127.0.0.1",
                    settings=settings,
                )
                studies[result.patient_id, result.study_instance_uid] += 1  # as the tally
                if n % args.association_size == 0 or n == len(items):
                    audit_start = time.perf_counter()
                    association_audit_write(
                        calling_ae_title="BENCH",
                        peer_address="127.0.0.1",
                        studies=studies,
                        failures={},
                        association_outcome="released",
                    )
                    audit_seconds += time.perf_counter() - audit_start
                    studies = Counter()
            if profiler is not None:
                profiler.disable()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        per_instance.append(elapsed / args.count * 1e6)
        cpu_per_instance.append(cpu / args.count * 1e6)
        statements.append(executed[0] / args.count)
        audit_shares.append(audit_seconds / elapsed)
        storage.release()
        connections.close_all()
        if database is not None:
            postgres_drop(database)
    shutil.rmtree(work, ignore_errors=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(
        f"{args.count} instances in {args.series} series, {args.repeat} repeats: "
        f"median {statistics.median(per_instance):.0f} µs per instance "
        f"(runs: {', '.join(f'{v:.0f}' for v in per_instance)}), "
        f"median CPU {statistics.median(cpu_per_instance):.0f} µs per instance, "
        f"{statistics.median(statements):.3f} SQL statements per instance; "
        f"the audit trail's records took {100 * statistics.median(audit_shares):.2f}% of the time"
    )


if __name__ == "__main__":
    main()
