"""Several receiver processes on one port: a parent accepts, workers serve.

The parent owns the listening socket and hands each accepted connection to the next worker in
turn over a Unix socket (SCM_RIGHTS). Round robin spreads the load evenly, where SO_REUSEPORT's
hash on loopback sent whole benchmarks to one process (docs/performance.md). Each worker runs
its own pynetdicom AE with the same handlers; the association limit is shared through a counter
in shared memory. SIGTERM to the parent stops accepting and passes the signal on; each worker
finishes its associations within the grace period and exits; the parent exits 0 when all have.
"""

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from archive.retention import RetentionLoop
from archive.services import IngestSettings, unflushed_repair, unflushed_watch_start
from receiver import announcements
from receiver.affinity import CorePinning
from receiver.config import ReceiverConfig
from receiver.connections import lobby_build
from receiver.limits import AssociationSlots
from receiver.live import LiveStatus
from receiver.scp import build_ae, heap_freeze, tls_context
from receiver.transport.lobby import Lobby
from routing.commitment import CommitmentDelivery

logger = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker(
    config: ReceiverConfig,
    ingest: IngestSettings,
    channel: socket.socket,
    counts: Any,
    cell: int,
    parent: int,
) -> None:
    """A worker's life: serve the connections the parent hands over until SIGTERM, or until
    the parent (process `parent`) has gone."""
    stopping = signals_own()
    connections.close_all()  # never share the parent's database connections
    pinning = CorePinning(cell=cell, workers=config.workers) if config.pin_workers else None
    slots = AssociationSlots(
        config.max_associations,
        shared=counts,
        cell=cell,
        on_count=pinning.count_changed if pinning is not None else None,
    )
    live = LiveStatus(
        ae_title=config.ae_title,
        port=config.port,
        role=f"worker {cell + 1}",
        on_beat=functools.partial(unflushed_repair, ingest.storage),
    )
    commitment, stop_loops = loops_start(config, ingest, retention=cell == 0)
    ae, event_handlers = build_ae(
        config, ingest, slots=slots, live=live, commitment_wake=commitment.wake
    )
    ssl_context = tls_context(config)
    # A server object to run associations with; it listens on nothing we use.
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=event_handlers)
    server.socket.close()
    # The parent hands over plain connections once their A-ASSOCIATE-RQ is complete; TLS ones
    # once their first byte arrived: their handshakes are done here, in a lobby of our own.
    lobby = None
    if ssl_context is not None:
        lobby = lobby_build(config, deliver=server.process_request, tls=ssl_context, proxy=False)
        lobby.start(name="lobby:tls")
    unflushed_watch_start()
    live.start()
    stop_announcements = announcements.announcements_start(config, storage=ingest.storage)
    heap_freeze()
    channel.settimeout(0.5)
    while not stopping.is_set():
        try:
            message, fds, _, _ = socket.recv_fds(channel, 256, 1)
        except TimeoutError:
            # A datagram channel tells nothing when its other end is gone: a parent killed
            # outright (SIGKILL, the OOM killer) shows only as a new parent process.
            if os.getppid() != parent:
                logger.error("The parent process %d has gone; stopping this worker", parent)
                break
            continue
        except OSError:
            break
        if not fds:
            break  # the parent has gone
        connection = socket.socket(fileno=fds[0])
        try:
            address = _address_received(message) or connection.getpeername()
        except OSError:
            connection.close()  # gone while being handed over
            continue
        if lobby is not None:
            lobby.add(connection, address)
        else:
            server.process_request(connection, address)
    if lobby is not None:
        lobby.stop()
    drain(ae, config.shutdown_grace)
    stop_announcements()
    stop_loops()
    live.stop()
    os._exit(0)


