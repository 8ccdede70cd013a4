"""Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) using our /dicomweb/ as a
DICOMweb server: it retrieves a study from us (WADO-RS) and stores one into us (STOW-RS)."""

import json
import os
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from archive.models import Instance
from tests.conftest import sample_file
from tests.orthanc import Orthanc

from .conftest import PASSWORD

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def orthanc(tmp_path, gunicorn, web_user):
    if not PLUGIN.is_file():
        message = "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = {
        # gunicorn: Orthanc sends STOW-RS bodies chunked, which Django's test server drops.
        "Url": f"{gunicorn}/",
        "Username": web_user.username,
        "Password": PASSWORD,
    }
    peer = Orthanc(
        tmp_path / "orthanc",
        ae_title="ORTHANC",
        modalities={},
        extra={
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"pacs": server}},
        },
    )
    yield peer
    peer.stop()


def test_orthanc_retrieves_a_study_from_us(orthanc, client):
    ct = dcmread(sample_file("CT_small.dcm"))
    client.store_instances([ct])
    orthanc.post(
        "/dicom-web/servers/pacs/retrieve",
        {"Resources": [{"Study": ct.StudyInstanceUID}], "Synchronous": True},
    )
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
    assert [i["MainDicomTags"]["SOPInstanceUID"] for i in found] == [ct.SOPInstanceUID]


def test_orthanc_stores_a_study_into_us(orthanc):
    data = sample_file("MR_small.dcm").read_bytes()
    request = urllib.request.Request(orthanc.url("/instances"), data=data, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        uploaded = json.loads(response.read())
    assert Instance.objects.count() == 0
    orthanc.post(
        "/dicom-web/servers/pacs/stow",
        {"Resources": [uploaded["ParentStudy"]], "Synchronous": True},
    )
    [stored] = Instance.objects.all()
    assert stored.sop_instance_uid == dcmread(sample_file("MR_small.dcm")).SOPInstanceUID
