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
