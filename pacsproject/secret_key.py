"""The SECRET_KEY when the environment gives none: generated at the first start and kept in a
file only the service user can read, so that every process (runscp, gunicorn, management
commands) signs with the same key and nobody signs with a key published in our source.

Race-free: the key is written and fsync'd under a unique name, then hard-linked to the final
name, which fails if another process got there first; the loser reads the winner's key. A
reader therefore never sees a half-written file.
"""

import contextlib
import os
import secrets
import stat
from pathlib import Path

# Group or others able to read the key could forge sessions and signed cookies.
_TOO_OPEN = stat.S_IRWXG | stat.S_IRWXO


def secret_key_from_file(path: Path) -> str:
    """The key kept in `path`, created (mode 0600) if absent. Exits with one line naming
    SECRET_KEY_FILE if it cannot be read or created, or is readable by others."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SystemExit(f"SECRET_KEY_FILE: cannot read {path}: {exc.strerror or exc}") from None
    try:
        _create(path)
        return _read(path)
    except OSError as exc:
        raise SystemExit(
            f"SECRET_KEY_FILE: cannot create {path}: {exc.strerror or exc}; "
            "set SECRET_KEY, or SECRET_KEY_FILE to a writable place"
        ) from None


def _read(path: Path) -> str:
    with path.open("rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & _TOO_OPEN:
            raise SystemExit(
                f"SECRET_KEY_FILE: {path} is readable by others (mode {stat.filemode(mode)}); "
                f"chmod 600 {path}"
            )
        key = fh.read().decode("ascii", errors="replace").strip()
    if len(key) < 50:
        raise SystemExit(f"SECRET_KEY_FILE: {path} holds no usable key (under 50 characters)")
    return key


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as fh:
            fh.write(secrets.token_urlsafe(50).encode("ascii") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        # Another process started at the same moment: its key is the key.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
