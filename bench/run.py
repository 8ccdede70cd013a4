"""Throughput benchmark: the same corpus sent by DCMTK's storescu to our SCP and to its peers.

    python bench/run.py --count 2000 --rows 64 --associations 1 4 --repeat 3
    python bench/run.py --large-instance-mb 1024          # peak memory for one large instance

Every run gets fresh directories; peers alternate within each repeat (the CPU speed of this
kind of machine drifts), and medians are reported. Peers: ours (full index, durable writes),
DCMTK storescp (files only), pynetdicom's storescp app (files only) and, when installed,
Orthanc (SQLite index).

The timed runs use quiet clients (storescu at WARN level): a client logging every C-STORE
competes with the server for the same cores and pulls every ratio towards 1, where real
senders do not share the server's CPU. The p50/p99 columns come from a separate, untimed run
per peer with the clients at INFO level (`--latency-count` instances; 0 skips it).
docs/performance.md describes the method.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import HEADERS, corpus_write, large_instance_write  # noqa: E402
from bench.ports import free_port  # noqa: E402

PYTHON = sys.executable
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (.*)$")


def wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start listening")


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    ae_title: str
    store: Path
    index: Path | None = None
    database_url: str | None = None

    def pids(self) -> list[int]:
        """The server and its worker processes."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def rss_peak_mb(self) -> float:
        """The largest peak resident memory of any one of the server's processes."""
        peaks = [0.0]
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue  # a child that has just exited
            if match := re.search(r"VmHWM:\s+(\d+) kB", status):  # none for zombies
                peaks.append(int(match.group(1)) / 1024)
        return max(peaks)

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            # Own time plus that of exited, reaped children (storescp --fork's).
            ticks = sum(int(value) for value in fields[11:15])
            total += ticks / os.sysconf("SC_CLK_TCK")
        return total

    def stored(self) -> int:
        if self.name.startswith("ours") and self.database_url:
            with psycopg.connect(_libpq_url(self.database_url)) as db:
                return db.execute("SELECT count(*) FROM archive_instance").fetchone()[0]
        if self.name.startswith("ours"):
            with sqlite3.connect(self.index) as db:
                return db.execute("SELECT count(*) FROM archive_instance").fetchone()[0]
        if self.name.startswith("orthanc"):
            files = [p for p in self.store.rglob("*") if p.is_file() and "index" not in p.name]
            return len(files)
        return sum(1 for p in self.store.rglob("*") if p.is_file())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.database_url:
            postgres_drop(self.database_url)


OURS_WORKERS: int | None = None  # None: runscp's own default
# postgres://... to index ours in PostgreSQL (a fresh database per run) instead of SQLite.
OURS_DATABASE_URL: str | None = None


