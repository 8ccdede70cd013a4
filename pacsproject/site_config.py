"""The one configuration: the YAML file named by DICOM_CONFIG (or `manage.py --config FILE`),
read when the settings load, so that every command, the shell, gunicorn and other apps'
settings see the same database, storage directory and AE title as `runscp`.

Precedence is the receiver's (receiver.config): command line > file > environment > defaults;
here, before any command has parsed its options, only file > environment > defaults apply, and
each command's own options (`--storage-dir`, `--index-db`) still win over what this returns.

Runs while the settings load: nothing here may import Django models or apps.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import environ

from pacsproject.database import database_from_url, sqlite_database

CONFIG_VARIABLE = "DICOM_CONFIG"
CONFIG_OPTION = "--config"


@dataclass(frozen=True)
class SiteConfig:
    """What the settings take from the configuration file, the environment or the defaults."""

    path: Path | None
    database: dict[str, Any]
    storage_dir: Path | str  # a directory, or an s3://BUCKET/PREFIX URL
    duplicates: str
    ae_title: str
    stable_age: float
    # setting → "file PATH", "environment" or "default", as `runscp --check-config` says it.
    sources: dict[str, str] = field(default_factory=dict)


def config_option_take(argv: list[str], environ_: dict[str, str] | None = None) -> list[str]:
    """Take `--config FILE` (or `--config=FILE`) out of a manage.py command line and name the
    file in DICOM_CONFIG instead, so that every command, Django's own too, accepts it and the
    settings read it. Returns the command line without it.
    """
    target = os.environ if environ_ is None else environ_
    rest: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            rest.append(argument)
            rest.extend(arguments)
            break
        if argument == CONFIG_OPTION:
            value = next(arguments, None)
            if value is None:
                from receiver.config import ConfigError

                raise ConfigError("--config: expected a file name")
        elif argument.startswith(CONFIG_OPTION + "="):
            value = argument.partition("=")[2]
        else:
            rest.append(argument)
            continue
        target[CONFIG_VARIABLE] = str(Path(value).expanduser().resolve())
    return rest


def site_config_read(env: environ.Env, *, base_dir: Path) -> SiteConfig:
    """Read the file named by DICOM_CONFIG (if any) into what the settings need.

    Raises receiver.config.ConfigError naming the file and the key for any mistake in the
    file, the same error `runscp` gives.
    """
    # receiver.config imports no models at import time (see its docstring).
    from receiver.config import DEFAULTS, ConfigError, config_file_read

    named = env.str(CONFIG_VARIABLE, default="")
    path = Path(named).expanduser().resolve() if named else None
    values = config_file_read(path) if path is not None else {}
    from_file = f"file {path}"
    sources: dict[str, str] = {}

    def pick(key: str, variable: str, default: Any) -> Any:
        if key in values:
            sources[key] = from_file
            return values[key]
        if variable in os.environ:
            sources[key] = "environment"
            return env.str(variable)
        sources[key] = "default"
        return default

    if "database_url" in values and "index_db" in values:
        raise ConfigError(f"{path}: database.url: give database.path or database.url, not both")
    if "database_url" in values:
        try:
            database = database_from_url(values["database_url"])
        except ValueError as exc:
            raise ConfigError(f"{path}: database.url: {exc}") from None
        sources["database"] = from_file
    elif "index_db" in values:
        database = sqlite_database(values["index_db"])
        sources["database"] = from_file
    else:
        url = env.str("DATABASE_URL", default=f"sqlite:///{base_dir / 'pacs.db'}")
        try:
            database = database_from_url(url)
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL: {exc}") from None
        sources["database"] = "environment" if "DATABASE_URL" in os.environ else "default"
    if database["ENGINE"] == "django.db.backends.sqlite3" and (
        "wal_mode" in values or "synchronous" in values
    ):
        database = {
            **database,
            **sqlite_database(
                database["NAME"],
                wal_mode=values.get("wal_mode", DEFAULTS["wal_mode"]),
                synchronous=values.get("synchronous", DEFAULTS["synchronous"]),
            ),
        }
    storage = pick("storage_dir", "DICOM_STORAGE_DIR", base_dir / "received")
    return SiteConfig(
        path=path,
        database=database,
        storage_dir=(
            str(storage)
            if str(storage).startswith("s3://")
            else Path(storage).expanduser().resolve()
        ),
        duplicates=pick("duplicates", "DICOM_DUPLICATES", DEFAULTS["duplicates"]),
        ae_title=str(pick("ae_title", "DICOM_AE_TITLE", DEFAULTS["ae_title"])).strip(),
        stable_age=_seconds(pick("stable_age", "DICOM_STABLE_AGE", DEFAULTS["stable_age"])),
        sources=sources,
    )


def _seconds(value: Any) -> float:
    from receiver.config import ConfigError

    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"DICOM_STABLE_AGE: expected seconds, got {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"DICOM_STABLE_AGE: must be a positive number of seconds, got {value!r}")
    return seconds
