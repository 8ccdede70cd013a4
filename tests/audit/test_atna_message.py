"""Every kind of audit record becomes an AuditMessage valid against the schema of PS3.15 A.5.1
(vendored in audit/schema/), with the event codes of A.5.3, whatever the values it carries."""

import base64
import datetime as dt
import json

import pytest
from lxml import etree

from audit.atna import atna_message
from audit.models import (
    ACTIONS,
    DELETE,
    OUTCOMES,
    QUERY,
    STORE,
    AuditEvent,
)
from tests.audit.atna_schema import audit_message_validate

_TIME = dt.datetime(2026, 11, 30, 17, 4, 31, 123456, tzinfo=dt.UTC)


def _event(action: str, outcome: str = "success", **fields) -> AuditEvent:
    return AuditEvent(action=action, outcome=outcome, time=_TIME, **fields)


def _message(event: AuditEvent) -> etree._Element:
    return audit_message_validate(atna_message(event, source_id="pacs", application="MY_PACS"))


@pytest.mark.parametrize("outcome", [value for value, _ in OUTCOMES])
@pytest.mark.parametrize("action", [value for value, _ in ACTIONS])
def test_every_action_and_outcome_with_every_object_is_valid(action, outcome):
    _message(
        _event(
            action,
            outcome,
            user="alice",
            peer_address="192.0.2.7",
            patient_id="PAT-1",
            study_instance_uid="1.2.3.4",
            series_instance_uid="1.2.3.4.5",
            sop_instance_uid="1.2.3.4.5.6",
            detail={"via": "web", "keys": {"PatientID": "PAT*"}},
        )
    )


@pytest.mark.parametrize("action", [value for value, _ in ACTIONS])
def test_every_action_from_a_calling_ae_without_objects_is_valid(action):
    _message(_event(action, ae_title="STORESCU", peer_address="127.0.0.1"))


def test_a_record_with_no_actor_at_all_is_valid():
    root = _message(_event("login-failed", outcome="denied"))
    assert root.find("ActiveParticipant").get("UserID") == "unknown"


@pytest.mark.parametrize(
    "value",
    [
        "\x1b[2J\x1b[31mFAKE",  # ESC: not a character XML 1.0 allows
        "\u202eDI\u202c",  # right-to-left override
        "a<b>&\"c'",
        "line\nbreak\ttab\x00nul",
        "Ünïcödé 患者\uffff",  # and a noncharacter XML has no way to write
    ],
)
def test_hostile_values_stay_well_formed_and_valid(value):
    root = _message(
        _event(
            QUERY,
            user=value,
            ae_title=value[:16],
            peer_address=value,
            patient_id=value,
            study_instance_uid=value,
            detail={"keys": {"PatientID": value}, "list": value},
        )
    )
    patient = root.find("ParticipantObjectIdentification")
    assert "\x1b" not in patient.get("ParticipantObjectID")
    # The query itself goes as it was asked, in base64 (PS3.15 A.5.3.12).
    query = root.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert json.loads(base64.b64decode(query.text)) == {"PatientID": value}


def test_event_codes_follow_a_5_3():
    store = _message(_event(STORE, ae_title="MODALITY", patient_id="P", study_instance_uid="1.2"))
    event = store.find("EventIdentification")
    assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110107", "C")
    roles = [p.find("RoleIDCode").get("csd-code") for p in store.findall("ActiveParticipant")]
    assert roles == ["110153", "110152"]  # the sender is the source, this archive the destination

    deletion = _message(_event(DELETE, user="bob", patient_id="P", study_instance_uid="1.2"))
    event = deletion.find("EventIdentification")
    assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110103", "D")
    study = deletion.findall("ParticipantObjectIdentification")[1]
    assert study.get("ParticipantObjectDataLifeCycle") == "14"  # logical deletion

    query = _message(_event(QUERY, ae_title="FINDSCU", detail={"keys": {"PatientID": "X"}}))
    event = query.find("EventIdentification")
    assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110112", "E")


def test_the_schema_refuses_a_message_that_breaks_it():
    """The validator is not vacuous: what the schema forbids fails."""
    document = atna_message(
        _event(DELETE, user="bob", patient_id="P"), source_id="pacs", application="MY_PACS"
    )
    audit_message_validate(document)
    for broken in (
        document.replace(b'EventActionCode="D"', b'EventActionCode="X"'),
        document.replace(b"<AuditSourceIdentification", b"<AuditSource"),
        document.replace(b'UserIsRequestor="true"', b'UserIsRequestor="yes"'),
    ):
        assert broken != document
        with pytest.raises(AssertionError, match="not a valid DICOM audit message"):
            audit_message_validate(broken)
