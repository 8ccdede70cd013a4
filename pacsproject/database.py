"""Database settings shared by the settings module and `runscp --index-db`."""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import environ

# The engines DATABASE_URL and `database.url` may name.
URL_SCHEMES = ("sqlite", "postgres", "postgresql", "pgsql")

# WAL lets the admin read while the SCP writes; IMMEDIATE takes the write lock at BEGIN so two
# association threads queue instead of failing with "database is locked" when one upgrades a read
# transaction. synchronous=NORMAL in WAL mode: a commit survives any crash of the process, and
# only a power cut or OS crash may undo the last commits; the instance files themselves are
# always fsync'd before success, so such a loss leaves files that a re-index finds. FULL adds an
# fsync per commit (`database.synchronous: full`). On PostgreSQL the same setting decides
# whether a new instance's transaction waits for the WAL flush (archive.services._index_rows).
SYNCHRONOUS = ("normal", "full")


def _init_command(wal_mode: bool, synchronous: str) -> str:
    journal = "WAL" if wal_mode else "DELETE"
    return f"PRAGMA journal_mode={journal}; PRAGMA synchronous={synchronous.upper()}"


SQLITE_OPTIONS: dict[str, Any] = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": _init_command(True, "normal"),
}


def sqlite_database(
    path: str | Path, *, wal_mode: bool = True, synchronous: str = "normal"
) -> dict[str, Any]:
    """Return a DATABASES entry for the SQLite index file at `path`."""
    options = {**SQLITE_OPTIONS, "init_command": _init_command(wal_mode, synchronous)}
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(path).expanduser().resolve()),
        "OPTIONS": options,
    }


def database_from_url(url: str) -> dict[str, Any]:
    """A DATABASES entry for `url` (sqlite:////abs/path.db, postgres://user:pw@host/name).

    Raises ValueError naming what is wrong.
    """
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"{url_without_password(url)!r} is not a database URL "
            "(sqlite:////absolute/path.db or postgres://user:password@host:port/name)"
        )
    database = environ.Env.db_url_config(url)
    if not database.get("NAME"):
        raise ValueError(f"{url_without_password(url)!r} names no database")
    return with_backend_options(database)


def url_without_password(url: str) -> str:
    """The URL with its password hidden, for logs and `--check-config`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_backend_options(database: dict[str, Any]) -> dict[str, Any]:
    """Add our SQLite options to a DATABASES entry parsed from DATABASE_URL."""
    if database.get("ENGINE") == "django.db.backends.sqlite3":
        database = {**database, "OPTIONS": {**SQLITE_OPTIONS, **database.get("OPTIONS", {})}}
    return database


def use_sqlite_index(
    path: Path | None, *, wal_mode: bool = True, synchronous: str = "normal"
) -> None:
    """Point the default database at the SQLite file `path` (created on first use); with no
    path, apply the journal settings to the configured database if it is SQLite.

    Raises OSError if the file's directory cannot be created.
    """
    # Imported here: the settings module imports this one before Django is set up.
    from django.db import connections

    database = connections.settings["default"]
    if path is None:
        if database["ENGINE"] != "django.db.backends.sqlite3":
            return
        path = Path(database["NAME"])
    path.parent.mkdir(parents=True, exist_ok=True)
    connections.close_all()
    database.update(sqlite_database(path, wal_mode=wal_mode, synchronous=synchronous))
    # A wrapper built for the previous engine must not be reused.
    del connections["default"]


def use_database_url(url: str) -> None:
    """Point the default database at `url` (a `database.url` of a configuration file the
    settings did not read: `call_command("runscp", config=...)`)."""
    from django.db import connections

    connections.close_all()
    connections.settings["default"].update(database_from_url(url))
    del connections["default"]


def use_index_file_option(path: Path | None) -> None:
    """The management commands' `--index-db FILE`: read this existing SQLite index."""
    from django.core.management.base import CommandError

    if path is None:
        return
    if not path.is_file():
        raise CommandError(f"index {path} does not exist")
    use_sqlite_index(path.resolve())
