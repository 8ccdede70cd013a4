"""Connections before their A-ASSOCIATE-RQ (receiver.transport.lobby), over real sockets: they
cost no thread, are bounded per address and in total, time out, and are reported."""

import contextlib
import logging
import resource
import socket
import threading
import time

import pytest

from receiver.metrics import metrics_text
from receiver.models import AssociationLog
from tests.peers import eventually
from tests.receiver.test_access import echo_ok


def idle(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_cost_no_thread_and_honest_peers_still_associate(start_scp):
    server = start_scp()
    before = threading.active_count()
    sockets = [idle(server.port) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() <= before + 1
        assert echo_ok(server.port)
        assert server.lobby.waiting_count == 40
    finally:
        for sock in sockets:
            sock.close()


def test_oldest_connection_of_an_address_goes_first_when_its_limit_is_reached(start_scp):
    server = start_scp(max_waiting_per_address=5)
    sockets = [idle(server.port) for _ in range(8)]
    try:
        assert all(closed_by_peer(s) for s in sockets[:3])
        assert not any(closed_by_peer(s, timeout=0.3) for s in sockets[3:])
        assert echo_ok(server.port)  # newest of all: it stays long enough to associate
    finally:
        for sock in sockets:
            sock.close()


def test_oldest_connection_of_all_goes_first_when_the_total_is_reached(start_scp):
    server = start_scp(max_waiting_connections=4, max_waiting_per_address=100)
    sockets = [idle(server.port, f"127.0.0.{2 + i}") for i in range(6)]
    try:
        assert all(closed_by_peer(s) for s in sockets[:2])
        assert not any(closed_by_peer(s, timeout=0.3) for s in sockets[2:])
        assert echo_ok(server.port)
    finally:
        for sock in sockets:
            sock.close()


def test_silent_and_slow_connections_are_closed_at_the_first_pdu_timeout(start_scp):
    server = start_scp(first_pdu_timeout=1.0)
    silent = idle(server.port)
    slow = idle(server.port)
    stop = threading.Event()

    def trickle() -> None:  # an A-ASSOCIATE-RQ header, a byte every 0.2 s, never complete
        for byte in b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 16:
            if stop.wait(0.2):
                return
            with contextlib.suppress(OSError):
                slow.send(bytes([byte]))

    sender = threading.Thread(target=trickle)
    sender.start()
    start = time.monotonic()
    try:
        assert closed_by_peer(silent)
        assert closed_by_peer(slow)
        assert 0.8 < time.monotonic() - start < 3
    finally:
        stop.set()
        sender.join()
        silent.close()
        slow.close()


class SlowRelay:
    """Between a real SCU and the receiver: passes the SCU's first `slow_bytes` one byte at a
    time with a pause between them, then everything at full speed both ways."""

    def __init__(self, target_port: int, slow_bytes: int, pause: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port, self.slow_bytes, self.pause = target_port, slow_bytes, pause
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump, args=(upstream, client, 0), daemon=True).start()
        self._pump(client, upstream, self.slow_bytes)

    def _pump(self, source: socket.socket, sink: socket.socket, slow: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(1 if slow else 65536)
                if not data:
                    break
                if slow:
                    slow -= 1
                    time.sleep(self.pause)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_association_request_arriving_byte_by_byte_is_served_once_complete(start_scp):
    server = start_scp()
    # An A-ASSOCIATE-RQ with one context is some 200 bytes: all of it trickles in.
    relay = SlowRelay(server.port, slow_bytes=400, pause=0.002)
    assert echo_ok(relay.port)


@pytest.mark.django_db(transaction=True)
def test_dropped_connections_are_logged_once_recorded_and_counted(start_scp, caplog, tmp_path):
    server = start_scp(max_waiting_per_address=2)
    caplog.set_level(logging.WARNING, logger="receiver.transport.lobby")
    sockets = [idle(server.port) for _ in range(12)]
    try:
        assert all(closed_by_peer(s) for s in sockets[:10])
    finally:
        for sock in sockets:
            sock.close()
    server.stop(grace=1)  # the pending report is written as the lobby stops
    # The first drop is reported at once, the rest together: one line per 10 s at most.
    lines = [r.getMessage() for r in caplog.records if "before association" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert all("per-address limit" in line and "from 127.0.0.1" in line for line in lines)
    rows = AssociationLog.objects.filter(outcome=AssociationLog.DROPPED)
    assert eventually(lambda: rows.count() == len(lines))  # written by a thread of their own
    assert sum(row.failures["per-address limit"] for row in rows) == 10
    assert {row.peer_address for row in rows} == {"127.0.0.1"}
    text = metrics_text(tmp_path).decode()
    assert 'dicom_connections_dropped_total{reason="per-address limit"} 10.0' in text
    assert 'dicom_associations_total{outcome="dropped"}' not in text


def test_connection_flood_cannot_push_honest_associations_past_select(start_scp):
    """Descriptors numbered 1024 and more: pynetdicom's select() would fail on them."""
    server = start_scp(max_waiting_per_address=2000, max_waiting_connections=2000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4000:
        pytest.skip("needs an open file limit of 4000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4000), hard))
    sockets = [idle(server.port) for _ in range(1100)]  # both ends in this process
    try:
        assert eventually(lambda: server.lobby.waiting_count == 1100)
        assert echo_ok(server.port)
    finally:
        for sock in sockets:
            sock.close()
