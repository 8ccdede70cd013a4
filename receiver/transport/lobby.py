"""Connections that have not yet sent their A-ASSOCIATE-RQ: held in one selector, no thread each.

pynetdicom starts a thread (and soon two) for every TCP connection it accepts, before the peer
has said anything. 3000 connections that never send a byte then cost 2000 threads, 400 MB and
every file descriptor, and honest senders are refused until the ACSE timeout passes. Here a
connection waits in one selector, in one thread, until its first PDU is complete in the kernel's
receive buffer (read with MSG_PEEK, so pynetdicom later reads the socket from its first byte as
if it had accepted it itself); only then does it get its association threads. SO_RCVLOWAT makes
the socket readable only once the bytes still missing have arrived, so a peer sending a byte
every few seconds wakes nothing.

Limits, each counted and reported in one rate-limited WARNING line (and, through `on_report`,
in the association log and /metrics):

- `first_pdu_timeout`: a connection whose first PDU is not complete by then is closed;
- `per_address`: connections from one address waiting at once; the oldest of them goes first;
- `total`: connections waiting at once; the oldest goes first;
- the descriptor limit: when accept() fails for lack of descriptors, the oldest waiting
  connection is closed to make room (or, with none waiting, the listener rests 0.1 s).

With TLS the handshake is done here too, without blocking; the connection is handed over once it
is complete (the PDU inside TLS records cannot be peeked at). A worker parent that hands
connections to TLS workers (`complete_pdu=False`) waits only for the first byte.
"""

import collections
import contextlib
import errno
import logging
import resource
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from archive.dicom_bytes import A_ASSOCIATE_RQ, PDU_HEADER
from receiver.transport.pdu_guard import OTHER_PDU_LIMIT
from receiver.transport.proxy_protocol import (
    HEADER,
    MAX_LENGTH,
    ProxyHeaderInvalid,
    proxy_header_parse,
)

logger = logging.getLogger(__name__)

# Bytes of a first PDU that must have arrived before the connection is handed over: the whole
# A-ASSOCIATE-RQ up to this size (a few kilobytes in practice); beyond it, the start is proof
# enough of a live peer, and pynetdicom reads the rest.
PEEK_LIMIT = 64 * 1024
REPORT_INTERVAL = 10.0
TICK = 0.5
_ACCEPT_BATCH = 64

FIRST_PDU_TIMEOUT = "first PDU timeout"
PER_ADDRESS_LIMIT = "per-address limit"
TOTAL_LIMIT = "total limit"
DESCRIPTOR_LIMIT = "descriptor limit"
TLS_FAILED = "TLS handshake failed"
PROXY_INVALID = "PROXY header invalid"
DROP_REASONS = (
    FIRST_PDU_TIMEOUT,
    PER_ADDRESS_LIMIT,
    TOTAL_LIMIT,
    DESCRIPTOR_LIMIT,
    TLS_FAILED,
    PROXY_INVALID,
)

Report = Callable[[dict[str, int], collections.Counter[str], float], None]


@dataclass(frozen=True)
class LobbyLimits:
    first_pdu_timeout: float = 10.0
    per_address: int = 50
    total: int = 1000


