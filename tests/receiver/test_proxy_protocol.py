"""PROXY protocol v2 behind a load balancer: the header is read in the lobby, and the real
peer's address is the one access control checks and the association log records."""

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from archive.models import Instance
from receiver.config import AllowedPeer, ConfigError, resolve
from receiver.models import AssociationLog
from receiver.transport.proxy_protocol import (
    ProxyHeaderInvalid,
    proxy_header_build,
    proxy_header_parse,
)
from tests.conftest import free_port, sample_file
from tests.peers import eventually, scu, system_tool

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def test_headers_parse():
    header = proxy_header_build(("10.1.2.3", 5555), ("10.0.0.1", 104))
    assert proxy_header_parse(header + b"\x01\x00") == (len(header), ("10.1.2.3", 5555))
    six = proxy_header_build(("2001:db8::7", 4000), ("2001:db8::1", 104))
    assert proxy_header_parse(six) == (len(six), ("2001:db8::7", 4000))
    assert proxy_header_parse(header[:10]) is None
    assert proxy_header_parse(header[:-1]) is None
    local = header[:12] + b"\x20\x00\x00\x00"
    assert proxy_header_parse(local) == (16, None)
    with pytest.raises(ProxyHeaderInvalid):
        proxy_header_parse(b"\x01\x00\x00\x00\x00\xcd")  # an A-ASSOCIATE-RQ, no header
    with pytest.raises(ProxyHeaderInvalid):
        proxy_header_parse(header[:12] + b"\x11" + header[13:])  # version 1


def test_proxy_protocol_needs_the_proxies_listed():
    with pytest.raises(ConfigError, match="proxy"):
        resolve({"proxy_protocol": True})


class Relay:
    """A minimal load balancer: accepts on a port, connects to `target` and prepends a PROXY
    v2 header naming `claimed` as the sender (or none)."""

    def __init__(self, target: int, claimed: tuple[str, int] | None) -> None:
        self.target, self.claimed = target, claimed
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            if self.claimed:
                upstream.sendall(proxy_header_build(self.claimed, ("127.0.0.1", self.target)))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _store_via(port: int) -> int | None:
    ds = dcmread(sample_file("CT_small.dcm"))
    ae = scu("TEST_SCU")
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    if not assoc.is_established:
        return None
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


@pytest.fixture
def proxied_scp(start_scp):
    return start_scp(
        proxy_protocol=True,
        proxy_addresses=("127.0.0.1",),
        require_known_ae=True,
        allowed_aes=(AllowedPeer("TEST_SCU", "10.1.2.3"),),
    )


def test_the_real_address_is_checked_and_recorded(proxied_scp):
    relay = Relay(proxied_scp.port, ("10.1.2.3", 5555))
    try:
        assert _store_via(relay.port) == 0x0000
    finally:
        relay.close()
    assert Instance.objects.get().remote_address == "10.1.2.3"
    assert eventually(lambda: AssociationLog.objects.filter(peer_address="10.1.2.3").exists())


def test_a_claimed_address_not_allowed_is_rejected(proxied_scp):
    relay = Relay(proxied_scp.port, ("10.9.9.9", 5555))
    try:
        assert _store_via(relay.port) is None
    finally:
        relay.close()
    assert eventually(
        lambda: AssociationLog.objects.filter(peer_address="10.9.9.9", outcome="rejected").exists()
    )


def test_a_trusted_proxy_without_header_is_dropped(proxied_scp):
    assert _store_via(proxied_scp.port) is None  # straight from 127.0.0.1, no header
    assert Instance.objects.count() == 0


def test_haproxy_send_proxy_v2_passes_the_real_address(start_scp, tmp_path):
    haproxy = system_tool("haproxy", "haproxy")
    scp = start_scp(proxy_protocol=True, proxy_addresses=("127.0.0.1",))
    front = free_port()
    environment = {
        **os.environ,
        "PACS_FRONT": f"127.0.0.1:{front}",
        "PACS_NODE1": f"127.0.0.1:{scp.port}",
        "PACS_NODE2": f"127.0.0.1:{scp.port}",
    }
    process = subprocess.Popen(
        [haproxy, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        ds = dcmread(sample_file("CT_small.dcm"))
        ae = scu("TEST_SCU")
        ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
        # From 127.0.0.2: the receiver must see this, not HAProxy's 127.0.0.1.
        assoc = ae.associate("127.0.0.1", front, ae_title="TEST_SCP", bind_address=("127.0.0.2", 0))
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert Instance.objects.get().remote_address == "127.0.0.2", output
