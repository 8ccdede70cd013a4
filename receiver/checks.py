"""The receiver's system checks (Django's check framework, tag "receiver").

`runscp` runs every registered check, Django's and these, once the index database is chosen
(`receiver.server.prepare`), against the configuration it is about to serve with; `manage.py
check` runs them against the configuration the environment gives (no command line, no file).
"""

import os
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core import checks

from receiver import transport
from receiver.config import ConfigError, ReceiverConfig, resolve

TAG = "receiver"
_serving: ReceiverConfig | None = None


@contextmanager
def checking(config: ReceiverConfig) -> Iterator[None]:
    """Run the receiver's checks against `config` (runscp's effective configuration)."""
    global _serving
    previous, _serving = _serving, config
    try:
        yield
    finally:
        _serving = previous


def _config() -> ReceiverConfig | None:
    if _serving is not None:
        return _serving
    try:
        return resolve({})
    except ConfigError:
        return None  # runscp reports the key; `check` has nothing to check against


@checks.register(TAG)
def pynetdicom_version_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        transport.version_check()
    except transport.UnsupportedPynetdicom as exc:
        return [checks.Error(str(exc), id="receiver.E001")]
    return []


@checks.register(TAG)
def storage_writable_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    config = _config()
    if config is None:
        return []
    directory = config.storage_dir
    if not isinstance(directory, Path):
        return []  # a bucket: checked when the receiver prepares its storage (archive.storage)
    # It is created at start-up when missing: then its nearest existing parent must take it.
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return [
            checks.Error(
                f"cannot write to storage directory {directory}: {existing} is not a directory",
                id="receiver.E002",
            )
        ]
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return [
            checks.Error(
                f"cannot write to storage directory {directory}: {exc.strerror or exc}",
                hint="give the receiver's user write access, or choose --storage-dir",
                id="receiver.E003",
            )
        ]
    return []


@checks.register(TAG)
def tls_files_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    config = _config()
    if config is None or not config.tls:
        return []
    errors: list[checks.CheckMessage] = []
    for key, path in (
        ("tls.certificate", config.tls_certificate),
        ("tls.private_key", config.tls_private_key),
        ("tls.ca_certificates", config.tls_ca_certificates),
    ):
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            errors.append(
                checks.Error(f"{key} {path} is not readable: {exc.strerror}", id="receiver.E004")
            )
    if errors:
        return errors
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(os.fspath(config.tls_certificate), config.tls_private_key)
        if config.tls_ca_certificates:
            context.load_verify_locations(cafile=config.tls_ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        return [
            checks.Error(f"tls.certificate / tls.private_key not usable: {exc}", id="receiver.E005")
        ]
    return []
