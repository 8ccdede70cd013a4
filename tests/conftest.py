from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connections
from pydicom.data import get_charset_files, get_testdata_file

from archive import unflushed
from archive.services import series_cache_clear
from bench.ports import free_port
from receiver.config import resolve
from receiver.server import RunningServer, ingest_settings, start


def sample_file(name: str) -> Path:
    """A real DICOM file shipped with pydicom (test files, then character-set samples)."""
    path = get_testdata_file(name) or next(iter(get_charset_files(name)), None)
    assert path is not None, f"pydicom has no sample file {name}"
    return Path(path)


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def start_scp(transactional_db, storage_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start the real SCP on a free loopback port; options as for `runscp`."""
    servers: list[RunningServer] = []

    series_cache_clear()  # rows remembered by an earlier test's server are gone
    unflushed.reset()  # nor may its heartbeat's checks see an earlier test's instances

    def _start(**options) -> RunningServer:
        config = resolve(
            {
                "port": free_port(),
                "ae_title": "TEST_SCP",
                "bind": "127.0.0.1",
                "storage_dir": storage_dir,
                **options,
            }
        )
        ingest = ingest_settings(config)
        ingest.storage.prepare()
        server = start(config, ingest)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop(grace=5)
    unflushed.reset()
    connections.close_all()


@pytest.fixture
def scp(start_scp) -> RunningServer:
    return start_scp()


def stored_files(storage_dir: Path) -> list[Path]:
    """Published files: everything except the staging area."""
    return sorted(p for p in storage_dir.rglob("*") if p.is_file() and ".incoming" not in p.parts)


def staging_files(storage_dir: Path) -> list[Path]:
    return sorted(p for p in (storage_dir / ".incoming").rglob("*") if p.is_file())


# The S3-compatible test server (moto), the environment pointing at it, and `storage` on
# each backend, for every test.
from tests.s3 import moto_server, s3_environment, storage  # noqa: E402, F401
