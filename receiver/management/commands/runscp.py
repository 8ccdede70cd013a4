"""`python manage.py runscp PORT AE_TITLE`: run the DICOM Storage SCP until Ctrl-C or SIGTERM."""

import argparse
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.naming import NAMING_ALIASES, NAMING_SCHEMES
from archive.services import DUPLICATE_POLICIES
from receiver import server
from receiver.config import ConfigError, resolve

# Command-line options that map one to one onto configuration fields.
_FIELDS = [
    "port",
    "ae_title",
    "storage_dir",
    "index_db",
    "naming",
    "bind",
    "duplicates",
    "max_associations",
    "workers",
    "max_pdu",
    "min_free_mb",
    "stable_age",
    "series_stable_age",
    "study_stable_age",
    "announce_stable",
    "shutdown_grace",
    "acse_timeout",
    "dimse_timeout",
    "network_timeout",
    "tls_certificate",
    "tls_private_key",
    "tls_ca_certificates",
]
# On/off switches: given means on, absent means "not said here" (the file or default decides).
_SWITCHES = [
    "require_called_ae_title",
    "require_known_ae",
    "tls_require_client_certificate",
    "strict_uids",
]


class Command(BaseCommand):
    help = "Run the DICOM Storage SCP: receive instances, store them and index them."
    # Django's and the receiver's checks run once --index-db has chosen the database and the
    # configuration is known (receiver.server.prepare).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("port", nargs="?", type=int, help="TCP port to listen on (11112)")
        parser.add_argument("ae_title", nargs="?", help="our AE title (MY_PACS)")
        parser.add_argument(
            "--config",
            type=Path,
            help="YAML configuration file (DICOM_CONFIG); `manage.py --config FILE` names it "
            "for every command",
        )
        parser.add_argument(
            "--check-config",
            action="store_true",
            help="validate, print the effective configuration and where each value came from",
        )
        parser.add_argument("--storage-dir", help="where files are written (DICOM_STORAGE_DIR)")
        parser.add_argument("--index-db", help="SQLite index file; created if missing")
        parser.add_argument("--naming", choices=[*NAMING_SCHEMES, *NAMING_ALIASES])
        parser.add_argument("--bind", help="address to listen on (all interfaces)")
        parser.add_argument(
            "--duplicates",
            choices=DUPLICATE_POLICIES,
            help="an instance received again with other content: keep the first copy, "
            "overwrite it, or reject the new one",
        )
        parser.add_argument(
            "--strict-uids",
            action="store_true",
            default=None,
            help="refuse (0xC000) instances whose UIDs break PS3.5 instead of storing them",
        )
        parser.add_argument(
            "--accept",
            metavar="CLASSES",
            help='accepted storage classes: modalities, names or UIDs, e.g. "CT,MR,US"',
        )
        parser.add_argument("--max-associations", type=int, help="concurrent associations (10)")
        parser.add_argument(
            "--workers",
            type=_workers,
            help="receiver processes sharing the port: a number, or auto (one per core, up to 4)",
        )
        parser.add_argument("--max-pdu", type=int, help="maximum PDU length we receive (131072)")
        parser.add_argument("--min-free-mb", type=float, help="refuse C-STOREs below this")
        parser.add_argument(
            "--stable-age",
            type=float,
            help="seconds without a new instance before a series/study is stable (60)",
        )
        parser.add_argument("--series-stable-age", type=float, help="for series (--stable-age)")
        parser.add_argument("--study-stable-age", type=float, help="for studies (--stable-age)")
        parser.add_argument(
            "--no-announce-stable",
            dest="announce_stable",
            action="store_false",
            default=None,
            help="run no stability sweeper here (another process runs announce_stable --watch)",
        )
        parser.add_argument("--shutdown-grace", type=float, help="seconds for open associations")
        parser.add_argument("--acse-timeout", type=float)
        parser.add_argument("--dimse-timeout", type=float)
        parser.add_argument("--network-timeout", type=float)
        parser.add_argument("--require-called-ae-title", action="store_true", default=None)
        parser.add_argument("--require-known-ae", action="store_true", default=None)
        parser.add_argument("--tls-certificate")
        parser.add_argument("--tls-private-key")
        parser.add_argument("--tls-ca-certificates")
        parser.add_argument("--tls-require-client-certificate", action="store_true", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        command_line = {name: options[name] for name in [*_FIELDS, *_SWITCHES]}
        command_line["accepted_sop_classes"] = options["accept"]
        try:
            config = resolve(command_line, options["config"] or settings.DICOM_CONFIG)
            if options["check_config"]:
                self.stdout.write(config.report())
                self.stdout.write("configuration is valid")
                return
            server.run(config)
        except (ConfigError, server.StartupError) as exc:
            raise CommandError(str(exc)) from None


def _workers(text: str) -> int | str:
    """`--workers`: a number of processes, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
