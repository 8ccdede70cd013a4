"""Start-up, serving and graceful shutdown of the Storage SCP process."""

import errno
import functools
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.db import DatabaseError, connections
from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from archive.exceptions import StorageFailure, StorageMismatch
from archive.retention import RetentionLoop, quota_for
from archive.services import IngestSettings, unflushed_repair, unflushed_watch_start
from archive.storage import Storage
from archive.storage_identity import storage_identity_bind
from pacsproject.database import use_database_url, use_sqlite_index
from receiver import announcements, workers
from receiver.checks import checking
from receiver.config import ReceiverConfig, database_label
from receiver.connections import lobby_build
from receiver.live import LiveStatus
from receiver.scp import build_ae, heap_freeze, tls_context
from receiver.transport.lobby import Lobby, descriptor_limit_raise
from routing.commitment import CommitmentDelivery
from routing.forwarding import RuleInvalid, forwarding_rules_sync
from routing.remote import remote_aes_sync
from routing.scu import client_tls_configure

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The receiver cannot start; the message is one line for the operator."""


@dataclass
class RunningServer:
    ae: AE
    server: ThreadedAssociationServer
    config: ReceiverConfig
    live: LiveStatus
    lobby: Lobby
    commitment: CommitmentDelivery | None = None
    stopped: bool = False
    stop_announcements: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self, grace: float | None = None) -> None:
        """Refuse new associations, give established ones `grace` seconds, then abort the rest."""
        if self.stopped:
            return
        self.stopped = True
        self.lobby.stop()  # no new associations; connections still waiting are closed
        self.server.server_close()
        workers.drain(self.ae, self.config.shutdown_grace if grace is None else grace)
        self.ae.shutdown()
        if self.stop_announcements is not None:
            self.stop_announcements()
        if self.commitment is not None:
            self.commitment.stop()
        self.live.stop()


def prepare(config: ReceiverConfig) -> tuple[IngestSettings, str]:
    """Choose the database, run the system checks, bring the schema up to date and make the
    storage ready; return the archive's settings and what the index said of the storage (logged
    once listening)."""
    try:
        if config.index_db is None and config.database_url is not None:
            use_database_url(config.database_url)
        use_sqlite_index(config.index_db, wal_mode=config.wal_mode, synchronous=config.synchronous)
    except OSError as exc:
        raise StartupError(f"cannot create the index directory: {exc.strerror}") from None
    system_check(config)
    try:
        ingest = ingest_settings(config)
        ingest.storage.prepare()
    except StorageFailure as exc:
        raise StartupError(str(exc)) from None
    try:
        call_command("migrate", interactive=False, verbosity=0)
        found = storage_identity_bind(
            storage=ingest.storage, index_label=str(config.index_db or database_label())
        )
    except DatabaseError as exc:
        raise StartupError(f"index database not usable: {exc}") from None
    except (StorageMismatch, StorageFailure) as exc:
        raise StartupError(str(exc)) from None
    finally:
        connections.close_all()
    return ingest, found[:1].upper() + found[1:]


def system_check(config: ReceiverConfig) -> None:
    """Run Django's system checks and ours (receiver.checks) against this configuration and
    the chosen database: warnings are logged, errors stop the start in one line."""
    with checking(config):
        try:
            messages = checks.run_checks(databases=list(settings.DATABASES))
        finally:
            connections.close_all()
    errors = []
    for message in messages:
        if message.is_silenced():
            continue
        if message.is_serious():
            errors.append(f"{message.msg} ({message.id})")
        else:
            logger.warning("System check %s: %s", message.id, message.msg)
    if errors:
        raise StartupError("; ".join(errors))


def ingest_settings(config: ReceiverConfig) -> IngestSettings:
    """The archive's settings for this configuration."""
    storage = Storage(config.storage_dir, min_free_bytes=int(config.min_free_mb * 2**20))
    return IngestSettings(
        storage=storage,
        naming=config.naming,
        duplicates=config.duplicates,
        strict_uids=config.strict_uids,
        quota=quota_for(config.retention),
        index_flush=config.synchronous == "full",
    )


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
    """The server's TLS context; also makes the same certificate, key and CA certificates our
    side of outgoing TLS associations (forwarding, C-MOVE, Storage Commitment)."""
    try:
        client_tls_configure(
            certificate=config.tls_certificate,
            private_key=config.tls_private_key,
            ca_certificates=config.tls_ca_certificates,
        )
        return tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"TLS certificate or key not usable: {exc}") from None


