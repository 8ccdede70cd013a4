"""The receiver's effective configuration, and the one place that computes it.

Precedence: command line > configuration file > environment > defaults. `resolve` returns the
configuration with the source of every value, which `runscp --check-config` prints.

The settings read the same file when they load (pacsproject.site_config), so this module must
not import Django models at import time: the settings import it before the apps are ready.
"""

import ipaddress
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from pydicom.uid import UID

from archive.naming import naming_scheme
from archive.retention_policy import RetentionPolicy
from pacsproject.database import SYNCHRONOUS, database_from_url, url_without_password
from receiver.sop_classes import sop_classes_parse

DEFAULTS: dict[str, Any] = {
    "port": 11112,
    "ae_title": "MY_PACS",
    "bind": "",
    "storage_dir": None,  # settings.DICOM_STORAGE_DIR
    "index_db": None,  # the database of DATABASE_URL
    "database_url": None,  # read by the settings (pacsproject.site_config)
    "wal_mode": True,
    "synchronous": "normal",
    "naming": "hierarchical",
    "duplicates": "keep",
    "strict_uids": False,  # True: refuse UIDs that break PS3.5 (0xC000) instead of storing them
    "min_free_mb": 0.0,
    # Stability (archive.stability): seconds without a new instance before a series or study
    # is announced stable; the per-level ones default to stable_age.
    "stable_age": 60.0,
    "series_stable_age": None,
    "study_stable_age": None,
    "announce_stable": True,
    "retention": None,  # archive.retention.RetentionPolicy: storage.retention
    "max_associations": 10,
    # "auto": one receiver process per core, up to WORKERS_AUTO_MAX (workers_auto).
    "workers": "auto",
    # With one worker per core, a worker serving two or more associations keeps its threads
    # on its own core (receiver.affinity).
    "pin_workers": True,
    # Larger than the customary 16 KB: fewer PDUs per instance cost pynetdicom markedly less
    # CPU (0.5 MB instances: 7.9 → 5.4 ms each, bench/run.py).
    "max_pdu": 131072,
    "require_called_ae_title": False,
    "require_known_ae": False,
    "allowed_aes": (),
    "accepted_sop_classes": None,  # every storage class
    "acse_timeout": 30.0,
    "dimse_timeout": 60.0,
    "network_timeout": 60.0,
    "shutdown_grace": 30.0,
    # Connections that have not sent their A-ASSOCIATE-RQ (receiver.transport.lobby).
    "first_pdu_timeout": 10.0,
    "max_waiting_per_address": 50,
    "max_waiting_connections": 1000,
    # Behind a load balancer: read the PROXY v2 header of connections from these addresses.
    "proxy_protocol": False,
    "proxy_addresses": (),
    "tls_certificate": None,
    "tls_private_key": None,
    "tls_ca_certificates": None,
    "tls_require_client_certificate": False,
    "remote_aes": (),
    "forwarding": (),
    "query_pn_case_insensitive": True,
}

# Environment variables that configure the receiver (read here, not scattered).
ENVIRONMENT = {
    "DICOM_STORAGE_DIR": "storage_dir",
    "DICOM_DUPLICATES": "duplicates",
    "DICOM_AE_TITLE": "ae_title",
    "DICOM_PORT": "port",
    "DICOM_STABLE_AGE": "stable_age",
}

