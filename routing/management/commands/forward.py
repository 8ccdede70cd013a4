"""`python manage.py forward [--watch]`: deliver the forwarding queue from this process."""

import signal
import ssl
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.storage import Storage
from pacsproject.database import use_database_url, use_sqlite_index
from receiver.config import ConfigError, resolve
from routing.forwarding import LEASE, ForwardingWorker, forward_once, forward_queue_summary
from routing.scu import client_tls_configure


class Command(BaseCommand):
    help = (
        "Send what the forwarding queue holds: until nothing is due, or with --watch until "
        "Ctrl-C/SIGTERM. Safe beside runscp and other forwarders: each row is claimed by one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--watch", action="store_true", help="keep forwarding until stopped")
        parser.add_argument("--config", type=Path, help="YAML configuration file (DICOM_CONFIG)")
        parser.add_argument("--index-db", type=Path, help="SQLite index file")
        parser.add_argument("--ae-title", help="our calling AE title (the receiver's)")
        parser.add_argument(
            "--lease",
            type=float,
            default=LEASE,
            help=f"seconds a claimed batch is this process's before others may take it ({LEASE:g})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = resolve(
                {"ae_title": options["ae_title"], "index_db": options["index_db"]},
                options["config"] or settings.DICOM_CONFIG,
            )
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        # The index the receiver uses, chosen as runscp chooses it.
        if config.index_db is None and config.database_url is not None:
            use_database_url(config.database_url)
        use_sqlite_index(config.index_db, wal_mode=config.wal_mode, synchronous=config.synchronous)
        if options["lease"] <= 0:
            raise CommandError("--lease: must be a positive number of seconds")
        try:
            # The receiver's certificate and CA certificates, as runscp uses them.
            client_tls_configure(
                certificate=config.tls_certificate,
                private_key=config.tls_private_key,
                ca_certificates=config.tls_ca_certificates,
            )
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"TLS certificate or key not usable: {exc}") from None
        storage = Storage(config.storage_dir)
        if not options["watch"]:
            sent = forward_once(
                storage=storage,
                ae_title=config.ae_title,
                timeout=config.dimse_timeout,
                lease=options["lease"],
            )
            self.stdout.write(f"{sent} instance(s) forwarded")
            for row in forward_queue_summary():
                self.stdout.write(
                    f"{row.destination}: {row.depth} waiting, {row.dead} dead"
                    + (f", last error: {row.last_error}" if row.last_error else "")
                )
            return
        worker = ForwardingWorker(
            storage=storage,
            ae_title=config.ae_title,
            timeout=config.dimse_timeout,
            lease=options["lease"],
        )
        signal.signal(signal.SIGTERM, lambda signum, frame: worker.request_stop())
        signal.signal(signal.SIGINT, lambda signum, frame: worker.request_stop())
        self.stdout.write("Forwarding (Ctrl-C stops)")
        self.stdout.flush()
        worker.run_forever()
