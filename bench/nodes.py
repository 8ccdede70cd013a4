"""Two receiver nodes on one PostgreSQL database and one storage directory, behind HAProxy
(deploy/haproxy.cfg, as tests/e2e/test_two_nodes.py runs it): bench/run.py's peer
`ours-2nodes`, as one process whose children are the nodes and the balancer, so that the
benchmark counts their CPU and memory together.

    DATABASE_URL=postgres://... python bench/nodes.py --port 11112 --ae-title BENCH \\
        --storage DIR --work DIR

Each node has its own staging directory and sees the senders' addresses through the PROXY
protocol. SIGTERM stops the balancer, then the nodes (their graceful drain), and exits.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from bench.ports import free_port  # noqa: E402


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a node exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("a node did not start listening")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the balancer's port")
    parser.add_argument("--ae-title", default="BENCH")
    parser.add_argument("--storage", required=True, help="the storage directory both share")
    parser.add_argument("--work", type=Path, required=True, help="configs and staging")
    args = parser.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    nodes: list[subprocess.Popen] = []
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports, 1):
        config = args.work / f"node{n}.yaml"
        config.write_text(
            "server:\n"
            f"  port: {port}\n  ae_title: {args.ae_title}\n  bind: 127.0.0.1\n"
            "  max_associations: 16\n"
            "  proxy_protocol: true\n  proxy_addresses: [127.0.0.1]\n"
            f"storage:\n  directory: {args.storage}\n"
        )
        nodes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "runscp", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, "DICOM_STAGING_DIR": str(args.work / f"staging{n}")},
            )
        )
        _wait_port(port, nodes[-1])  # one at a time: the first migrates the new database
    balancer = subprocess.Popen(
        ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env={
            **os.environ,
            "PACS_FRONT": f"127.0.0.1:{args.port}",
            "PACS_NODE1": f"127.0.0.1:{ports[0]}",
            "PACS_NODE2": f"127.0.0.1:{ports[1]}",
        },
    )
    while not stopping and balancer.poll() is None and all(n.poll() is None for n in nodes):
        time.sleep(0.2)
    balancer.terminate()
    balancer.wait()
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    for node in nodes:
        node.wait()


if __name__ == "__main__":
    main()