# socketserver's default backlog of 5 drops connections when modalities connect in a burst;
# they then fail instead of being rejected cleanly over DICOM. Under a connection flood the
# lobby (receiver.transport.lobby) accepts thousands a second, but a pause of a few
# milliseconds (a collection, a busy core) would fill a queue of 128, and an honest sender's
# SYN, dropped, is retried only a second later. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


def start(config: ReceiverConfig, ingest: IngestSettings) -> RunningServer:
    """Open the listening socket and serve associations in background threads.

    Connections are accepted by a lobby (receiver.transport.lobby), which holds them in one
    thread until their A-ASSOCIATE-RQ is complete (and does the TLS handshake), then hands them
    to pynetdicom's server, which starts the association's threads.
    """
    descriptor_limit_raise()
    ThreadedAssociationServer.request_queue_size = LISTEN_BACKLOG
    live = LiveStatus(
        ae_title=config.ae_title,
        port=config.port,
        role="single process",
        on_beat=functools.partial(unflushed_repair, ingest.storage),
    )
    commitment = commitment_start(config, ingest)
    ae, event_handlers = build_ae(config, ingest, live=live, commitment_wake=commitment.wake)
    ssl_context = _check_tls(config)
    unflushed_watch_start()
    live.start()  # before the first association, which records the process it runs in
    try:
        # Not in ae._servers and never serve_forever()'d: the lobby accepts (TLS included).
        server = ae.make_server(
            (config.bind, config.port),
            evt_handlers=event_handlers,
            server_class=ThreadedAssociationServer,
        )
    except OSError as exc:
        live.stop(failed=True)
        commitment.stop()
        raise _cannot_listen(config, exc) from None

    def deliver(connection: socket.socket, address: Any) -> None:
        server.process_request(connection, address)
        # What serve_forever() would do after each request: pynetdicom collects the garbage of
        # ended associations every 60 connections there.
        server.service_actions()

    lobby = lobby_build(config, deliver=deliver, tls=ssl_context)
    lobby.listen(server.socket)
    lobby.start(name=f"lobby:{config.port}")
    return RunningServer(
        ae=ae,
        server=server,
        config=config,
        live=live,
        lobby=lobby,
        stop_announcements=announcements.announcements_start(config, storage=ingest.storage),
        commitment=commitment,
    )


def commitment_start(config: ReceiverConfig, ingest: IngestSettings) -> CommitmentDelivery:
    """Write the configuration file's remote AEs to their table and start the Storage
    Commitment delivery loop (it sends reports left pending by an earlier run too)."""
    tables_sync(config)
    commitment = CommitmentDelivery(storage=ingest.storage, ae_title=config.ae_title)
    commitment.start()
    return commitment


def tables_sync(config: ReceiverConfig) -> None:
    """Write the configuration file's remote AEs and forwarding rules to their tables."""
    try:
        remote_aes_sync(entries=config.remote_aes)
    except DatabaseError as exc:
        raise StartupError(f"remote_aes: cannot write the remote AE table: {exc}") from None
    try:
        forwarding_rules_sync(entries=config.forwarding)
    except RuleInvalid as exc:
        raise StartupError(str(exc)) from None
    except DatabaseError as exc:
        raise StartupError(f"forwarding: cannot write the rules: {exc}") from None
    finally:
        connections.close_all()


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
    ingest, storage_found = prepare(config)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    descriptor_limit_raise()
    retention = None
    if config.workers > 1:
        _check_tls(config)
        listener = listen(config)
        logger.info("Storage SCP started: %s, %d workers", config.describe(), config.workers)
        logger.info("%s", storage_found)
        tables_sync(config)
        # Storage Commitment delivery and retention run in the workers (workers.loops_start):
        # once they are forked, the parent never uses the storage.
        workers.serve(config, ingest, listener, config.workers, stop)
    else:
        if config.retention is not None:  # one pass at a time per node
            retention = RetentionLoop(storage=ingest.storage, policy=config.retention)
            retention.start()
        running = start(config, ingest)
        heap_freeze()
        logger.info("Storage SCP started: %s", config.describe())
        logger.info("%s", storage_found)
        while not stop.wait(1.0):
            pass
        logger.info(
            "Stopping: no new associations, %.0f s for those in progress", config.shutdown_grace
        )
        running.stop()
    if retention is not None:
        retention.stop()
    ingest.storage.release()
    logger.info("Storage SCP stopped")
