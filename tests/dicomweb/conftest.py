import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from django.conf import settings
from django.contrib.auth.models import User
from requests.auth import HTTPBasicAuth

from archive.services import series_cache_clear
from tests.conftest import free_port

PASSWORD = "dicomweb-test-password-1"


@pytest.fixture(autouse=True)
def web_storage(settings, storage_dir):
    settings.DICOM_STORAGE_DIR = storage_dir
    series_cache_clear()
    return storage_dir


@pytest.fixture
def web_user(transactional_db) -> User:
    return User.objects.create_superuser("radiologist", "r@example.org", PASSWORD)


@pytest.fixture
def auth(web_user) -> HTTPBasicAuth:
    return HTTPBasicAuth(web_user.username, PASSWORD)


@pytest.fixture
def root(live_server) -> str:
    return f"{live_server.url}/dicomweb"


@pytest.fixture
def client(root, auth) -> Iterator[DICOMwebClient]:
    session = create_session_from_auth(auth)
    yield DICOMwebClient(url=root, session=session)
    session.close()


GUNICORN = Path(sys.executable).with_name("gunicorn")


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    return (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


@pytest.fixture
def gunicorn_process(storage_dir, tmp_path, web_user):
    """gunicorn serving the project with one sync worker: (the /dicomweb URL, the master)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DICOM_STORAGE_DIR": str(storage_dir),
        "SECRET_KEY": "chunked-test-secret-key-0123456789abcdefghij",
    }
    env.pop("DICOM_CONFIG", None)
    process = subprocess.Popen(
        # -t: a sync worker is killed after this many seconds in one request (1 GB ones too).
        [str(GUNICORN), "pacsproject.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "-t", "600"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "gunicorn.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/dicomweb", process
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def gunicorn(gunicorn_process) -> str:
    return gunicorn_process[0]
