"""Database settings shared by the settings module and `runscp --index-db`."""

from pathlib import Path
from typing import Any

# WAL lets the admin read while the SCP writes; IMMEDIATE takes the write lock at BEGIN so two
# association threads queue on the busy timeout instead of failing with "database is locked" when
# one upgrades a read transaction; synchronous=FULL makes a commit durable before we answer success.
SQLITE_OPTIONS: dict[str, Any] = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL",
}


def sqlite_database(path: str | Path, *, wal_mode: bool = True) -> dict[str, Any]:
    """Return a DATABASES entry for the SQLite index file at `path`."""
    options = dict(SQLITE_OPTIONS)
    if not wal_mode:
        options["init_command"] = "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL"
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(path).expanduser().resolve()),
        "OPTIONS": options,
    }


def with_backend_options(database: dict[str, Any]) -> dict[str, Any]:
    """Add our SQLite options to a DATABASES entry parsed from DATABASE_URL."""
    if database.get("ENGINE") == "django.db.backends.sqlite3":
        database = {**database, "OPTIONS": {**SQLITE_OPTIONS, **database.get("OPTIONS", {})}}
    return database
