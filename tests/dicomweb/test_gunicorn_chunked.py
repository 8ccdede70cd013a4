"""STOW-RS with a chunked body (no Content-Length) under gunicorn, where Django alone would
read nothing: the body is read from the WSGI input gunicorn de-chunks."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from archive.models import Instance
from dicomweb.multipart import multipart_body
from tests.conftest import free_port, sample_file

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
def gunicorn(storage_dir, tmp_path, web_user):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DICOM_STORAGE_DIR": str(storage_dir),
        "SECRET_KEY": "chunked-test-secret-key-0123456789abcdefghij",
    }
    env.pop("DICOM_CONFIG", None)
    process = subprocess.Popen(
        [str(GUNICORN), "pacsproject.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
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
    yield f"http://127.0.0.1:{port}/dicomweb"
    process.terminate()
    process.wait(timeout=30)


def test_chunked_stow_under_gunicorn(gunicorn, auth):
    data = sample_file("CT_small.dcm").read_bytes()

    def chunks():
        for piece in multipart_body("CHUNKS", [("application/dicom", [data])]):
            for start in range(0, len(piece), 1000):
                yield piece[start : start + 1000]

    response = requests.post(
        f"{gunicorn}/studies",
        data=chunks(),  # a generator: requests sends Transfer-Encoding: chunked
        auth=auth,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=CHUNKS'},
        timeout=60,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200, response.text
    assert Instance.objects.count() == 1
