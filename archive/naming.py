"""Where an instance goes under the storage directory, by naming scheme.

Every component taken from received data passes through `path_component`, so no value a peer
sends can climb out of the storage directory, hide a file, or produce a name the file system
refuses.
"""

import datetime as dt
import hashlib
import re

from archive.header import InstanceHeader

NAMING_SCHEMES = ("hierarchical", "flat", "date")
# Spellings accepted for the same scheme (configuration files say "date-based").
NAMING_ALIASES = {"date-based": "date"}

MAX_COMPONENT = 64
PLACEHOLDER = "UNKNOWN"
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]")
# Names Windows reserves in any directory; a share exported to Windows users cannot hold them.
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(10)}


def naming_scheme(name: str) -> str:
    """Return the canonical scheme for `name`, or raise ValueError naming the accepted ones."""
    scheme = NAMING_ALIASES.get(name, name)
    if scheme not in NAMING_SCHEMES:
        raise ValueError(f"unknown naming scheme {name!r}: use one of hierarchical, flat, date")
    return scheme


def path_component(value: str) -> str:
    """A single safe directory or file name for `value`.

    Characters outside [A-Za-z0-9._-] become '_', leading dots are replaced (no '..', no hidden
    files) and the length is bounded. When anything had to change, a short hash of the original
    is appended, so two different values never share a folder by accident.
    """
    if not value:
        return PLACEHOLDER
    safe = _UNSAFE.sub("_", value)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    safe = safe.rstrip(".")  # Windows strips trailing dots, which would merge names
    if safe.split(".")[0].upper() in _RESERVED:
        safe = "_" + safe
    if safe != value or len(safe) > MAX_COMPONENT:
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        safe = f"{safe[: MAX_COMPONENT - 9]}~{digest}"
    return safe


def relative_path(header: InstanceHeader, scheme: str, received: dt.date) -> str:
    """The instance's path relative to the storage directory, with '/' separators."""
    filename = path_component(header.sop_instance_uid) + ".dcm"
    if scheme == "flat":
        return filename
    study = path_component(header.study_instance_uid)
    series = path_component(header.series_instance_uid)
    if scheme == "hierarchical":
        return f"{path_component(header.patient_id)}/{study}/{series}/{filename}"
    day = header.study_date or received
    return f"{day.year:04d}/{day.month:02d}/{day.day:02d}/{study}/{series}/{filename}"
