"""STOW-RS with a chunked body (no Content-Length) under gunicorn, where Django alone would
read nothing: the body is read from the WSGI input gunicorn de-chunks."""

import requests

from archive.models import Instance
from dicomweb.multipart import multipart_body
from tests.conftest import sample_file


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


def test_stow_with_content_length_under_gunicorn(gunicorn, auth):
    """A body with Content-Length, read from gunicorn's input in large pieces (LargeReads),
    several parts of several sizes, and one truncated body refused whole."""
    names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    body = b"".join(
        multipart_body(
            "LENGTH", [("application/dicom", [sample_file(n).read_bytes()]) for n in names]
        )
    )
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=LENGTH'}
    response = requests.post(
        f"{gunicorn}/studies", data=body, auth=auth, headers=headers, timeout=60
    )
    assert response.request.headers.get("Content-Length") == str(len(body))
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 3
    assert Instance.objects.count() == 3
    truncated = body[: len(body) // 2]
    response = requests.post(
        f"{gunicorn}/studies", data=truncated, auth=auth, headers=headers, timeout=60
    )
    assert response.status_code == 400, response.text