# Configuration file layout: section → key → (field, kind).
FILE_SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "server": {
        "port": ("port", "int"),
        "ae_title": ("ae_title", "str"),
        "bind": ("bind", "str"),
        "max_associations": ("max_associations", "int"),
        "workers": ("workers", "workers"),
        "pin_workers": ("pin_workers", "bool"),
        "max_pdu": ("max_pdu", "int"),
        "require_called_ae_title": ("require_called_ae_title", "bool"),
        "shutdown_grace": ("shutdown_grace", "number"),
        "first_pdu_timeout": ("first_pdu_timeout", "number"),
        "max_waiting_per_address": ("max_waiting_per_address", "int"),
        "max_waiting_connections": ("max_waiting_connections", "int"),
        "proxy_protocol": ("proxy_protocol", "bool"),
        "proxy_addresses": ("proxy_addresses", "networks"),
    },
    "storage": {
        "directory": ("storage_dir", "path"),
        "naming": ("naming", "str"),
        "duplicates": ("duplicates", "str"),
        "strict_uids": ("strict_uids", "bool"),
        "min_free_mb": ("min_free_mb", "number"),
        "stable_age": ("stable_age", "number"),
        "series_stable_age": ("series_stable_age", "number"),
        "study_stable_age": ("study_stable_age", "number"),
        "announce_stable": ("announce_stable", "bool"),
        "retention": ("retention", "retention"),
    },
    "database": {
        "path": ("index_db", "path"),
        "url": ("database_url", "str"),
        "wal_mode": ("wal_mode", "bool"),
        "synchronous": ("synchronous", "str"),
    },
    "timeouts": {
        "acse": ("acse_timeout", "number"),
        "dimse": ("dimse_timeout", "number"),
        "network": ("network_timeout", "number"),
    },
    "access": {
        "require_known_ae": ("require_known_ae", "bool"),
        "allowed_aes": ("allowed_aes", "peers"),
    },
    "tls": {
        "certificate": ("tls_certificate", "path"),
        "private_key": ("tls_private_key", "path"),
        "ca_certificates": ("tls_ca_certificates", "path"),
        "require_client_certificate": ("tls_require_client_certificate", "bool"),
    },
    "query": {
        "pn_case_insensitive": ("query_pn_case_insensitive", "bool"),
    },
}
LIST_SECTIONS = {"accepted_sop_classes": "accepted_sop_classes"}
# Sections that are lists of entries, each read by its own function.
ENTRY_SECTIONS = {"remote_aes": "remote_aes", "forwarding": "forwarding"}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key (and the file)."""


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title that may associate, optionally only from a host or network."""

    ae_title: str
    host: str = ""

    def matches(self, ae_title: str, address: str) -> bool:
        return ae_title == self.ae_title and (not self.host or host_matches(self.host, address))


def host_matches(host: str, address: str) -> bool:
    """Whether `address` is `host` (an IP address, a CIDR network, or a resolvable name)."""
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    try:
        return peer in ipaddress.ip_network(host, strict=False)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return any(ipaddress.ip_address(info[4][0]) == peer for info in infos)