def descriptor_limit_raise() -> int:
    """Raise the soft limit on open files to the hard one (once per process, inherited by
    workers); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("Cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
            return soft
        logger.info("Open file limit raised from %d to %d", soft, hard)
        return hard
    return soft


def total_bounded(total: int) -> int:
    """The total cap, kept well inside the open file limit: each waiting connection is one
    descriptor, and associations, files and the database need theirs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return total
    room = max(16, (soft - 256) // 2)
    if total > room:
        logger.warning(
            "server.max_waiting_connections %d lowered to %d: the open file limit is %d",
            total,
            room,
            soft,
        )
    return min(total, room)


@dataclass
class _Waiting:
    sock: socket.socket
    host: str
    address: Any
    deadline: float
    handshaking: bool = False
    # From a trusted proxy: its PROXY v2 header comes first (receiver.transport.proxy_protocol).
    proxied: bool = False


@dataclass
class DropCounter:
    """Dropped connections since the last report: one WARNING line per REPORT_INTERVAL."""

    where: str
    on_report: Report | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    hosts: collections.Counter[str] = field(default_factory=collections.Counter)
    since: float = 0.0
    last_report: float = 0.0

    def count(self, reason: str, host: str) -> None:
        if not self.counts:
            self.since = time.time()
        self.counts[reason] += 1
        self.hosts[host] += 1

    def flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.counts or (not force and now - self.last_report < REPORT_INTERVAL):
            return
        counts, hosts, since = dict(self.counts), self.hosts, self.since
        self.counts, self.hosts = collections.Counter(), collections.Counter()
        self.last_report = now
        busiest = ", ".join(f"{host} ({n})" for host, n in hosts.most_common(3))
        logger.warning(
            "%s: dropped %d connection(s) before association in %.0f s (%s); from %s",
            self.where,
            sum(counts.values()),
            time.time() - since,
            ", ".join(f"{reason}: {n}" for reason, n in counts.items()),
            busiest,
        )
        if self.on_report is not None:
            try:
                self.on_report(counts, hosts, since)
            except Exception:
                logger.exception("Recording dropped connections failed")


class Lobby:
    """One selector holding connections until their first PDU is complete, then handing each to
    `deliver(sock, address)` (blocking, as accept() would have returned it)."""

    def __init__(
        self,
        *,
        deliver: Callable[[socket.socket, Any], None],
        limits: LobbyLimits,
        drops: DropCounter,
        tls: ssl.SSLContext | None = None,
        complete_pdu: bool = True,
        on_tick: Callable[[], None] | None = None,
        proxies: Callable[[str], bool] | None = None,
    ) -> None:
        self.deliver = deliver
        self.proxies = proxies
        self.limits = limits
        self.total = total_bounded(limits.total)
        self.drops = drops
        self.tls = tls
        self.complete_pdu = complete_pdu
        self.on_tick = on_tick
        self.selector = selectors.DefaultSelector()
        self.waiting: dict[int, _Waiting] = {}  # by descriptor, oldest first
        self.by_host: dict[str, dict[int, None]] = collections.defaultdict(dict)
        self.listeners: list[socket.socket] = []
        self._resting_until = 0.0
        self._peek = bytearray(PEEK_LIMIT)
        self._added: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self.selector.register(self._wake_read, selectors.EVENT_READ, self._woken)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- sources -----------------------------------------------------------------------------

    def listen(self, listener: socket.socket) -> None:
        """Accept connections from `listener` (a listening socket) in the lobby's thread."""
        listener.setblocking(False)
        self.listeners.append(listener)
        self.selector.register(listener, selectors.EVENT_READ, self._accept)

    def add(self, sock: socket.socket, address: Any) -> None:
        """Hold a connection accepted elsewhere (any thread)."""
        self._added.append((sock, address))
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    # --- running -----------------------------------------------------------------------------

    def start(self, name: str = "lobby") -> None:
        self._thread = threading.Thread(target=self.serve, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every waiting connection and the lobby's own descriptors."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def serve(self) -> None:
        try:
            while not self._stop.is_set():
                timeout = TICK
                if self.waiting:
                    oldest = next(iter(self.waiting.values()))
                    timeout = max(0.0, min(TICK, oldest.deadline - time.monotonic()))
                for key, events in self.selector.select(timeout):
                    key.data(key.fileobj, events)
                self._expire()
                self._rest_end()
                self.drops.flush()
                if self.on_tick is not None:
                    self.on_tick()
        finally:
            self._close()

    def _close(self) -> None:
        for entry in list(self.waiting.values()):
            self._forget(entry)
            entry.sock.close()
        while self._added:
            self._added.popleft()[0].close()
        self.drops.flush(force=True)
        self.selector.close()
        self._wake_read.close()
        self._wake_write.close()

    # --- events ------------------------------------------------------------------------------

    def _woken(self, sock: socket.socket, events: int) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        while self._added:
            self._admit(*self._added.popleft())

    def _accept(self, listener: socket.socket, events: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors(listener)
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue
                if listener.fileno() < 0:
                    return  # closed by stop()
                logger.warning("accept failed: %s", exc)
                return
            self._admit(sock, address)

    def _out_of_descriptors(self, listener: socket.socket) -> None:
        if self.waiting:
            oldest = next(iter(self.waiting.values()))
            self._drop(oldest, DESCRIPTOR_LIMIT)
            return
        # Nothing of ours to close: the connection stays in the backlog; try again shortly.
        self.drops.count(DESCRIPTOR_LIMIT, "?")
        self._resting_until = time.monotonic() + 0.1
        for sock in self.listeners:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)

    def _rest_end(self) -> None:
        if self._resting_until and time.monotonic() >= self._resting_until:
            self._resting_until = 0.0
            for sock in self.listeners:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        same_host = self.by_host[host]
        while len(same_host) >= self.limits.per_address:
            self._drop(self.waiting[next(iter(same_host))], PER_ADDRESS_LIMIT)
        while len(self.waiting) >= self.total:
            self._drop(next(iter(self.waiting.values())), TOTAL_LIMIT)
        proxied = self.proxies is not None and self.proxies(host)
        try:
            sock.setblocking(False)
            if proxied:
                _lowat_set(sock, HEADER.size)  # TLS, if any, starts after the PROXY header
            elif self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            elif self.complete_pdu:
                _lowat_set(sock, PDU_HEADER.size)
        except OSError:
            sock.close()
            return
        entry = _Waiting(
            sock=sock,
            host=host,
            address=address,
            deadline=time.monotonic() + self.limits.first_pdu_timeout,
            handshaking=self.tls is not None and not proxied,
            proxied=proxied,
        )
        fd = sock.fileno()
        self.waiting[fd] = entry
        self.by_host[host][fd] = None
        self.selector.register(sock, selectors.EVENT_READ, self._readable)
        if entry.handshaking:
            self._handshake(entry)

    def _hand_over_plain(self, sock: socket.socket, address: Any) -> None:
        try:
            self.deliver(sock, address)
        except Exception:
            logger.exception("Handing over a connection failed")
            sock.close()

    def _readable(self, sock: socket.socket, events: int) -> None:
        entry = self.waiting.get(sock.fileno())
        if entry is None:
            return
        if entry.proxied:
            self._read_proxy_header(entry)
        elif entry.handshaking:
            self._handshake(entry)
        elif self.tls is not None:
            self._hand_over(entry)
        elif self.complete_pdu:
            self._peek_first_pdu(entry)
        else:
            self._peek_first_byte(entry)

    def _peek_first_byte(self, entry: _Waiting) -> None:
        try:
            count = entry.sock.recv_into(self._peek, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if count:
            self._hand_over(entry)
        else:
            self._forget(entry)
            entry.sock.close()

    def _peek_first_pdu(self, entry: _Waiting) -> None:
        sock = entry.sock
        try:
            count = sock.recv_into(self._peek, PEEK_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._forget(entry)
            sock.close()
            return
        if count == 0:  # the peer closed before saying anything: nothing to report
            self._forget(entry)
            sock.close()
            return
        if count >= PDU_HEADER.size:
            pdu_type, _, length = PDU_HEADER.unpack_from(self._peek)
            if pdu_type != A_ASSOCIATE_RQ or length > OTHER_PDU_LIMIT:
                # Not an association request, or too long for one: pynetdicom's state machine
                # and the PDU guard answer it as the standard says (A-ABORT).
                self._hand_over(entry)
                return
            needed = min(PDU_HEADER.size + length, PEEK_LIMIT)
            if count >= needed:
                self._hand_over(entry)
                return
        else:
            needed = PDU_HEADER.size
        if _peer_closed(sock):
            self._forget(entry)
            sock.close()
            return
        try:
            _lowat_set(sock, needed)
        except OSError:
            self._forget(entry)
            sock.close()

    def _read_proxy_header(self, entry: _Waiting) -> None:
        """Consume a trusted proxy's PROXY v2 header; the real peer's address replaces the
        proxy's for everything after (access control, limits, logs)."""
        sock = entry.sock
        try:
            count = sock.recv_into(self._peek, MAX_LENGTH, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if count == 0:
            self._forget(entry)
            sock.close()
            return
        try:
            parsed = proxy_header_parse(memoryview(self._peek)[:count])
        except ProxyHeaderInvalid as exc:
            logger.debug("Connection from proxy %s: %s", entry.host, exc)
            self._drop(entry, PROXY_INVALID)
            return
        if parsed is None:  # incomplete: wait for the rest of the header
            needed = HEADER.size
            if count >= HEADER.size:
                needed = HEADER.size + HEADER.unpack_from(self._peek)[3]
            if _peer_closed(sock):
                self._forget(entry)
                sock.close()
                return
            with contextlib.suppress(OSError):
                _lowat_set(sock, needed)
            return
        length, source = parsed
        try:
            sock.recv(length)  # already in the buffer: the header leaves the stream here
        except OSError:
            self._forget(entry)
            sock.close()
            return
        self._forget(entry)
        entry.proxied = False
        if source is not None:
            entry.host, entry.address = source[0], source
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                entry.sock = sock
                entry.handshaking = True
            elif self.complete_pdu:
                _lowat_set(sock, PDU_HEADER.size)
            else:
                _lowat_set(sock, 1)
        except OSError:
            sock.close()
            return
        fd = sock.fileno()
        self.waiting[fd] = entry
        self.by_host[entry.host][fd] = None
        self.selector.register(sock, selectors.EVENT_READ, self._readable)
        if entry.handshaking:
            self._handshake(entry)

    def _handshake(self, entry: _Waiting) -> None:
        sock = entry.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.selector.modify(sock, selectors.EVENT_READ, self._readable)
            return
        except ssl.SSLWantWriteError:
            self.selector.modify(sock, selectors.EVENT_WRITE, self._readable)
            return
        except (ssl.SSLError, OSError) as exc:
            logger.debug("TLS handshake with %s failed: %s", entry.host, exc)
            self._drop(entry, TLS_FAILED)
            return
        entry.handshaking = False
        self._hand_over(entry)

    def _hand_over(self, entry: _Waiting) -> None:
        self._forget(entry)
        sock = entry.sock
        try:
            if self.complete_pdu and self.tls is None:
                _lowat_set(sock, 1)
            sock.setblocking(True)
        except OSError:
            sock.close()
            return
        self._hand_over_plain(sock, entry.address)

    # --- bookkeeping -------------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.monotonic()
        while self.waiting:
            oldest = next(iter(self.waiting.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest, FIRST_PDU_TIMEOUT)

    def _drop(self, entry: _Waiting, reason: str) -> None:
        self._forget(entry)
        entry.sock.close()
        self.drops.count(reason, entry.host)

    def _forget(self, entry: _Waiting) -> None:
        fd = entry.sock.fileno()
        self.waiting.pop(fd, None)
        same_host = self.by_host.get(entry.host)
        if same_host is not None:
            same_host.pop(fd, None)
            if not same_host:
                del self.by_host[entry.host]
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(entry.sock)

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    def close_in_child(self) -> None:
        """In a process forked from the lobby's: drop the inherited copies of its descriptors,
        so that a connection the lobby closes is not kept open by the child."""
        for entry in self.waiting.values():
            entry.sock.close()
        for sock, _ in self._added:
            sock.close()
        self.selector.close()
        self._wake_read.close()
        self._wake_write.close()


def _lowat_set(sock: socket.socket, count: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has shut down its side (data it sent may still be unread)."""
    poller = select.poll()
    poller.register(sock.fileno(), _POLLRDHUP)
    return any(events & (_POLLRDHUP | _POLLHUP | _POLLERR) for _, events in poller.poll(0))


_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_POLLHUP = select.POLLHUP
_POLLERR = select.POLLERR