def _libpq_url(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def fresh_postgres(url: str, name: str) -> str:
    """A new empty database next to the one `url` names, private to this run (other runs may
    share the server); its URL. Dropped when its server stops."""
    server, _, _ = _libpq_url(url).rpartition("/")
    name = f"{name}_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def postgres_drop(url: str) -> None:
    server, _, name = _libpq_url(url).rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres_reachable(url: str) -> bool:
    server, _, _ = _libpq_url(url).rpartition("/")
    try:
        psycopg.connect(f"{server}/postgres", connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def workers_arguments() -> list[str]:
    """runscp's --workers for ours, when one was asked for; else what a user gets."""
    return [] if OURS_WORKERS is None else ["--workers", str(OURS_WORKERS)]


def start_ours(
    work: Path,
    *,
    name: str = "ours",
    postgres: str | None = None,
    storage: str | None = None,
    extra_env: dict[str, str] | None = None,
    config: str | None = None,
) -> Server:
    port = free_port()
    store, index = work / "store", work / "index.db"
    env = {
        **os.environ,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **(extra_env or {}),
    }
    where = ["--index-db", str(index)]
    database_url = None
    postgres = postgres or OURS_DATABASE_URL
    if postgres:
        database_url = env["DATABASE_URL"] = fresh_postgres(postgres, "pacs_bench")
        where = []
    if config is not None:  # settings with no command-line option
        (work / "bench.yaml").write_text(config)
        where += ["--config", str(work / "bench.yaml")]
    # Warnings and errors stay in the run's directory, for a run that went wrong.
    with (work / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [PYTHON, str(ROOT / "manage.py"), "runscp", str(port), "BENCH", "--bind", "127.0.0.1",
             "--storage-dir", storage or str(store), *where, "--max-associations", "16",
             *workers_arguments()],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    wait_port(port, process)
    return Server(name, process, port, "BENCH", store, index, database_url)


def start_ours_forwarding(work: Path) -> Server:
    """Ours with a forwarding rule that matches everything, to a destination that is down (so
    every instance is queued in its ingest transaction and the forwarder backs off): the cost
    of the rule, next to ours (issue target: at least 0.9 of the rate without)."""
    config = work / "forwarding.yaml"
    config.write_text(
        f"remote_aes:\n  - {{ae_title: NOWHERE, host: 127.0.0.1, port: {free_port()}}}\n"
        "forwarding:\n  - {destination: NOWHERE, when: instance}\n"
    )
    return start_ours(work, name="ours-forwarding", extra_env={"DICOM_CONFIG": str(config)})


def start_ours_unpinned(work: Path) -> Server:
    """Ours with `server.pin_workers: false`: workers' threads left to the kernel's placement
    (receiver.affinity), to measure what pinning a busy worker to its core brings."""
    return start_ours(work, name="ours-unpinned", config="server:\n  pin_workers: false\n")


def start_ours_pg(work: Path) -> Server:
    """Ours with its index in PostgreSQL (--pg-url), next to Orthanc's PostgreSQL plugin."""
    assert PG_URL is not None
    return start_ours(work, name="ours-pg", postgres=PG_URL)


def start_ours_pg_full(work: Path) -> Server:
    """ours-pg with `database.synchronous: full`: new instances wait for PostgreSQL's WAL flush
    too (the default, normal, lets them commit without: README, Durability)."""
    assert PG_URL is not None
    config = "database:\n  synchronous: full\n"
    return start_ours(work, name="ours-pg-full", postgres=PG_URL, config=config)


def start_ours_2nodes(work: Path) -> Server:
    """Two nodes of ours on one PostgreSQL database and one storage directory behind HAProxy
    (bench/nodes.py): the aggregate, next to ours-pg (one node, no balancer)."""
    assert PG_URL is not None
    port, store = free_port(), work / "store"
    database_url = fresh_postgres(PG_URL, "pacs_bench_nodes")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }
    with (work / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [PYTHON, str(ROOT / "bench" / "nodes.py"), "--port", str(port), "--ae-title", "BENCH",
             "--storage", str(store), "--work", str(work)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    wait_port(port, process)
    time.sleep(1)  # the balancer's first checks
    return Server("ours-2nodes", process, port, "BENCH", store, None, database_url)


# --storage s3: the endpoint of the S3-compatible server (moto, a process of its own, so that
# its CPU is not counted as ours) that the peer ours-s3 stores into.
S3_ENDPOINT: str | None = None
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_ours_s3(work: Path) -> Server:
    """Ours storing into a fresh bucket (staging on local disk) instead of a directory."""
    import boto3

    assert S3_ENDPOINT is not None
    bucket = f"bench-{os.getpid()}-{work.name}".lower().replace("_", "-")[:63]
    boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
    environment = {
        **S3_CREDENTIALS,
        "AWS_ENDPOINT_URL": S3_ENDPOINT,
        "DICOM_STAGING_DIR": str(work / "staging"),
    }
    return start_ours(work, name="ours-s3", storage=f"s3://{bucket}/bench", extra_env=environment)


def s3_server_start(work: Path, s3rver: str | None = None) -> subprocess.Popen:
    """moto's server (or, with `s3rver`, the npm package's executable) on a free loopback
    port, in its own process; sets S3_ENDPOINT."""
    global S3_ENDPOINT
    port = free_port()
    if s3rver:
        (work / "s3rver").mkdir()
        command = [s3rver, "-d", str(work / "s3rver"), "-a", "127.0.0.1", "-p", str(port), "-s"]
        command.append("--allow-mismatched-signatures")
        # The one key pair s3rver knows.
        S3_CREDENTIALS.update(AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
    else:
        command = [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=(work / "s3-server.log").open("wb")
    )
    wait_port(port, process)
    S3_ENDPOINT = f"http://127.0.0.1:{port}"
    return process


def start_dcmtk(work: Path) -> Server:
    port = free_port()
    store = work / "store"
    store.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "BENCH", "-od", str(store), "--fork", str(port)],
        env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, process)
    return Server("dcmtk", process, port, "BENCH", store)


def start_pynetdicom(work: Path) -> Server:
    port = free_port()
    store = work / "store"
    store.mkdir()
    process = subprocess.Popen(
        [PYTHON, "-m", "pynetdicom", "storescp", str(port), "-aet", "BENCH", "-od", str(store),
         "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, process)
    return Server("pynetdicom", process, port, "BENCH", store)


def start_orthanc(work: Path, *, name: str = "orthanc", postgres: str | None = None) -> Server:
    port, http = free_port(), free_port()
    database_url = None
    store = work / "store"
    config = {
        "Name": "bench",
        "DicomAet": "BENCH",
        "DicomPort": port,
        "HttpPort": http,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "StorageDirectory": str(store),
        "IndexDirectory": str(work / "index"),
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "StorageCompression": False,
        "Plugins": [],
    }
    if postgres:
        # The index in PostgreSQL, the files on disk as with SQLite (the plugin's storage stays
        # off): the comparison for ours-pg.
        database_url = fresh_postgres(postgres, "orthanc_bench")
        url = urlparse(database_url)
        config["Plugins"] = [ORTHANC_PG_PLUGIN]
        config["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": url.hostname or "127.0.0.1",
            "Port": url.port or 5432,
            "Database": url.path.lstrip("/"),
            "Username": url.username or "postgres",
            "Password": url.password or "",
            "EnableSsl": False,
            "Lock": False,
        }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(path)], env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, process)
    return Server(name, process, port, "BENCH", store, database_url=database_url)


def start_orthanc_pg(work: Path) -> Server:
    assert PG_URL is not None
    return start_orthanc(work, name="orthanc-pg", postgres=PG_URL)


ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
# postgres://... for the PostgreSQL pair (ours-pg, orthanc-pg); without it they are skipped.
PG_URL: str | None = None

PEERS = {
    "ours": start_ours,
    "dcmtk": start_dcmtk,
    "pynetdicom": start_pynetdicom,
    "orthanc": start_orthanc,
    "ours-forwarding": start_ours_forwarding,
    "ours-unpinned": start_ours_unpinned,
    "ours-pg": start_ours_pg,
    "ours-pg-full": start_ours_pg_full,
    "ours-2nodes": start_ours_2nodes,
    "ours-s3": start_ours_s3,
    "orthanc-pg": start_orthanc_pg,
}


def available(peer: str) -> bool:
    """Whether a peer can run here; the reason it cannot, printed, otherwise."""
    needs_postgres = peer in ("ours-pg", "ours-pg-full", "orthanc-pg", "ours-2nodes")
    if needs_postgres and not (PG_URL and _postgres_reachable(PG_URL)):
        return False
    if peer == "ours-s3" and S3_ENDPOINT is None:
        return False
    if peer == "orthanc-pg" and not Path(ORTHANC_PG_PLUGIN).exists():
        return False
    program = {
        "dcmtk": "storescp",
        "orthanc": "Orthanc",
        "orthanc-pg": "Orthanc",
        "ours-2nodes": "haproxy",
    }.get(peer)
    return program is None or bool(shutil.which(program))


@dataclass
class Result:
    peer: str
    associations: int
    instances: int
    stored: int
    seconds: float
    megabytes: float
    latencies: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    cpu_ms: float = 0.0

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0


def _latencies(log: str) -> list[float]:
    """Time from 'Sending Store Request' to 'Received Store Response' per C-STORE."""
    sent = None
    result = []
    for line in log.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        h, m, s, ms, us, text = match.groups()
        stamp = int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1e3 + int(us) / 1e6
        if text.startswith("Sending Store Request"):
            sent = stamp
        elif text.startswith("Received Store Response") and sent is not None:
            result.append(stamp - sent)
            sent = None
    return result


def send(server: Server, folders: list[Path], associations: int, log_config: Path | None) -> Result:
    """storescu over `associations` parallel associations; all folders are sent once. With a
    `log_config` the clients log every C-STORE (for latencies), else only warnings."""
    groups = [folders[i::associations] for i in range(associations)]
    files = [p for folder in folders for p in folder.iterdir()]
    megabytes = sum(p.stat().st_size for p in files) / 2**20
    cpu_before = server.cpu_seconds()
    start = time.perf_counter()
    clients = [
        subprocess.Popen(
            [
                "storescu",
                *(["-lc", str(log_config)] if log_config else ["-ll", "warn"]),
                "-aec",
                server.ae_title,
                "+sd",
                "127.0.0.1",
                str(server.port),
                *map(str, group),
            ],
            env=NODELAY,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for group in groups
    ]
    outputs = [client.communicate()[0] for client in clients]
    seconds = time.perf_counter() - start
    time.sleep(0.5)  # let the server finish its bookkeeping before counting
    cpu = server.cpu_seconds() - cpu_before
    latencies = [value for output in outputs for value in _latencies(output)]
    return Result(
        peer=server.name,
        associations=associations,
        instances=len(files),
        stored=server.stored(),
        seconds=seconds,
        megabytes=megabytes,
        latencies=latencies,
        rss_mb=server.rss_peak_mb(),
        cpu_ms=cpu * 1000 / len(files),
    )


def run_once(
    peer: str, corpus: list[Path], associations: int, base: Path, *, latencies: bool = False
) -> Result:
    """One timed run with quiet clients, or (`latencies`) one with clients logging each
    C-STORE, whose times are kept for the p50/p99 columns and its rate discarded."""
    work = Path(tempfile.mkdtemp(prefix=f"{peer}-", dir=base))
    server = PEERS[peer](work)
    try:
        log_config = None
        if latencies:
            log_config = work / "log.cfg"
            log_config.write_text(LOG_CONFIG)
        return send(server, corpus, associations, log_config)
    finally:
        server.stop()


def median_result(results: list[Result], latencies: list[float]) -> Result:
    best = sorted(results, key=lambda r: r.rate)[len(results) // 2]
    best.latencies = latencies
    return best


def table(results: dict[tuple[str, int], Result], peers: list[str], counts: list[int]) -> str:
    lines = [
        "| peer | assocs | inst/s | MB/s | p50 ms | p99 ms | peak RSS MB | CPU ms/inst | stored "
        "| ours ÷ peer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for associations in counts:
        ours = results.get(("ours", associations))
        for peer in peers:
            r = results.get((peer, associations))
            if r is None:
                continue
            ratio = f"{ours.rate / r.rate:.2f}" if ours and peer != "ours" else "–"
            lines.append(
                f"| {peer} | {associations} | {r.rate:.0f} | {r.megabytes / r.seconds:.1f} | "
                f"{r.percentile(0.5):.2f} | {r.percentile(0.99):.2f} | {r.rss_mb:.0f} | "
                f"{r.cpu_ms:.2f} | {r.stored}/{r.instances} | {ratio} |"
            )
    return "\n".join(lines)


def large_instance(megabytes: int, base: Path) -> str:
    corpus = large_instance_write(megabytes, base / "large-corpus")
    size = corpus.stat().st_size / 2**20
    work = Path(tempfile.mkdtemp(prefix="ours-large-", dir=base))
    server = start_ours(work)
    try:
        log_config = work / "log.cfg"
        log_config.write_text(LOG_CONFIG)
        start = time.perf_counter()
        result = subprocess.run(
            ["storescu", "-aec", "BENCH", "127.0.0.1", str(server.port), str(corpus)],
            env=NODELAY, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        time.sleep(0.5)
        peak = server.rss_peak_mb()
        stored = server.stored()
    finally:
        server.stop()
        corpus.unlink()
    status = "ok" if result.returncode == 0 and stored == 1 else f"FAILED ({result.stderr[-200:]})"
    return (
        f"one instance of {size:.0f} MB: {status}, {seconds:.1f} s, "
        f"peak resident memory of the SCP {peak:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=64, help="image size: 64 (~12 KB), 512")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--header",
        choices=HEADERS,
        default="minimal",
        help="scanner: each instance also carries a real CT scanner's ~130 other header "
        "elements (bench/corpus.py)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=list(PEERS))
    parser.add_argument("--large-instance-mb", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, help="runscp --workers for ours (default: runscp's own default)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--latency-count",
        type=int,
        default=300,
        help="instances of the separate run with logging clients that gives p50/p99 (0: none)",
    )
    parser.add_argument(
        "--database-url", help="index ours in this PostgreSQL server (postgres://...), not SQLite"
    )
    parser.add_argument(
        "--pg-url",
        help="PostgreSQL server (postgres://...) for the pair ours-pg and orthanc-pg "
        "(Orthanc's PostgreSQL index plugin); without it they are skipped",
    )
    parser.add_argument(
        "--storage",
        nargs="+",
        choices=["filesystem", "s3"],
        default=["filesystem"],
        help="s3 adds the peer ours-s3: ours storing into a bucket on a local moto server "
        "(compare CPU per instance with ours, not rates: moto shares the machine)",
    )
    parser.add_argument(
        "--s3rver",
        metavar="PATH",
        help="the bucket on s3rver (npm s3rver, its executable here) instead of moto: a "
        "server that costs less CPU per request, so that it is less often what bounds the "
        "rate of ours-s3 at several associations",
    )
    args = parser.parse_args()
    global OURS_WORKERS, OURS_DATABASE_URL, PG_URL
    OURS_WORKERS = args.workers
    OURS_DATABASE_URL = args.database_url
    PG_URL = args.pg_url

    args.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=datetime.now().strftime("%Y%m%d-%H%M%S-"), dir=args.out))
    if args.large_instance_mb:
        print(large_instance(args.large_instance_mb, base))
        return

    moto = None
    if "s3" in args.storage:
        moto = s3_server_start(base, args.s3rver)
        if "ours-s3" not in args.peers:
            args.peers.append("ours-s3")
    try:
        _run(args, base)
        if moto is not None:
            # moto serves every request in Python on the same two cores: when its CPU per
            # instance is several times ours, it, not ours, bounds the rate on a bucket.
            stored = args.count * args.repeat * len(args.associations)
            seconds = _process_cpu_seconds(moto.pid)
            name = "s3rver" if args.s3rver else "moto"
            print(f"{name}'s CPU per instance stored into it: {seconds / stored * 1000:.2f} ms")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def _run(args: argparse.Namespace, base: Path) -> None:
    peers = [p for p in args.peers if available(p)]
    skipped = sorted(set(args.peers) - set(peers))
    corpus = corpus_write(
        args.count, args.rows, base / "corpus", max(args.associations), args.header
    )
    collected: dict[tuple[str, int], list[Result]] = {}
    for _ in range(args.repeat):
        for associations in args.associations:
            for peer in peers:
                result = run_once(peer, corpus, associations, base)
                collected.setdefault((peer, associations), []).append(result)
                print(
                    f"  {peer:10} ×{associations}: {result.rate:7.0f}/s "
                    f"stored {result.stored}/{result.instances}",
                    flush=True,
                )
    # Latencies: a separate run, untimed, with storescu logging every C-STORE at INFO level.
    latencies: dict[tuple[str, int], list[float]] = {}
    if args.latency_count:
        small = corpus_write(
            min(args.latency_count, args.count),
            args.rows,
            base / "latency-corpus",
            max(args.associations),
            args.header,
        )
        for associations in args.associations:
            for peer in peers:
                result = run_once(peer, small, associations, base, latencies=True)
                latencies[(peer, associations)] = result.latencies
        shutil.rmtree(base / "latency-corpus", ignore_errors=True)
    results = {
        key: median_result(values, latencies.get(key, [])) for key, values in collected.items()
    }
    print()
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    sizes = f"{args.count} CT instances of {args.rows}×{args.rows}, 16 bit, {args.header} header"
    latency_count = min(args.latency_count, args.count)
    print(f"{os.cpu_count()} cores; {sizes}; medians of {args.repeat} run(s); storescu with "
          "TCP_NODELAY=1, at WARN level for the rates; p50/p99 from a separate run of "
          f"{latency_count} instances with storescu at INFO level")  # fmt: skip
    if skipped:
        print(f"skipped (not installed, or no reachable --pg-url): {', '.join(skipped)}")
    print(table(results, peers, args.associations))
    for associations in args.associations:
        ours_pg, orthanc = (
            results.get(("ours-pg", associations)),
            results.get(("orthanc", associations)),
        )
        orthanc_pg = results.get(("orthanc-pg", associations))
        if ours_pg and orthanc:
            print(
                f"ours-pg ÷ orthanc (SQLite index) at {associations} association(s): "
                f"{ours_pg.rate / orthanc.rate:.2f}"
            )
        if ours_pg and orthanc_pg:
            print(
                f"ours-pg ÷ orthanc-pg at {associations} association(s): "
                f"{ours_pg.rate / orthanc_pg.rate:.2f}"
            )
        full = results.get(("ours-pg-full", associations))
        if ours_pg and full:
            print(
                f"ours-pg-full ÷ ours-pg at {associations} association(s): "
                f"{full.rate / ours_pg.rate:.2f}"
            )
    for associations in args.associations:
        for variant in ("ours-forwarding", "ours-unpinned"):
            ours, other = results.get(("ours", associations)), results.get((variant, associations))
            if ours and other:
                print(
                    f"{variant} ÷ ours at {associations} association(s): "
                    f"{other.rate / ours.rate:.2f}"
                )
    for associations in args.associations:
        ours_pg = results.get(("ours-pg", associations))
        two = results.get(("ours-2nodes", associations))
        if ours_pg and two:
            print(
                f"ours-2nodes (HAProxy, 2 nodes) ÷ ours-pg (1 node) at {associations} "
                f"association(s): {two.rate / ours_pg.rate:.2f}"
            )
    for associations in args.associations:
        ours, ours_s3 = results.get(("ours", associations)), results.get(("ours-s3", associations))
        if ours and ours_s3 and ours.cpu_ms:
            print(
                f"ours-s3 ÷ ours, CPU per instance at {associations} association(s): "
                f"{ours_s3.cpu_ms / ours.cpu_ms:.2f}"
            )
    s3_rates = [results.get(("ours-s3", n)) for n in args.associations]
    if len(s3_rates) > 1 and all(s3_rates):
        print(
            f"ours-s3 at {args.associations[-1]} ÷ at {args.associations[0]} association(s): "
            f"{s3_rates[-1].rate / s3_rates[0].rate:.2f}"
        )
    shutil.rmtree(base / "corpus", ignore_errors=True)


if __name__ == "__main__":
    main()
