"""A reason for every refusal, over real associations: refused presentation contexts (DCMTK's
storescu, findscu, movescu, getscu), aborts by the peer and by us, requests for services we do
not provide; each in the association log and, where it is a failure, on the status page."""

import struct
import time
from io import BytesIO
from pathlib import Path

import pytest
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import N_CREATE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    UltrasoundImageStorage,
    Verification,
)

from receiver.models import AssociationLog, SOPClassRule
from receiver.status import receiver_status
from tests.conftest import sample_file
from tests.peers import eventually, run_dcmtk, scu

pytestmark = pytest.mark.dcmtk


def ended_row(**filters) -> AssociationLog:
    assert eventually(
        lambda: AssociationLog.objects.filter(ended_at__isnull=False, **filters).exists()
    ), list(AssociationLog.objects.values("outcome", "reason", "calling_ae_title"))
    return AssociationLog.objects.get(ended_at__isnull=False, **filters)


def problem_reasons() -> list[str]:
    return [p["reason"] for p in receiver_status(timezone.now())["problems"]]


@pytest.fixture
def us_file(tmp_path: Path) -> Path:
    """An ultrasound instance (the CT sample relabelled)."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.Modality = "US"
    path = tmp_path / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_storage_class_refused_at_negotiation_is_logged_with_its_reason(start_scp, us_file):
    """The issue's case: US from MR_SCANNER with accepted_sop_classes [CT, MR]."""
    server = start_scp(accepted_sop_classes="CT,MR")
    result = run_dcmtk(
        "storescu", "-R", "-aet", "MR_SCANNER", "-aec", "TEST_SCP", "127.0.0.1", server.port,
        us_file,
    )  # fmt: skip
    assert result.returncode != 0  # the sender sees no acceptable presentation context
    row = ended_row(calling_ae_title="MR_SCANNER")
    # storescu closes the connection when nothing it proposed was accepted.
    assert row.outcome in (AssociationLog.RELEASED, AssociationLog.ABORTED)
    assert row.refusals["contexts"] == [
        {
            "uid": UltrasoundImageStorage,
            "name": "Ultrasound Image Storage",
            "why": "not in --accept",
        }
    ]
    assert "Ultrasound Image Storage (not in --accept)" in row.reason
    assert row.reason in problem_reasons()


def test_admin_rule_and_unknown_class_are_refused_with_their_reasons(scp, tmp_path):
    """The two other reasons, from dcmsend (storescu will not send a class it does not know):
    an admin's SOP class rule, and a class unknown here."""
    SOPClassRule.objects.create(sop_classes="CT Image Storage", action=SOPClassRule.REFUSE)
    private = dcmread(sample_file("CT_small.dcm"))
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.7"
    private.save_as(tmp_path / "private.dcm", enforce_file_format=True)
    result = run_dcmtk(
        "dcmsend", "-aet", "LAB_SCU", "-aec", "TEST_SCP", "127.0.0.1", scp.port,
        sample_file("CT_small.dcm"), tmp_path / "private.dcm",
    )  # fmt: skip
    row = ended_row(calling_ae_title="LAB_SCU")
    assert {c["uid"]: c["why"] for c in row.refusals["contexts"]} == {
        CTImageStorage: "refused by the admin's SOP class rule 'CT Image Storage'",
        "1.2.826.0.1.3680043.9.7": "unknown SOP class",
    }
    assert row.reason in problem_reasons(), result.stdout + result.stderr


def test_refused_classes_beside_a_stored_instance_are_logged_but_no_problem(start_scp):
    server = start_scp(accepted_sop_classes="CT")
    # storescu proposes many storage classes for one CT file: most are refused.
    result = run_dcmtk(
        "storescu", "-aec", "TEST_SCP", "127.0.0.1", server.port, sample_file("CT_small.dcm")
    )
    assert result.returncode == 0, result.stderr
    row = ended_row()
    assert row.instances_stored == 1
    assert row.reason.startswith("refused ")
    assert problem_reasons() == []


@pytest.mark.parametrize(
    ("tool", "arguments", "service"),
    [
        # Query/Retrieve is served on the Patient and Study Root models; these are not.
        ("findscu", ["-W", "-k", "ScheduledProcedureStepSequence"], "Modality Worklist"),
        ("movescu", ["-O", "-aem", "ELSEWHERE", "-k", "QueryRetrieveLevel=STUDY"], "MOVE"),
        ("getscu", ["-O", "-k", "QueryRetrieveLevel=STUDY"], "GET"),
    ],
)
def test_services_we_do_not_provide_are_refused_with_a_reason(scp, tool, arguments, service):
    run_dcmtk(tool, "-aec", "TEST_SCP", *arguments, "127.0.0.1", scp.port)
    row = ended_row()
    refused = {c["name"]: c["why"] for c in row.refusals["contexts"]}
    assert any(
        service in name and why == "not a service this receiver provides"
        for name, why in refused.items()
    ), refused
    assert row.reason in problem_reasons()


def test_a_request_for_a_service_we_do_not_provide_is_counted(scp):
    """An N-CREATE-RQ sent on an accepted context: recorded as a request we do not serve."""
    ae = scu()
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    assert assoc.is_established
    request = N_CREATE()
    request.MessageID = 7
    request.AffectedSOPClassUID = ModalityPerformedProcedureStep
    request.AffectedSOPInstanceUID = "1.2.3.4"
    assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
    time.sleep(0.5)
    if assoc.is_established:
        assoc.release()
    row = ended_row()
    # pynetdicom has no handler to answer with and leaves the association to its requester.
    assert row.outcome == AssociationLog.RELEASED
    assert row.refusals["requests"] == {"N-CREATE-RQ": 1}
    assert "requests for services not provided: N-CREATE-RQ×1" in row.reason
    assert row.reason in problem_reasons()


def _encoded(ds: Dataset) -> BytesIO:
    return BytesIO(encode(ds, False, True))  # explicit VR little endian


def test_abort_by_the_peer_is_logged_as_such(scp):
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    assert assoc.is_established
    assoc.abort()
    row = ended_row()
    assert (row.outcome, row.reason) == (AssociationLog.ABORTED, "aborted by the peer (A-ABORT)")
    assert row.reason in problem_reasons()


def test_network_timeout_is_logged_as_such(start_scp):
    server = start_scp(network_timeout=1.0)
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    row = ended_row()
    assert row.outcome == AssociationLog.TIMED_OUT
    assert row.reason == "nothing received for 1 s (network timeout)"
    assert row.reason in problem_reasons()


def test_broken_framing_is_logged_as_such(scp):
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    assert assoc.is_established
    body = struct.pack(">LBB", 500, 1, 0x03) + b"\0" * 10  # an item longer than its PDU
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(body)) + body)
    row = ended_row()
    assert row.outcome == AssociationLog.ABORTED
    assert row.reason.startswith("broken framing from the peer: "), row.reason
    assert row.reason in problem_reasons()


def test_shutdown_grace_running_out_is_logged_as_such(start_scp):
    server = start_scp()
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    server.stop(grace=0.5)
    row = ended_row()
    assert row.outcome == AssociationLog.ABORTED
    assert row.reason == "shutdown: still open after the 0.5 s grace period"
    assert row.reason in problem_reasons()


def test_a_pdu_over_the_limit_is_logged_as_such(scp):
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    assert assoc.is_established
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, 10 * 2**20))  # P-DATA-TF of 10 MB
    row = ended_row()
    assert row.outcome == AssociationLog.ABORTED
    assert row.reason == "PDU of 10485760 bytes announced, over 131072"
    assert row.reason in problem_reasons()