@dataclass(frozen=True)
class RemoteAEEntry:
    """A peer we open associations to (C-MOVE destination, Storage Commitment requester)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    description: str = ""


@dataclass(frozen=True)
class ForwardingEntry:
    """A forwarding rule: send what matches to `destination` (a remote AE title)."""

    destination: str
    when: str = "instance"
    modalities: tuple[str, ...] = ()
    calling_aes: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    deidentify: bool = False


@dataclass(frozen=True)
class ReceiverConfig:
    port: int
    ae_title: str
    bind: str
    storage_dir: Path | str  # a directory, or an s3://BUCKET/PREFIX URL (archive.storage)
    index_db: Path | None
    database_url: str | None
    wal_mode: bool
    synchronous: str
    naming: str
    duplicates: str
    strict_uids: bool
    min_free_mb: float
    stable_age: float
    series_stable_age: float
    study_stable_age: float
    announce_stable: bool
    retention: RetentionPolicy | None
    max_associations: int
    workers: int
    max_pdu: int
    require_called_ae_title: bool
    require_known_ae: bool
    allowed_aes: tuple[AllowedPeer, ...]
    accepted_sop_classes: tuple[UID, ...] | None
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    shutdown_grace: float
    first_pdu_timeout: float
    max_waiting_per_address: int
    max_waiting_connections: int
    proxy_protocol: bool
    proxy_addresses: tuple[str, ...]
    tls_certificate: Path | None
    tls_private_key: Path | None
    tls_ca_certificates: Path | None
    tls_require_client_certificate: bool
    remote_aes: tuple[RemoteAEEntry, ...] = ()
    forwarding: tuple[ForwardingEntry, ...] = ()
    query_pn_case_insensitive: bool = True
    pin_workers: bool = True
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    # The configuration file the values were read from (DICOM_CONFIG or --config).
    config_file: Path | None = field(default=None, compare=False)

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    def describe(self) -> str:
        """One line naming everything an operator checks first."""
        accepted = (
            "all storage classes"
            if self.accepted_sop_classes is None
            else f"{len(self.accepted_sop_classes)} storage classes"
        )
        return (
            f"AE title {self.ae_title}, listening on {self.bind or '*'}:{self.port}"
            f"{' (TLS)' if self.tls else ''}, storage {self.storage_dir}, "
            f"index {self.index_db or database_label()}, naming {self.naming}, "
            f"duplicates {self.duplicates}, {accepted}, "
            f"up to {self.max_associations} associations"
        )

    def report(self) -> str:
        """Every effective value with where it came from, for `--check-config`."""
        lines = [f"{'configuration file':32} {self.config_file or '(none)'}"]
        for item in fields(self):
            if item.name in ("sources", "config_file"):
                continue
            value = getattr(self, item.name)
            if item.name == "accepted_sop_classes" and value is not None:
                value = ", ".join(f"{UID(uid).name}" for uid in value)
            elif item.name == "allowed_aes":
                value = ", ".join(f"{p.ae_title}@{p.host or '*'}" for p in value) or "(none)"
            elif item.name == "remote_aes":
                value = ", ".join(f"{r.ae_title}@{r.host}:{r.port}" for r in value) or "(none)"
            elif item.name == "forwarding":
                value = (
                    ", ".join(
                        f"{r.when} → {r.destination}{' (de-identified)' if r.deidentify else ''}"
                        for r in value
                    )
                    or "(none)"
                )
            elif item.name == "index_db" and value is None:
                value = database_label()
                if self.database_url is None and "DATABASE_URL" in os.environ:
                    value = f"{value}  [environment DATABASE_URL]"
            elif item.name == "database_url" and value is not None:
                value = url_without_password(value)
            elif item.name == "bind" and not value:
                value = "(all interfaces)"
            lines.append(f"{item.name:32} {value}  [{self.sources.get(item.name, 'default')}]")
        return "\n".join(lines)


def database_label() -> str:
    database = settings.DATABASES["default"]
    engine = database["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return str(database["NAME"])
    return f"{engine} database {database.get('NAME')} on {database.get('HOST') or 'localhost'}"


def ae_title_valid(title: str) -> str:
    """Return the AE title stripped of padding, or raise ConfigError saying what is wrong."""
    stripped = str(title).strip(" ")
    if not stripped:
        raise ConfigError("AE title is empty")
    if len(stripped) > 16:
        raise ConfigError(f"AE title {stripped!r} is longer than 16 characters")
    if "\\" in stripped or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in stripped):
        raise ConfigError(
            f"AE title {stripped!r} may hold only printable ASCII characters and no backslash"
        )
    return stripped


def config_file_read(path: Path) -> dict[str, Any]:
    """Read and type-check a YAML configuration file into configuration fields.

    Raises ConfigError naming the file and the key for anything unreadable, unknown or mistyped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error{at}: {problem}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected sections (server, storage, ...) at the top level")

    values: dict[str, Any] = {}
    for section, content in document.items():
        if section in LIST_SECTIONS:
            if not isinstance(content, list) or not all(isinstance(x, str) for x in content):
                raise ConfigError(
                    f"{path}: {section}: expected a list of names, modalities or UIDs"
                )
            values[LIST_SECTIONS[section]] = content
            continue
        if section in ENTRY_SECTIONS:
            read = remote_aes_read if section == "remote_aes" else forwarding_read
            values[ENTRY_SECTIONS[section]] = read(content, f"{path}: {section}")
            continue
        if section not in FILE_SCHEMA:
            known = ", ".join([*FILE_SCHEMA, *LIST_SECTIONS, *ENTRY_SECTIONS])
            raise ConfigError(f"{path}: unknown section {section!r} (known: {known})")
        if content is None:
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: {section}: expected keys, got {type(content).__name__}")
        for key, value in content.items():
            if key not in FILE_SCHEMA[section]:
                known = ", ".join(FILE_SCHEMA[section])
                raise ConfigError(f"{path}: unknown key {section}.{key} (known: {known})")
            name, kind = FILE_SCHEMA[section][key]
            values[name] = _typed(value, kind, f"{path}: {section}.{key}", path.parent)
    return values


