"""`python manage.py verifystorage`: do index and storage directory agree? Exit 0 if they do."""

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.exceptions import StorageFailure, StorageMismatch
from archive.safetext import terminal_safe
from archive.storage import Storage, is_object_store
from archive.storage_identity import storage_identity_problem, storage_relocate
from archive.verification import VerificationReport, storage_verify
from pacsproject.database import use_index_file_option


class Command(BaseCommand):
    help = "Check every index row against its file and every file against the index."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--storage-dir", help="directory or s3://BUCKET/PREFIX (DICOM_STORAGE_DIR)"
        )
        parser.add_argument("--index-db", type=Path, help="SQLite index file")
        parser.add_argument("--quick", action="store_true", help="existence and size only")
        parser.add_argument(
            "--repair",
            action="store_true",
            help="index orphan files that are valid DICOM; remove rows whose file is gone",
        )
        parser.add_argument(
            "--relocate",
            type=Path,
            metavar="NEW_DIR",
            help="the files were moved to NEW_DIR: check they are all there, then record NEW_DIR "
            "as the index's storage (set storage.directory to it before the next start)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        use_index_file_option(options["index_db"])
        root = options["relocate"] or options["storage_dir"] or settings.DICOM_STORAGE_DIR
        if not is_object_store(root) and not Path(root).is_dir():
            raise CommandError(f"storage directory {root} does not exist")
        try:
            storage = Storage(root)
        except StorageFailure as exc:
            raise CommandError(str(exc)) from None
        interactive = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            if interactive and (done % 500 == 0 or done == total):
                width = 40
                filled = width * done // max(total, 1)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
                if done == total:
                    sys.stderr.write("\n")

        if options["relocate"]:
            if options["repair"]:
                raise CommandError("--relocate and --repair: relocate first, then repair")
            try:
                report = storage_relocate(
                    storage=storage, check_hashes=not options["quick"], progress=progress
                )
            except (StorageMismatch, StorageFailure) as exc:
                if hasattr(exc, "report"):
                    self._list(exc.report)
                raise CommandError(str(exc)) from None
            self._list(report)
            self.stdout.write(
                f"relocated: the index's storage is now {storage.location}; "
                "set storage.directory to it before the next start"
            )
            return
        problem = storage_identity_problem(storage)
        if problem:
            self.stderr.write(f"warning: {problem}")
        try:
            report = storage_verify(
                storage,
                check_hashes=not options["quick"],
                repair=options["repair"],
                progress=progress,
            )
        except StorageFailure as exc:  # a bucket that cannot be listed or read
            raise CommandError(str(exc)) from None
        self._list(report)
        if not report.consistent:
            sys.exit(1)

    def _list(self, report: VerificationReport) -> None:
        for label, paths in (
            ("missing", report.missing),
            ("size mismatch", report.size_mismatch),
            ("hash mismatch", report.hash_mismatch),
            ("unreadable", report.unreadable),
            ("orphan", report.orphans),
        ):
            for path in paths[:50]:
                self.stdout.write(f"{label}: {terminal_safe(path)}")
            if len(paths) > 50:
                self.stdout.write(f"{label}: ... and {len(paths) - 50} more")
        self.stdout.write(report.summary())
