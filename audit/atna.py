"""Audit records as DICOM audit messages (PS3.15 A.5, the schema of A.5.1), for an IHE ATNA
audit record repository.

| action | EventID (DCM) | EventActionCode |
|---|---|---|
| login, logout, login-failed, lockout | 110114 User Authentication (+ 110122 / 110123) | E |
| view, preview, commitment | 110103 DICOM Instances Accessed | R |
| delete | 110103 DICOM Instances Accessed | D |
| download, export, retrieve | 110106 Export | R |
| store | 110107 Import | C |
| query | 110112 Query | E |
| rule-change | 110113 Security Alert (+ 110129 Security Configuration) | E |
| audit-access, audit-prune | 110101 Audit Log Used | R, D |
| refused | 110113 Security Alert (+ 110132 Use of Restricted Function) | E |

Every ParticipantObjectIdentification has a ParticipantObjectName or a ParticipantObjectQuery, as
the schema has required since CP-2399. The trail keeps identifiers, not names (no patient name
goes out over syslog), so an object's name is its identifier.

Values come from DICOM peers and web clients and may hold characters XML 1.0 cannot carry (an
ESC in a PatientID makes the whole message unreadable to the repository) or bidi overrides that
dress one ID as another: they go as visible escapes (`\\x1b`, `\\u202e`), as in the web UI.
The tests validate every kind of message against the schema (audit/schema/audit-message.rnc).
"""

import base64
import json
import re
import xml.etree.ElementTree as ET

from archive.safetext import terminal_safe
from audit.models import (
    AUDIT_ACCESS,
    AUDIT_PRUNE,
    COMMITMENT,
    DELETE,
    DENIED,
    DOWNLOAD,
    EXPORT,
    LOCKOUT,
    LOGIN,
    LOGIN_FAILED,
    LOGOUT,
    PREVIEW,
    QUERY,
    REFUSED,
    RETRIEVE,
    RULE_CHANGE,
    STORE,
    SUCCESS,
    VIEW,
    AuditEvent,
)

_ACCESSED = ("110103", "DICOM Instances Accessed")
_EXPORT = ("110106", "Export")
_AUTHENTICATION = ("110114", "User Authentication")
# action: (EventID, EventActionCode, EventTypeCode or None)
_EVENTS: dict[str, tuple[tuple[str, str], str, tuple[str, str] | None]] = {
    LOGIN: (_AUTHENTICATION, "E", ("110122", "Login")),
    LOGIN_FAILED: (_AUTHENTICATION, "E", ("110122", "Login")),
    LOCKOUT: (_AUTHENTICATION, "E", ("110122", "Login")),
    LOGOUT: (_AUTHENTICATION, "E", ("110123", "Logout")),
    VIEW: (_ACCESSED, "R", None),
    PREVIEW: (_ACCESSED, "R", None),
    COMMITMENT: (_ACCESSED, "R", None),
    DELETE: (_ACCESSED, "D", None),
    DOWNLOAD: (_EXPORT, "R", None),
    EXPORT: (_EXPORT, "R", None),
    RETRIEVE: (_EXPORT, "R", None),
    STORE: (("110107", "Import"), "C", None),
    QUERY: (("110112", "Query"), "E", None),
    RULE_CHANGE: (("110113", "Security Alert"), "E", ("110129", "Security Configuration")),
    AUDIT_ACCESS: (("110101", "Audit Log Used"), "R", None),
    AUDIT_PRUNE: (("110101", "Audit Log Used"), "D", None),
    REFUSED: (("110113", "Security Alert"), "E", ("110132", "Use of Restricted Function")),
}
# EventOutcomeIndicator: 0 success, 4 minor failure (refused), 8 serious failure.
_OUTCOME = {SUCCESS: "0", DENIED: "4"}


# What terminal_safe leaves that XML 1.0 still has no way to write.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _safe(value: str) -> str:
    return _NOT_XML.sub("\ufffd", terminal_safe(value))


def _object(
    message: ET.Element, object_id: str, type_code: str, role: str, id_type: tuple[str, ...]
) -> ET.Element:
    """A ParticipantObjectIdentification named by its identifier (see the module docstring)."""
    participant = ET.SubElement(
        message,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": _safe(object_id),
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )
    _code(participant, "ParticipantObjectIDTypeCode", *id_type)
    ET.SubElement(participant, "ParticipantObjectName").text = _safe(object_id)
    return participant


def _code(parent: ET.Element, tag: str, code: str, meaning: str, system: str = "DCM") -> None:
    ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning}
    )


def atna_message(event: AuditEvent, *, source_id: str, application: str) -> bytes:
    """The record as an AuditMessage document (UTF-8). `source_id` names this system
    (AuditSourceID), `application` its UserID as a participant (e.g. its AE title)."""
    event_id, action_code, type_code = _EVENTS[event.action]
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": event.time.isoformat(),
            "EventOutcomeIndicator": _OUTCOME.get(event.outcome, "8"),
        },
    )
    _code(identification, "EventID", *event_id)
    if type_code is not None:
        _code(identification, "EventTypeCode", *type_code)

    # The one who acted: a user (web) or a calling AE (DICOM).
    actor = ET.SubElement(
        message,
        "ActiveParticipant",
        {
            "UserID": _safe(event.user or event.ae_title or "unknown"),
            "UserIsRequestor": "true",
            **(
                {
                    "NetworkAccessPointID": _safe(event.peer_address),
                    "NetworkAccessPointTypeCode": "2",
                }
                if event.peer_address
                else {}
            ),
        },
    )
    if event.ae_title:
        actor.set("AlternativeUserID", _safe(f"AETITLES={event.ae_title}"))
        if event.action == STORE:
            _code(actor, "RoleIDCode", "110153", "Source Role ID")
    ours = ET.SubElement(
        message, "ActiveParticipant", {"UserID": _safe(application), "UserIsRequestor": "false"}
    )
    if event.action == STORE:
        _code(ours, "RoleIDCode", "110152", "Destination Role ID")
    ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": _safe(source_id)})

    if event.patient_id:
        _object(message, event.patient_id, "1", "1", ("2", "Patient Number", "RFC-3881"))
    if event.study_instance_uid:
        study = _object(
            message, event.study_instance_uid, "2", "3", ("110180", "Study Instance UID")
        )
        if event.action == DELETE:
            study.set("ParticipantObjectDataLifeCycle", "14")  # Logical deletion
    if event.action == QUERY:
        query = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": _safe(str(event.detail.get("list", "query"))),
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(query, "ParticipantObjectIDTypeCode", "110181", "SOP Class UID")
        # The query as it was asked, control characters and all: base64 carries any bytes.
        keys = event.detail.get("parameters", event.detail.get("keys", {}))
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(
            json.dumps(keys, sort_keys=True).encode()
        ).decode("ascii")
    return ET.tostring(message, encoding="utf-8", xml_declaration=True)
