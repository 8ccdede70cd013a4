"""`python manage.py runscp PORT AE_TITLE`: run the DICOM Storage SCP until Ctrl-C or SIGTERM."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.naming import NAMING_ALIASES, NAMING_SCHEMES
from archive.services import DUPLICATE_POLICIES
from receiver import server
from receiver.config import ConfigError, resolve


class Command(BaseCommand):
    help = "Run the DICOM Storage SCP: receive instances, store them and index them."
    # Checks run after --index-db has chosen the database (see server.run).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("port", nargs="?", type=int, help="TCP port to listen on (11112)")
        parser.add_argument("ae_title", nargs="?", help="our AE title (PACS_RECEIVER)")
        parser.add_argument("--storage-dir", help="where files are written (DICOM_STORAGE_DIR)")
        parser.add_argument("--index-db", help="SQLite index file; created if missing")
        parser.add_argument(
            "--naming", choices=[*NAMING_SCHEMES, *NAMING_ALIASES], help="file layout"
        )
        parser.add_argument("--bind", help="address to listen on (all interfaces)")
        parser.add_argument(
            "--duplicates",
            choices=DUPLICATE_POLICIES,
            help="an instance received again with other content: keep the first copy, "
            "overwrite it, or reject the new one",
        )
        parser.add_argument("--max-associations", type=int, help="concurrent associations (10)")
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            help="seconds in-flight associations get to finish on SIGTERM (30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = resolve(
                {
                    "port": options["port"],
                    "ae_title": options["ae_title"],
                    "storage_dir": options["storage_dir"],
                    "index_db": options["index_db"],
                    "naming": options["naming"],
                    "bind": options["bind"],
                    "duplicates": options["duplicates"],
                    "max_associations": options["max_associations"],
                    "shutdown_grace": options["shutdown_grace"],
                }
            )
            server.run(config)
        except (ConfigError, server.StartupError) as exc:
            raise CommandError(str(exc)) from None
