"""WADO-RS of instances as stored: a body with its Content-Length, whose files the WSGI entry
point sends with sendfile on gunicorn's socket (dicomweb.sendfile) and any other server reads
a chunk at a time; the stored bytes either way, a file gone before the status line left out,
one changed after it cutting the response short."""

import base64
import io
import socket
import threading

import pytest
import requests
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, RequestFactory
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Instance
from archive.storage import Storage
from dicomweb.multipart import multipart_body, parts_read
from dicomweb.sendfile import LengthBroken, sendfile_application
from dicomweb.stow import stow_store
from tests.conftest import sample_file
from tests.dicomweb.conftest import PASSWORD

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _study_body(count: int, boundary: str) -> tuple[str, bytes]:
    """`count` instances of one study, of different sizes, as a STOW-RS body."""
    study = generate_uid()
    parts = []
    for index in range(count):
        ds = dcmread(sample_file("CT_small.dcm"))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImageComments = "x" * (index * 37)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        parts.append(("application/dicom", [out.getvalue()]))
    return study, b"".join(multipart_body(boundary, parts))


def _store(count: int) -> str:
    study, body = _study_body(count, "B")
    outcome = stow_store(body=io.BytesIO(body), boundary="B", study_uid=None, address="test")
    assert len(outcome.stored) == count, outcome.failed
    return study


def _stored_files(storage_dir) -> list[bytes]:
    storage = Storage(storage_dir)
    rows = Instance.objects.order_by("instance_number")
    files = []
    for row in rows:
        with storage.open(row.path) as stream:
            files.append(stream.read())
    return files


def _parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    return [part.body.read() for part in parts_read(io.BytesIO(body), boundary)]


def test_a_study_from_gunicorn_has_its_length_and_the_stored_bytes(gunicorn, auth, storage_dir):
    study, body = _study_body(5, "UP")
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=UP'}
    response = requests.post(f"{gunicorn}/studies", data=body, auth=auth, headers=headers)
    assert response.status_code == 200, response.text
    response = requests.get(
        f"{gunicorn}/studies/{study}", auth=auth, headers={"Accept": AS_STORED}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert "Transfer-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert _parts(response.headers["Content-Type"], response.content) == _stored_files(storage_dir)


def test_the_files_go_to_the_servers_socket_not_through_python(web_user, storage_dir):
    """gunicorn's part emulated: what the application yields is written to the socket named in
    the environ, in order; the files reach that socket by sendfile in between."""
    study = _store(4)
    token = base64.b64encode(f"{web_user.username}:{PASSWORD}".encode()).decode()
    ours, peer = socket.socketpair()
    received = bytearray()

    def read() -> None:
        while data := peer.recv(1 << 16):
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    environ = (
        RequestFactory()
        .get(
            f"/dicomweb/studies/{study}", HTTP_ACCEPT=AS_STORED, HTTP_AUTHORIZATION=f"Basic {token}"
        )
        .environ
    )
    environ["gunicorn.socket"] = ours
    started: list[tuple[str, dict[str, str]]] = []
    body = sendfile_application(WSGIHandler())(
        environ, lambda status, headers, exc_info=None: started.append((status, dict(headers)))
    )
    yielded = 0
    try:
        for piece in body:
            yielded += len(piece)
            ours.sendall(piece)
    finally:
        body.close()
        ours.close()
        reader.join()
        peer.close()
    [(status, headers)] = started
    assert status.startswith("200")
    files = _stored_files(storage_dir)
    assert _parts(headers["Content-Type"], bytes(received)) == files
    assert int(headers["Content-Length"]) == len(received)
    assert yielded < min(len(f) for f in files)  # headers and delimiters only


def test_a_file_missing_before_the_status_line_is_left_out(web_user, storage_dir):
    study = _store(3)
    row = Instance.objects.get(instance_number=2)
    Storage(storage_dir).remove(row.path)
    client = Client()
    client.force_login(web_user)
    response = client.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT=AS_STORED)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(body)
    assert len(_parts(response["Content-Type"], body)) == 2


def test_a_file_changed_after_the_status_line_cuts_the_response_short(web_user, storage_dir):
    study = _store(2)
    client = Client()
    client.force_login(web_user)
    response = client.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT=AS_STORED)
    assert response.status_code == 200
    row = Instance.objects.get(instance_number=2)
    # Replaced by a longer file since it was counted (a test reaching the stored file itself).
    with Storage(storage_dir).resolve(row.path).open("ab") as stream:
        stream.write(b"\0" * 10)
    with pytest.raises(LengthBroken):
        b"".join(response.streaming_content)


def test_head_says_the_length_and_sends_no_body(web_user, storage_dir):
    study = _store(2)
    client = Client()
    client.force_login(web_user)
    got = client.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT=AS_STORED)
    length = len(b"".join(got.streaming_content))
    head = client.head(f"/dicomweb/studies/{study}", HTTP_ACCEPT=AS_STORED)
    assert head.status_code == 200
    assert int(head["Content-Length"]) == length
    assert b"".join(head.streaming_content) == b""
