"""Two receiver nodes on one PostgreSQL database and one bucket, behind HAProxy.

Each node is a `runscp` process with its own staging directory; HAProxy (deploy/haproxy.cfg,
send-proxy-v2) spreads associations over them. The same instance sent to both at once ends as
one row and one object; a node killed mid-run costs the senders a retry, not an instance.
"""

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from receiver.config import workers_auto
from tests.conftest import free_port, sample_file
from tests.peers import scu, system_tool
from tests.receiver.test_proxy_protocol import Relay
from tests.receiver.test_runscp import ROOT, runscp, wait_listening

pytestmark = pytest.mark.slow


def _server_url() -> str:
    for candidate in (os.environ.get("DATABASE_URL", ""), os.environ.get("PG_URL", "")):
        if candidate.startswith(("postgres://", "postgresql://")):
            return candidate
    return "postgres://postgres:postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def database():
    """A fresh PostgreSQL database for the nodes, dropped afterwards."""
    server = _server_url()
    base = server.rsplit("/", 1)[0]
    name = f"pacs_twonodes_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {base}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _node(tmp_path: Path, n: int, port: int, bucket: str, env: dict) -> subprocess.Popen:
    config = tmp_path / f"node{n}.yaml"
    config.write_text(
        "server:\n"
        f"  port: {port}\n  ae_title: PACS\n  bind: 127.0.0.1\n"
        "  proxy_protocol: true\n  proxy_addresses: [127.0.0.1]\n"
        f"storage:\n  directory: s3://{bucket}/nodes\n"
    )
    process = runscp(
        "--config", config, env={**env, "DICOM_STAGING_DIR": str(tmp_path / f"staging{n}")}
    )
    wait_listening(port, process)
    return process


def _send(port: int, ds, *, bind: tuple[str, int] | None = None) -> int | None:
    ae = scu("SENDER")
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", bind_address=bind)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
        return status.Status if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def _rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as db:
        return db.execute("SELECT sop_instance_uid, path FROM archive_instance").fetchall()


def test_two_nodes_behind_haproxy(database, moto_server, tmp_path):
    haproxy = system_tool("haproxy", "haproxy")
    bucket = moto_server.bucket_new()
    env = {**moto_server.environment, "DATABASE_URL": database}
    ports = [free_port(), free_port()]
    nodes = [_node(tmp_path, 1, ports[0], bucket, env)]
    nodes.append(_node(tmp_path, 2, ports[1], bucket, env))  # after the first migrated
    front = free_port()
    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env={
            **os.environ,
            "PACS_FRONT": f"127.0.0.1:{front}",
            "PACS_NODE1": f"127.0.0.1:{ports[0]}",
            "PACS_NODE2": f"127.0.0.1:{ports[1]}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        ds = dcmread(sample_file("CT_small.dcm"))

        # One instance to both nodes at once, one association each (through a relay that
        # speaks the PROXY header as HAProxy would, so that each node is chosen for sure).
        relays = [Relay(port, ("127.0.0.2", 4000 + i)) for i, port in enumerate(ports)]
        results: list[int | None] = []
        threads = [
            threading.Thread(target=lambda port=relay.port: results.append(_send(port, ds)))
            for relay in relays
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for relay in relays:
            relay.close()
        assert results == [0x0000, 0x0000]
        assert len(_rows(database)) == 1
        # One object for the instance, beside the storage's identity marker.
        [(_, path)] = _rows(database)
        assert sorted(moto_server.keys(bucket)) == sorted(
            [f"nodes/{path}", "nodes/.pacs-storage.json"]
        )
        # Both nodes are in the shared index's process table (status page, scpstatus,
        # /metrics all read it), each worker of each (one on a bucket, by default).
        with psycopg.connect(database) as db:
            rows = db.execute("SELECT port, count(*) FROM receiver_receiverprocess GROUP BY port")
            counts = dict(rows.fetchall())
        assert counts == {port: workers_auto(bucket=True) for port in ports}

        # Two senders, one instance per association, retrying on failure; node 1 is killed
        # while they send (most likely in the middle of an association).
        acknowledged: list[str] = []

        def sender(first: int) -> None:
            ds = dcmread(sample_file("CT_small.dcm"))
            for n in range(first, first + 20):
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7133.7.{n + 1}"
                for _attempt in range(5):
                    if _send(front, ds) == 0x0000:
                        acknowledged.append(ds.SOPInstanceUID)
                        break
                    time.sleep(0.5)

        senders = [threading.Thread(target=sender, args=(first,)) for first in (0, 20)]
        for thread in senders:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(nodes[0].pid, signal.SIGKILL)  # the node, its workers included
        for thread in senders:
            thread.join()
        assert len(acknowledged) == 40
        rows = dict(_rows(database))
        assert set(acknowledged) <= set(rows)
        keys = set(moto_server.keys(bucket))
        assert {f"nodes/{rows[uid]}" for uid in acknowledged} <= keys
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
            node.communicate(timeout=60)
