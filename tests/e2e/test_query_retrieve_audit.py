"""One audit record per DICOM query, retrieval and Storage Commitment request, with the calling
AE, its address and what was asked: DCMTK's findscu, movescu and getscu, and pynetdicom's
N-ACTION, against the real SCP."""

import pytest
from pydicom.uid import generate_uid

from audit.models import COMMITMENT, FAILURE, QUERY, RETRIEVE, SUCCESS, AuditEvent
from tests.audit.atna_schema import audit_messages_checked  # noqa: F401 - fixture used by name
from tests.conftest import free_port
from tests.e2e.test_query_retrieve import (  # noqa: F401 - fixtures used by name
    CT,
    MR,
    _dcmtk,
    _register,
    archive,
    findscu,
)
from tests.e2e.test_storage_commitment import Requester, _stored, requester  # noqa: F401
from tests.peers import eventually

# Every audit record these tests leave makes a valid DICOM audit message.
pytestmark = pytest.mark.usefixtures("audit_messages_checked")


def _records(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def _one(action: str) -> AuditEvent:
    assert eventually(lambda: len(_records(action)) >= 1)
    records = _records(action)
    assert len(records) == 1, [(r.action, r.detail) for r in records]
    return records[0]


def test_findscu_leaves_one_query_record_with_its_keys(archive, tmp_path):  # noqa: F811
    found = findscu(
        archive.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=1CT1",
        "StudyInstanceUID", "PatientName",
    )  # fmt: skip
    assert len(found) == 1
    record = _one(QUERY)
    assert record.outcome == SUCCESS
    assert record.ae_title == "FINDSCU"
    assert record.peer_address == "127.0.0.1"
    assert record.patient_id == "1CT1"
    assert record.detail["via"] == "dicom"
    assert record.detail["service"] == "C-FIND"
    assert record.detail["level"] == "STUDY"
    assert record.detail["keys"] == {"PatientID": "1CT1"}
    assert record.detail["matches"] == 1
    assert record.detail["status"] == "0x0000"


def test_a_refused_query_is_recorded_as_a_failure(archive, tmp_path):  # noqa: F811
    result = _dcmtk(
        "findscu", "-S", "-aet", "FINDSCU", "-aec", "TEST_SCP", "-k", "QueryRetrieveLevel=STUDY",
        "-k", "SOPInstanceUID=1.2.3", "127.0.0.1", archive.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    record = _one(QUERY)
    assert record.outcome == FAILURE
    assert record.detail["status"] == "0xA900"


def test_movescu_leaves_one_retrieve_record_saying_what_went_where(archive, tmp_path):  # noqa: F811
    port = free_port()
    _register("MOVESCU", port)
    out = tmp_path / "moved"
    out.mkdir()
    result = _dcmtk(
        "movescu", "-S", "-aet", "MOVER", "-aec", "TEST_SCP", "-aem", "MOVESCU",
        "+P", port, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={CT.StudyInstanceUID}", "127.0.0.1", archive.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    record = _one(RETRIEVE)
    assert record.outcome == SUCCESS
    assert (record.ae_title, record.peer_address) == ("MOVER", "127.0.0.1")
    assert record.study_instance_uid == CT.StudyInstanceUID
    assert record.detail["service"] == "C-MOVE"
    assert record.detail["destination"] == "MOVESCU"
    assert record.detail["keys"] == {"StudyInstanceUID": CT.StudyInstanceUID}
    assert (record.detail["completed"], record.detail["failed"]) == (1, 0)
    assert record.detail["status"] == "0x0000"


def test_movescu_to_an_unknown_destination_is_recorded_as_a_failure(archive, tmp_path):  # noqa: F811
    result = _dcmtk(
        "movescu", "-S", "-aet", "MOVER", "-aec", "TEST_SCP", "-aem", "NOBODY", "-k",
        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT.StudyInstanceUID}",
        "127.0.0.1", archive.port,
    )  # fmt: skip
    assert b"MoveDestinationUnknown" in result.stderr
    record = _one(RETRIEVE)
    assert record.outcome == FAILURE
    assert record.detail["destination"] == "NOBODY"
    assert record.detail["status"] == "0xA801"


def test_getscu_leaves_one_retrieve_record_with_the_requester_as_destination(archive, tmp_path):  # noqa: F811
    out = tmp_path / "got"
    out.mkdir()
    result = _dcmtk(
        "getscu", "-S", "-aet", "GETSCU", "-aec", "TEST_SCP", "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={MR.StudyInstanceUID}",
        "127.0.0.1", archive.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    record = _one(RETRIEVE)
    assert record.outcome == SUCCESS
    assert (record.ae_title, record.peer_address) == ("GETSCU", "127.0.0.1")
    assert record.study_instance_uid == MR.StudyInstanceUID
    assert record.detail["service"] == "C-GET"
    assert record.detail["destination"] == "GETSCU"
    assert (record.detail["completed"], record.detail["failed"]) == (1, 0)


def test_storage_commitment_request_leaves_one_commitment_record(scp, requester):  # noqa: F811
    references = _stored(scp)
    uid = generate_uid()
    assert requester.request(scp.port, references, uid) == 0x0000
    record = _one(COMMITMENT)
    assert record.outcome == SUCCESS
    assert (record.ae_title, record.peer_address) == (requester.title, "127.0.0.1")
    assert record.detail["transaction_uid"] == uid
    assert record.detail["instances"] == 2
    assert record.detail["status"] == "0x0000"
    assert isinstance(requester, Requester)
