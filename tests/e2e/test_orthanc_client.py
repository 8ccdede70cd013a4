"""Orthanc 1.10 as the client: it finds and pulls a study from us (C-FIND, then C-MOVE to
itself), and asks us for Storage Commitment."""

import time

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from routing.models import RemoteAE
from tests.conftest import sample_file
from tests.orthanc import Orthanc
from tests.peers import send_files


@pytest.fixture
def orthanc_and_us(start_scp, tmp_path):
    scp = start_scp()
    peer = Orthanc(
        tmp_path / "orthanc",
        ae_title="ORTHANC",
        modalities={"pacs": ["TEST_SCP", "127.0.0.1", scp.port]},
    )
    RemoteAE.objects.create(ae_title="ORTHANC", host="127.0.0.1", port=peer.dicom_port)
    yield peer, scp
    peer.stop()


def test_orthanc_finds_and_pulls_a_study_by_c_move(orthanc_and_us):
    orthanc, scp = orthanc_and_us
    names = ["CT_small.dcm", "MR_small.dcm", "chrFren.dcm"]
    assert send_files(scp.port, [sample_file(n) for n in names]) == [0, 0, 0]
    mr = dcmread(sample_file("MR_small.dcm"), stop_before_pixels=True)

    query = orthanc.post(
        "/modalities/pacs/query",
        {"Level": "Study", "Query": {"PatientName": "compressed*", "ModalitiesInStudy": "MR"}},
    )
    answers = orthanc.get(f"/queries/{query['ID']}/answers")
    assert answers == ["0"]
    content = orthanc.get(f"/queries/{query['ID']}/answers/0/content?simplify")
    assert content["StudyInstanceUID"] == mr.StudyInstanceUID
    assert content["PatientName"] == "CompressedSamples^MR1"

    orthanc.post(
        f"/queries/{query['ID']}/answers/0/retrieve",
        {"TargetAet": "ORTHANC", "Synchronous": True},
    )
    instances = orthanc.get("/instances?expand")
    assert [i["MainDicomTags"]["SOPInstanceUID"] for i in instances] == [mr.SOPInstanceUID]

    # Non-ASCII names come back right through Orthanc too.
    query = orthanc.post(
        "/modalities/pacs/query", {"Level": "Study", "Query": {"PatientName": "Buc*"}}
    )
    content = orthanc.get(f"/queries/{query['ID']}/answers/0/content?simplify")
    assert content["PatientName"] == "Buc^Jérôme"


def test_orthanc_storage_commitment_success_and_failure(orthanc_and_us):
    orthanc, scp = orthanc_and_us
    assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0]
    ct = dcmread(sample_file("CT_small.dcm"), stop_before_pixels=True)
    unknown = generate_uid()

    job = orthanc.post(
        "/modalities/pacs/storage-commitment",
        {
            "DicomInstances": [
                {"SOPClassUID": ct.SOPClassUID, "SOPInstanceUID": ct.SOPInstanceUID},
                {"SOPClassUID": ct.SOPClassUID, "SOPInstanceUID": unknown},
            ],
            "Timeout": 30,
        },
    )
    deadline = time.monotonic() + 30
    while True:
        report = orthanc.get(f"/storage-commitment/{job['ID']}")
        if report["Status"] != "Pending" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert report["Status"] == "Failure", report
    assert [s["SOPInstanceUID"] for s in report["Success"]] == [ct.SOPInstanceUID]
    [failure] = report["Failures"]
    assert failure["SOPInstanceUID"] == unknown
    assert failure["FailureReason"] == 0x0112

    job = orthanc.post(
        "/modalities/pacs/storage-commitment",
        {"DicomInstances": [[ct.SOPClassUID, ct.SOPInstanceUID]], "Timeout": 30},
    )
    deadline = time.monotonic() + 30
    while True:
        report = orthanc.get(f"/storage-commitment/{job['ID']}")
        if report["Status"] != "Pending" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert report["Status"] == "Success", report
