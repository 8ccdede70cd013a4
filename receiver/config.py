"""The receiver's effective configuration, and the one place that computes it.

Precedence: command line > environment (through Django settings) > defaults.
"""

import ipaddress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from django.conf import settings

from archive.naming import naming_scheme
from archive.services import DUPLICATE_POLICIES

DEFAULTS: dict[str, Any] = {
    "port": 11112,
    "ae_title": "PACS_RECEIVER",
    "bind": "",
    "naming": "hierarchical",
    "max_associations": 10,
    "acse_timeout": 30.0,
    "dimse_timeout": 60.0,
    "network_timeout": 60.0,
    "shutdown_grace": 30.0,
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True)
class ReceiverConfig:
    port: int
    ae_title: str
    bind: str
    storage_dir: Path
    index_db: Path | None
    naming: str
    duplicates: str
    max_associations: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    shutdown_grace: float

    def describe(self) -> str:
        """One line naming everything an operator checks first."""
        address = self.bind or "*"
        return (
            f"AE title {self.ae_title}, listening on {address}:{self.port}, "
            f"storage {self.storage_dir}, index {self.index_db or _database_label()}, "
            f"naming {self.naming}, duplicates {self.duplicates}"
        )


def _database_label() -> str:
    database = settings.DATABASES["default"]
    engine = database["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return str(database["NAME"])
    return f"{engine} database {database.get('NAME')} on {database.get('HOST') or 'localhost'}"


def ae_title_valid(title: str) -> str:
    """Return the AE title stripped of padding, or raise ConfigError saying what is wrong."""
    stripped = title.strip(" ")
    if not stripped:
        raise ConfigError("AE title is empty")
    if len(stripped) > 16:
        raise ConfigError(f"AE title {stripped!r} is longer than 16 characters")
    if "\\" in stripped or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in stripped):
        raise ConfigError(
            f"AE title {stripped!r} may hold only printable ASCII characters and no backslash"
        )
    return stripped


def resolve(command_line: dict[str, Any]) -> ReceiverConfig:
    """Merge command-line values (None = not given) over settings and defaults, and validate."""
    environment = {
        "storage_dir": settings.DICOM_STORAGE_DIR,
        "duplicates": settings.DICOM_DUPLICATES,
    }
    merged: dict[str, Any] = {**DEFAULTS, "index_db": None, **environment}
    merged.update({key: value for key, value in command_line.items() if value is not None})
    unknown = set(merged) - {f.name for f in fields(ReceiverConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    port = merged["port"]
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r} is not between 1 and 65535")
    try:
        merged["naming"] = naming_scheme(merged["naming"])
    except ValueError as exc:
        raise ConfigError(f"naming: {exc}") from None
    if merged["duplicates"] not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"duplicates: unknown policy {merged['duplicates']!r}; use one of "
            + ", ".join(DUPLICATE_POLICIES)
        )
    if merged["bind"]:
        try:
            ipaddress.ip_address(merged["bind"])
        except ValueError:
            if merged["bind"] != "localhost":
                raise ConfigError(f"bind: {merged['bind']!r} is not an IP address") from None
    if merged["max_associations"] < 1:
        raise ConfigError("max_associations must be at least 1")
    for key in ("acse_timeout", "dimse_timeout", "network_timeout", "shutdown_grace"):
        if merged[key] <= 0:
            raise ConfigError(f"{key} must be a positive number of seconds")
    merged["ae_title"] = ae_title_valid(merged["ae_title"])
    merged["storage_dir"] = Path(merged["storage_dir"]).expanduser().resolve()
    if merged["index_db"] is not None:
        merged["index_db"] = Path(merged["index_db"]).expanduser().resolve()
    return ReceiverConfig(**merged)
