"""Several receiver processes on one port: a parent accepts, workers serve.

The parent owns the listening socket and hands each accepted connection to the next worker in
turn over a Unix socket (SCM_RIGHTS). Round robin spreads the load evenly, where SO_REUSEPORT's
hash on loopback sent whole benchmarks to one process (PERFORMANCE-NOTES.md). Each worker runs
its own pynetdicom AE with the same handlers; the association limit is shared through a counter
in shared memory. SIGTERM to the parent stops accepting and passes the signal on; each worker
finishes its associations within the grace period and exits; the parent exits 0 when all have.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from django.db import connections

from archive.services import IngestSettings
from receiver import announcements, contexts, fastpath, handlers, pdu_guard, reactor, spool
from receiver.config import ReceiverConfig
from receiver.limits import AssociationSlots
from receiver.live import LiveStatus
from receiver.scp import build_ae, tls_context

logger = logging.getLogger(__name__)


def _worker(
    config: ReceiverConfig, ingest: IngestSettings, channel: socket.socket, counts: Any, cell: int
) -> None:
    """A worker's life: serve the connections the parent hands over until SIGTERM."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which passes it on
    connections.close_all()  # never share the parent's database connections
    slots = AssociationSlots(config.max_associations, shared=counts, cell=cell)
    live = LiveStatus(ae_title=config.ae_title, port=config.port, role=f"worker {cell + 1}")
    ae, event_handlers = build_ae(config, ingest, slots=slots, live=live)
    spool.install(lambda: ingest.storage.incoming)
    pdu_guard.install()
    reactor.install(on_exit=handlers.association_ended)
    fastpath.install(on_thread_exit=handlers.close_database)
    contexts.install()
    ssl_context = tls_context(config)
    # A server object to run associations with; it listens on nothing we use.
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=event_handlers)
    server.socket.close()
    live.start()
    stop_announcements = announcements.announcements_start(config)
    channel.settimeout(0.5)
    while not stopping.is_set():
        try:
            _, fds, _, _ = socket.recv_fds(channel, 16, 1)
        except TimeoutError:
            continue
        except OSError:
            break
        if not fds:
            break  # the parent has gone
        connection = socket.socket(fileno=fds[0])
        try:
            address = connection.getpeername()
            if ssl_context is not None:
                # A silent client must not hold this worker's hand-over loop for long.
                connection.settimeout(config.acse_timeout)
                connection = ssl_context.wrap_socket(connection, server_side=True)
                connection.settimeout(None)
        except OSError as exc:
            logger.warning("Dropped a connection before association: %s", exc)
            connection.close()
            continue
        server.process_request(connection, address)
    drain(ae, config.shutdown_grace)
    stop_announcements()
    live.stop()
    os._exit(0)


def drain(ae: Any, grace: float) -> None:
    """Give established associations `grace` seconds to end, then abort what remains.

    Connections that never completed negotiation are dropped at once: a port probe that
    connected and went silent would otherwise hold shutdown for the ACSE timeout.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        established = [a for a in ae.active_associations if a.is_established]
        for assoc in ae.active_associations:
            if assoc not in established:
                assoc.abort()
        if not established:
            return
        time.sleep(0.05)
    remaining = ae.active_associations
    for assoc in remaining:
        assoc.abort()
    if remaining:
        logger.warning("Aborted %d association(s) open after the grace period", len(remaining))


class WorkerPool:
    """The parent's side: workers, their channels, and the accept loop."""

    def __init__(
        self,
        config: ReceiverConfig,
        ingest: IngestSettings,
        count: int,
        inherited: list[socket.socket],
    ) -> None:
        self.inherited = inherited  # the parent's sockets, closed in each worker
        self.config = config
        self.ingest = ingest
        self.count = count
        self.counts = multiprocessing.Array("i", count)  # associations per worker
        self.workers: dict[int, tuple[int, socket.socket]] = {}  # slot → (pid, channel)
        self._next = 0

    def _spawn(self, slot: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with self.counts.get_lock():
            self.counts[slot] = 0  # a dead predecessor's associations are gone with it
        connections.close_all()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            for inherited in self.inherited:
                inherited.close()
            try:
                _worker(self.config, self.ingest, child_end, self.counts, slot)
            finally:
                os._exit(1)
        child_end.close()
        self.workers[slot] = (pid, parent_end)
        self.inherited.append(parent_end)

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def hand_over(self, connection: socket.socket) -> None:
        """Give an accepted connection to the next live worker."""
        for _ in range(self.count):
            slot = self._next
            self._next = (self._next + 1) % self.count
            pid, channel = self.workers[slot]
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
                return
            except OSError:
                logger.error("Worker %d is not answering; starting a new one", pid)
                self._replace(slot)
        logger.error("No worker took the connection; closing it")

    def _replace(self, slot: int) -> None:
        pid, channel = self.workers[slot]
        channel.close()
        self.inherited.remove(channel)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._spawn(slot)

    def reap(self) -> None:
        """Replace workers that died unexpectedly."""
        for slot, (pid, _) in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                logger.error("Worker %d exited (status %d); starting a new one", pid, status)
                channel = self.workers[slot][1]
                channel.close()
                self.inherited.remove(channel)
                self._spawn(slot)

    def stop(self) -> None:
        """Pass SIGTERM on and wait for every worker to finish its associations."""
        for pid, channel in self.workers.values():
            channel.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace + 10
        for pid, _ in self.workers.values():
            while time.monotonic() < deadline:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)


def serve(
    config: ReceiverConfig,
    ingest: IngestSettings,
    listener: socket.socket,
    count: int,
    stop: threading.Event,
) -> None:
    """Hand the connections `listener` accepts to `count` workers until `stop` is set."""
    pool = WorkerPool(config, ingest, count, inherited=[listener])
    pool.start()
    listener.settimeout(0.5)
    try:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                pool.reap()
                continue
            except OSError as exc:
                if stop.is_set():
                    break
                logger.warning("accept failed: %s", exc)
                continue
            with connection:
                pool.hand_over(connection)
    finally:
        listener.close()
        pool.stop()