def _retention(value: Any, where: str) -> RetentionPolicy:
    """storage.retention: {max_bytes, max_age_days, mode}."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected keys max_bytes, max_age_days and mode")
    known = {"max_bytes": "int", "max_age_days": "number", "mode": "str"}
    for key in value:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
    typed = {
        key: _typed(item, known[key], f"{where}.{key}", Path("."))
        for key, item in value.items()
        if item is not None
    }
    try:
        return RetentionPolicy(**typed)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _typed(value: Any, kind: str, where: str, base: Path) -> Any:
    if kind == "workers":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: expected a number of processes or auto, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        if value.startswith("s3://"):
            return value  # a bucket, not a path (archive.storage)
        # Relative paths are relative to the file, so a service can start from any directory.
        return (base / Path(value).expanduser()).resolve()
    if kind == "networks":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of addresses or networks")
        for item in value:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise ConfigError(f"{where}: {item!r} is not an IP address or network") from None
        return tuple(str(item) for item in value)
    if kind == "retention":
        return _retention(value, where)
    if kind == "peers":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {{ae_title, host}} entries")
        return [_peer_entry(entry, f"{where}[{i}]") for i, entry in enumerate(value)]
    raise AssertionError(kind)


def _peer_entry(entry: Any, where: str) -> AllowedPeer:
    if isinstance(entry, str):
        entry = {"ae_title": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an entry with ae_title (and optional host)")
    unknown = set(entry) - {"ae_title", "host", "description"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            "(known: ae_title, host, description)"
        )
    if "ae_title" not in entry:
        raise ConfigError(f"{where}: ae_title is missing")
    try:
        title = ae_title_valid(entry["ae_title"])
    except ConfigError as exc:
        raise ConfigError(f"{where}.ae_title: {exc}") from None
    host = str(entry.get("host") or "")
    return AllowedPeer(ae_title=title, host=host)


_REMOTE_AE_KEYS = ("ae_title", "host", "port", "tls", "description")


def remote_aes_read(content: Any, where: str) -> tuple[RemoteAEEntry, ...]:
    """The `remote_aes:` section: a list of {ae_title, host, port, tls, description}."""
    if content is None:
        return ()
    if not isinstance(content, list):
        raise ConfigError(f"{where}: expected a list of {{ae_title, host, port, tls}} entries")
    entries: list[RemoteAEEntry] = []
    for i, entry in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected an entry with ae_title, host and port")
        # A misspelt key first: "ae_titel" is its own mistake, not a missing ae_title.
        unknown = set(entry) - set(_REMOTE_AE_KEYS)
        if unknown:
            raise ConfigError(
                f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                f"(known: {', '.join(_REMOTE_AE_KEYS)})"
            )
        if not {"ae_title", "host", "port"} <= set(entry):
            raise ConfigError(f"{at}: expected an entry with ae_title, host and port")
        try:
            title = ae_title_valid(entry["ae_title"])
        except ConfigError as exc:
            raise ConfigError(f"{at}.ae_title: {exc}") from None
        if any(e.ae_title == title for e in entries):
            raise ConfigError(f"{at}.ae_title: {title!r} is listed twice")
        host = entry["host"]
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"{at}.host: expected a host name or IP address, got {host!r}")
        port = entry["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{at}.port: {port!r} is not between 1 and 65535")
        tls = entry.get("tls", False)
        if not isinstance(tls, bool):
            raise ConfigError(f"{at}.tls: expected true or false, got {tls!r}")
        description = str(entry.get("description") or "")
        entries.append(RemoteAEEntry(title, host.strip(), port, tls, description))
    return tuple(entries)


# Modality (0008,0060) defined terms, PS3.3 C.7.3.1.1.1 (retired ones included: old devices).
_MODALITY_TERMS = (
    "ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID "
    "GM HC HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF "
    "OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD "
    "RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL "
    "XC AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF"
)
MODALITIES = frozenset(_MODALITY_TERMS.split())
FORWARD_WHEN = ("instance", "study_stable")
_FORWARDING_KEYS = ("destination", "when", "modalities", "calling_aes", "sop_classes", "deidentify")


def forwarding_read(content: Any, where: str) -> tuple[ForwardingEntry, ...]:
    """The `forwarding:` section: a list of {destination, when, modalities, calling_aes,
    sop_classes}. Whether the destination is in the remote AE table is checked at start-up,
    when the table (with the admin's rows) is known."""
    if content is None:
        return ()
    if not isinstance(content, list):
        raise ConfigError(f"{where}: expected a list of {{destination, when, ...}} rules")
    rules: list[ForwardingEntry] = []
    for i, entry in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected a rule with a destination")
        unknown = set(entry) - set(_FORWARDING_KEYS)
        if unknown:
            raise ConfigError(
                f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                f"(known: {', '.join(_FORWARDING_KEYS)})"
            )
        if "destination" not in entry:
            raise ConfigError(f"{at}: expected a rule with a destination")
        try:
            destination = ae_title_valid(entry["destination"])
        except ConfigError as exc:
            raise ConfigError(f"{at}.destination: {exc}") from None
        when = entry.get("when", "instance")
        if when not in FORWARD_WHEN:
            raise ConfigError(f"{at}.when: {when!r} is not one of {', '.join(FORWARD_WHEN)}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("modalities", "calling_aes", "sop_classes"):
            value = entry.get(key) or []
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{at}.{key}: expected a list of names")
            lists[key] = tuple(v.strip() for v in value if v.strip())
        modalities = tuple(m.upper() for m in lists["modalities"])
        for modality in modalities:
            if modality not in MODALITIES:
                raise ConfigError(f"{at}.modalities: unknown modality {modality!r}")
        for title in lists["calling_aes"]:
            try:
                ae_title_valid(title)
            except ConfigError as exc:
                raise ConfigError(f"{at}.calling_aes: {exc}") from None
        try:
            sop_classes = tuple(str(uid) for uid in sop_classes_parse(lists["sop_classes"]))
        except ValueError as exc:
            raise ConfigError(f"{at}.sop_classes: {exc}") from None
        deidentify = entry.get("deidentify", False)
        if not isinstance(deidentify, bool):
            raise ConfigError(f"{at}.deidentify: expected true or false, got {deidentify!r}")
        rules.append(
            ForwardingEntry(
                destination, when, modalities, lists["calling_aes"], sop_classes, deidentify
            )
        )
    return tuple(rules)


def _environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, name in ENVIRONMENT.items():
        if variable in os.environ:
            values[name] = os.environ[variable]
    if "stable_age" in values:
        try:
            values["stable_age"] = float(values["stable_age"])
        except ValueError:
            raise ConfigError(
                f"DICOM_STABLE_AGE: expected seconds, got {values['stable_age']!r}"
            ) from None
    if "port" in values:
        try:
            values["port"] = int(values["port"])
        except ValueError:
            raise ConfigError(
                f"DICOM_PORT: expected a port number, got {values['port']!r}"
            ) from None
    return values


# Past four processes the writers mostly queue for the index (SQLite has one writer) while
# each process costs its own memory; a site with more cores sets `workers` itself.
WORKERS_AUTO_MAX = 4


def workers_auto(*, bucket: bool = False) -> int:
    """One receiver process per core this process may run on, at most WORKERS_AUTO_MAX; one
    process when the storage is a bucket.

    On a filesystem one process is bound by Python's interpreter lock once several
    associations send at the same time (0.77x Orthanc's rate at four associations on two cores,
    1.04x with two workers; docs/performance.md). On a bucket its threads mostly wait for the
    server, and two processes, each with its own S3 client runtime, cost more CPU per instance
    than they gain (four associations: 659/s and 0.90 ms per instance with one, 550/s and
    1.44 ms with two)."""
    if bucket:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _cgroup_cores() or cores, WORKERS_AUTO_MAX))