def signals_own() -> threading.Event:
    """A new worker's own signal handling: SIGTERM sets the returned event, SIGINT is ignored
    (Ctrl-C reaches the parent, which passes it on). Delivers the stop signals WorkerPool held
    back across the fork."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return stopping


def loops_start(
    config: ReceiverConfig, ingest: IngestSettings, *, retention: bool
) -> tuple[CommitmentDelivery, Callable[[], None]]:
    """Start a worker's loops that use the storage: Storage Commitment delivery in every
    worker (the requester's association, where its report may go, is in the worker that
    received the request; routing.commitment claims each row), and with `retention` the
    retention loop (in the first worker only: one pass at a time per node). None runs in the
    parent, which forks a worker again when one dies: after start-up it never uses the
    storage (obstore's runtime does not survive a fork). Returns the delivery (to wake) and a
    function that stops them."""
    commitment = CommitmentDelivery(storage=ingest.storage, ae_title=config.ae_title)
    commitment.start()
    retention_loop = None
    if retention and config.retention is not None:
        retention_loop = RetentionLoop(storage=ingest.storage, policy=config.retention)
        retention_loop.start()

    def stop() -> None:
        commitment.stop()
        if retention_loop is not None:
            retention_loop.stop()

    return commitment, stop


def _negotiating(assoc: Any) -> bool:
    """Neither established yet nor ended (released, aborted or rejected: its thread is going)."""
    return not (assoc.is_established or assoc.is_released or assoc.is_aborted or assoc.is_rejected)


# Seconds an association whose A-ASSOCIATE-RQ was complete has, at shutdown, to become
# established (negotiation is our own work: the access decision, a few index reads).
NEGOTIATION_WAIT = 2.0


def drain(ae: Any, grace: float) -> None:
    """Give established associations `grace` seconds to end, then abort what remains.

    An association still negotiating gets NEGOTIATION_WAIT seconds to become established, then
    is aborted: its A-ASSOCIATE-RQ is complete (the lobby hands over no other), so it is ours
    to answer, and pynetdicom sends the A-ASSOCIATE-AC before it marks the association
    established: aborted at once, a peer whose AC had just left would lose the association it
    was told it has. A silent port probe never gets this far (the lobby closes it).
    """
    start = time.monotonic()
    deadline = start + grace
    negotiated_by = start + min(grace, NEGOTIATION_WAIT)
    while time.monotonic() < deadline:
        established = [a for a in ae.active_associations if a.is_established]
        negotiating = [a for a in ae.active_associations if _negotiating(a)]
        if negotiating and time.monotonic() >= negotiated_by:
            for assoc in negotiating:
                assoc.abort()
            negotiating = []
        if not established and not negotiating:
            return
        time.sleep(0.05)
    remaining = ae.active_associations
    for assoc in remaining:
        assoc.receiver_abort_reason = f"shutdown: still open after the {grace:g} s grace period"
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
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        self.inherited = inherited  # the parent's sockets, closed in each worker
        self.after_fork = after_fork  # closes the rest of what a worker must not keep open
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
        parent = os.getpid()
        # Until the worker has its own handlers, a SIGTERM would run the parent's (copied at
        # fork), which sets the parent's stop flag in the child: the worker would miss its stop
        # and the parent wait for it. Blocked, the signal waits for the worker's handler.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
        if pid == 0:
            parent_end.close()
            for inherited in self.inherited:
                inherited.close()
            if self.after_fork is not None:
                self.after_fork()
            try:
                _worker(self.config, self.ingest, child_end, self.counts, slot, parent)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child_end.close()
        self.workers[slot] = (pid, parent_end)
        self.inherited.append(parent_end)

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def hand_over(self, connection: socket.socket, address: Any = None) -> None:
        """Give an accepted connection to the next live worker, with the peer's address when
        it is not the socket's own (a PROXY protocol header named it)."""
        message = b"c"
        with contextlib.suppress(OSError):  # a peer gone already: its worker finds out
            if isinstance(address, tuple) and address[:2] != connection.getpeername()[:2]:
                message += f"{address[0]} {address[1]}".encode()
        for _ in range(self.count):
            slot = self._next
            self._next = (self._next + 1) % self.count
            pid, channel = self.workers[slot]
            try:
                socket.send_fds(channel, [message], [connection.fileno()])
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
        # The grace period, then the workers' loops: a Storage Commitment round may be
        # sending a report (routing.commitment: stop() waits up to 35 s).
        deadline = time.monotonic() + self.config.shutdown_grace + 40
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


def _address_received(message: bytes) -> tuple[str, int] | None:
    """The peer address a parent sent with a connection (after "c"), if any."""
    host, _, port = message[1:].decode(errors="replace").partition(" ")
    return (host, int(port)) if host and port.isdigit() else None


def serve(
    config: ReceiverConfig,
    ingest: IngestSettings,
    listener: socket.socket,
    count: int,
    stop: threading.Event,
) -> None:
    """Hand the connections `listener` accepts to `count` workers until `stop` is set.

    The parent's lobby (receiver.transport.lobby) holds each connection until its
    A-ASSOCIATE-RQ is complete (with TLS: until its first byte), so that idle and slow
    connections cost the workers nothing.
    """
    lobby: Lobby | None = None

    def after_fork() -> None:
        if lobby is not None:  # a worker started again: not the waiting connections' keeper
            lobby.close_in_child()

    pool = WorkerPool(config, ingest, count, inherited=[listener], after_fork=after_fork)
    pool.start()
    last_reap = 0.0

    def deliver(connection: socket.socket, address: Any) -> None:
        with connection:
            pool.hand_over(connection, address)

    def tick() -> None:
        nonlocal last_reap
        if stop.is_set():
            assert lobby is not None
            lobby.stop()
        elif time.monotonic() - last_reap >= 0.5:
            last_reap = time.monotonic()
            pool.reap()

    lobby = lobby_build(
        config, deliver=deliver, tls=None, complete_pdu=not config.tls, on_tick=tick
    )
    lobby.listen(listener)
    try:
        lobby.serve()
    finally:
        listener.close()
        pool.stop()
