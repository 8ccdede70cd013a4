"""Start-up, serving and graceful shutdown of the Storage SCP process."""

import errno
import logging
import signal
import socket
import ssl
import threading
from dataclasses import dataclass

from django.core.management import call_command
from django.db import DatabaseError, connections
from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from archive.exceptions import StorageFailure
from archive.services import IngestSettings
from archive.storage import Storage
from pacsproject.database import use_sqlite_index
from receiver import contexts, fastpath, handlers, pdu_guard, reactor, spool, workers
from receiver.config import ReceiverConfig
from receiver.live import LiveStatus
from receiver.scp import build_ae, tls_context
from routing.commitment import CommitmentDelivery
from routing.remote import remote_aes_sync

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The receiver cannot start; the message is one line for the operator."""


@dataclass
class RunningServer:
    ae: AE
    server: ThreadedAssociationServer
    config: ReceiverConfig
    live: LiveStatus
    commitment: CommitmentDelivery | None = None
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self, grace: float | None = None) -> None:
        """Refuse new associations, give established ones `grace` seconds, then abort the rest."""
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        workers.drain(self.ae, self.config.shutdown_grace if grace is None else grace)
        self.ae.shutdown()
        if self.commitment is not None:
            self.commitment.stop()
        self.live.stop()


def prepare(config: ReceiverConfig) -> IngestSettings:
    """Choose the database, bring its schema up to date and make the storage ready."""
    try:
        use_sqlite_index(config.index_db, wal_mode=config.wal_mode, synchronous=config.synchronous)
    except OSError as exc:
        raise StartupError(f"cannot create the index directory: {exc.strerror}") from None
    ingest = ingest_settings(config)
    try:
        ingest.storage.prepare()
    except StorageFailure as exc:
        raise StartupError(str(exc)) from None
    try:
        call_command("migrate", interactive=False, verbosity=0)
    except DatabaseError as exc:
        raise StartupError(f"index database not usable: {exc}") from None
    finally:
        connections.close_all()
    return ingest


def ingest_settings(config: ReceiverConfig) -> IngestSettings:
    """The archive's settings for this configuration."""
    storage = Storage(config.storage_dir, min_free_bytes=int(config.min_free_mb * 2**20))
    return IngestSettings(storage=storage, naming=config.naming, duplicates=config.duplicates)


def _cannot_listen(config: ReceiverConfig, exc: OSError) -> StartupError:
    address = f"{config.bind or '*'}:{config.port}"
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is already in use"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "the address is not one of this machine's"
    else:
        reason = exc.strerror or str(exc)
    return StartupError(f"cannot listen on {address}: {reason}")


def _check_tls(config: ReceiverConfig) -> ssl.SSLContext | None:
    try:
        return tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"TLS certificate or key not usable: {exc}") from None


# socketserver's default backlog of 5 drops connections when modalities connect in a burst;
# they then fail instead of being rejected cleanly over DICOM.
LISTEN_BACKLOG = 128


def start(config: ReceiverConfig, ingest: IngestSettings) -> RunningServer:
    """Open the listening socket and serve associations in background threads."""
    ThreadedAssociationServer.request_queue_size = LISTEN_BACKLOG
    live = LiveStatus(ae_title=config.ae_title, port=config.port, role="single process")
    commitment = commitment_start(config, ingest)
    ae, event_handlers = build_ae(config, ingest, live=live, commitment_wake=commitment.wake)
    spool.install(lambda: ingest.storage.incoming)
    pdu_guard.install()
    reactor.install(on_exit=handlers.association_ended)
    fastpath.install(on_thread_exit=handlers.close_database)
    contexts.install()
    ssl_context = _check_tls(config)
    live.start()  # before the first association, which records the process it runs in
    try:
        server = ae.start_server(
            (config.bind, config.port),
            block=False,
            evt_handlers=event_handlers,
            ssl_context=ssl_context,
        )
    except OSError as exc:
        live.stop()
        commitment.stop()
        raise _cannot_listen(config, exc) from None
    return RunningServer(ae=ae, server=server, config=config, live=live, commitment=commitment)


def commitment_start(config: ReceiverConfig, ingest: IngestSettings) -> CommitmentDelivery:
    """Write the configuration file's remote AEs to their table and start the Storage
    Commitment delivery loop (it sends reports left pending by an earlier run too)."""
    try:
        remote_aes_sync(entries=config.remote_aes)
    except DatabaseError as exc:
        raise StartupError(f"remote_aes: cannot write the remote AE table: {exc}") from None
    finally:
        connections.close_all()
    commitment = CommitmentDelivery(storage=ingest.storage, ae_title=config.ae_title)
    commitment.start()
    return commitment


def listen(config: ReceiverConfig) -> socket.socket:
    """The listening socket for worker processes (see receiver.workers)."""
    family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((config.bind, config.port))
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        raise _cannot_listen(config, exc) from None
    return listener


def run(config: ReceiverConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    ingest = prepare(config)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if config.workers > 1:
        _check_tls(config)
        listener = listen(config)
        logger.info("Storage SCP started: %s, %d workers", config.describe(), config.workers)
        commitment = commitment_start(config, ingest)
        try:
            workers.serve(config, ingest, listener, config.workers, stop)
        finally:
            commitment.stop()
    else:
        running = start(config, ingest)
        logger.info("Storage SCP started: %s", config.describe())
        while not stop.wait(1.0):
            pass
        logger.info(
            "Stopping: no new associations, %.0f s for those in progress", config.shutdown_grace
        )
        running.stop()
    ingest.storage.release()
    logger.info("Storage SCP stopped")