def _cgroup_cores(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The cores a CPU quota allows (cgroup v2: a container's --cpus, systemd's CPUQuota),
    rounded up; None without a quota. The affinity mask does not show a quota."""
    try:
        quota, _, period = Path(path).read_text().partition(" ")
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no quota
        return None


def resolve(command_line: dict[str, Any], config_file: Path | None = None) -> ReceiverConfig:
    """Merge command line (None = not given) > file > environment > defaults, and validate."""
    # Imported here: the settings import this module before the models can be (site_config).
    from archive.services import DUPLICATE_POLICIES

    layers: list[tuple[str, dict[str, Any]]] = [("default", DEFAULTS)]
    layers.append(("environment", _environment()))
    if config_file is not None:
        layers.append((f"file {config_file}", config_file_read(Path(config_file))))
    layers.append(("command line", {k: v for k, v in command_line.items() if v is not None}))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = source
    unknown = set(merged) - {f.name for f in fields(ReceiverConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{_spelling(key, sources.get(key, 'default'))}: {message}")

    port = merged["port"]
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise fail("port", f"{port!r} is not between 1 and 65535")
    try:
        merged["ae_title"] = ae_title_valid(merged["ae_title"])
    except ConfigError as exc:
        raise fail("ae_title", str(exc)) from None
    try:
        merged["naming"] = naming_scheme(merged["naming"])
    except ValueError as exc:
        raise fail("naming", str(exc)) from None
    if merged["duplicates"] not in DUPLICATE_POLICIES:
        raise fail(
            "duplicates",
            f"unknown policy {merged['duplicates']!r}; use one of {', '.join(DUPLICATE_POLICIES)}",
        )
    if merged["bind"] and merged["bind"] != "localhost":
        try:
            ipaddress.ip_address(merged["bind"])
        except ValueError:
            raise fail("bind", f"{merged['bind']!r} is not an IP address") from None
    if merged["synchronous"] not in SYNCHRONOUS:
        raise fail("synchronous", f"{merged['synchronous']!r} is not one of normal, full")
    if merged["workers"] == "auto":
        bucket = str(merged["storage_dir"] or settings.DICOM_STORAGE_DIR).startswith("s3://")
        merged["workers"] = workers_auto(bucket=bucket)
        sources["workers"] += ", auto"
    if not isinstance(merged["workers"], int) or not 1 <= merged["workers"] <= 64:
        raise fail("workers", "must be between 1 and 64")
    if merged["max_associations"] < 1:
        raise fail("max_associations", "must be at least 1")
    if merged["max_pdu"] != 0 and not 4096 <= merged["max_pdu"] <= 2**32 - 1:
        raise fail("max_pdu", "must be 0 (unlimited) or between 4096 and 4294967295")
    if merged["min_free_mb"] < 0:
        raise fail("min_free_mb", "must not be negative")
    for key in ("max_waiting_per_address", "max_waiting_connections"):
        if merged[key] < 1:
            raise fail(key, "must be at least 1")
    for level in ("series_stable_age", "study_stable_age"):
        if merged[level] is None:
            merged[level] = merged["stable_age"]
            sources[level] = sources["stable_age"]
    for key in (
        "acse_timeout",
        "dimse_timeout",
        "network_timeout",
        "shutdown_grace",
        "first_pdu_timeout",
        "stable_age",
        "series_stable_age",
        "study_stable_age",
    ):
        if merged[key] <= 0:
            raise fail(key, "must be a positive number of seconds")
    if merged["accepted_sop_classes"] is not None:
        entries = merged["accepted_sop_classes"]
        if isinstance(entries, str):
            entries = entries.split(",")
        try:
            merged["accepted_sop_classes"] = tuple(sop_classes_parse(entries))
        except ValueError as exc:
            raise fail("accepted_sop_classes", str(exc)) from None
        if not merged["accepted_sop_classes"]:
            raise fail("accepted_sop_classes", "names no storage class")
    merged["allowed_aes"] = tuple(merged["allowed_aes"])
    merged["proxy_addresses"] = tuple(merged["proxy_addresses"])
    if merged["proxy_protocol"] and not merged["proxy_addresses"]:
        raise fail("proxy_protocol", "needs server.proxy_addresses (the load balancers)")
    _check_tls(merged, fail)
    if merged["database_url"] is not None:
        try:
            database_from_url(merged["database_url"])
        except ValueError as exc:
            raise fail("database_url", str(exc)) from None
        if merged["index_db"] is not None and sources["index_db"] == sources["database_url"]:
            raise fail("database_url", "give database.path or database.url, not both")

    storage_dir = merged["storage_dir"] or settings.DICOM_STORAGE_DIR
    if not str(storage_dir).startswith("s3://"):  # a bucket stays a URL (archive.storage)
        storage_dir = Path(storage_dir).expanduser().resolve()
    merged["storage_dir"] = storage_dir
    for key in ("index_db", "tls_certificate", "tls_private_key", "tls_ca_certificates"):
        if merged[key] is not None:
            merged[key] = Path(merged[key]).expanduser().resolve()
    return ReceiverConfig(
        **merged, sources=sources, config_file=Path(config_file) if config_file else None
    )


def _spelling(key: str, source: str) -> str:
    """How the user wrote `key` where it came from: file key, option or variable, with origin."""
    if source.startswith("file "):
        return f"{source[5:]}: {FILE_KEYS.get(key, key)}"
    if source == "command line":
        positional = {"port": "PORT", "ae_title": "AE_TITLE", "accepted_sop_classes": "--accept"}
        return positional.get(key, f"--{key.replace('_', '-')}")
    if source == "environment":
        return next((var for var, name in ENVIRONMENT.items() if name == key), key)
    return key


FILE_KEYS = {
    name: f"{section}.{key}"
    for section, keys in FILE_SCHEMA.items()
    for key, (name, _) in keys.items()
} | {name: section for section, name in [*LIST_SECTIONS.items(), *ENTRY_SECTIONS.items()]}


def _check_tls(merged: dict[str, Any], fail: Any) -> None:
    certificate, key = merged["tls_certificate"], merged["tls_private_key"]
    if (certificate is None) != (key is None):
        raise fail(
            "tls_private_key" if certificate is None else "tls_certificate",
            "TLS needs both a certificate and a private key",
        )
    if merged["tls_require_client_certificate"] and not merged["tls_ca_certificates"]:
        raise fail("tls_ca_certificates", "require_client_certificate needs ca_certificates")
    for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
        if merged[name] is not None and not Path(merged[name]).is_file():
            raise fail(name, f"{merged[name]} is not a readable file")
