"""The audit trail: one append-only row per access to patient data (HIPAA 45 CFR 164.312(b),
IHE ATNA), in the style of Django's admin LogEntry: constants here, one writer function
(audit.services.audit_record), newest first.

Identifiers are plain strings, not foreign keys, so that a record outlives what it names (a
deletion is itself recorded). Sizes follow the DICOM VRs: UI 64, LO 64 (PatientID), AE 16.
"""

from django.db import models
from django.utils import timezone

# What was done. Web, DICOM and DICOMweb accesses share the verbs; `detail["via"]` says which.
LOGIN = "login"
LOGIN_FAILED = "login-failed"
LOGOUT = "logout"
LOCKOUT = "lockout"
VIEW = "view"  # a patient, study, series or instance page (an instance's with its tag dump)
QUERY = "query"  # a list searched or filtered in the admin; C-FIND; QIDO-RS
PREVIEW = "preview"
DOWNLOAD = "download"
DELETE = "delete"
EXPORT = "export"  # sent to another AE
STORE = "store"  # C-STORE received (per association and study); STOW-RS
RETRIEVE = "retrieve"  # C-MOVE, C-GET; WADO
COMMITMENT = "commitment"  # Storage Commitment
RULE_CHANGE = "rule-change"  # allowed AEs, SOP class rules, remote AEs, forwarding rules
AUDIT_ACCESS = "audit-access"  # the audit trail itself read or exported (PS3.15 A.5.3.2)
AUDIT_PRUNE = "audit-prune"  # records older than the retention removed
REFUSED = "refused"  # a signed-in user refused (403): not in their role, or no CSRF token
ACTIONS = [
    (LOGIN, "login"),
    (LOGIN_FAILED, "failed login"),
    (LOGOUT, "logout"),
    (LOCKOUT, "lockout"),
    (VIEW, "view"),
    (QUERY, "query"),
    (PREVIEW, "preview"),
    (DOWNLOAD, "download"),
    (DELETE, "delete"),
    (EXPORT, "export"),
    (STORE, "store"),
    (RETRIEVE, "retrieve"),
    (COMMITMENT, "storage commitment"),
    (RULE_CHANGE, "access rule change"),
    (AUDIT_ACCESS, "audit trail read"),
    (AUDIT_PRUNE, "audit trail pruned"),
    (REFUSED, "refused"),
]

# PS3.15 A.5 EventOutcomeIndicator: 0 success, 4 minor failure (e.g. refused: no
# permission), 8 serious failure, 12 major failure.
SUCCESS = "success"
DENIED = "denied"
FAILURE = "failure"
OUTCOMES = [(SUCCESS, "success"), (DENIED, "denied"), (FAILURE, "failure")]


class AuditEvent(models.Model):
    time = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=16, choices=ACTIONS)
    outcome = models.CharField(max_length=8, choices=OUTCOMES, default=SUCCESS)
    # The actor: a Django user (web, DICOMweb), or a calling AE title (DICOM); the address is
    # the client's (web) or the peer's (DICOM).
    user = models.CharField(max_length=150, blank=True)
    ae_title = models.CharField("AE title", max_length=16, blank=True)
    peer_address = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField("patient ID", max_length=64, blank=True)
    study_instance_uid = models.CharField("study instance UID", max_length=64, blank=True)
    series_instance_uid = models.CharField("series instance UID", max_length=64, blank=True)
    sop_instance_uid = models.CharField("SOP instance UID", max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    # When it went to the audit record repository (AUDIT_SYSLOG); NULL: queued, or no export.
    exported_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-time", "-pk"]
        indexes = [
            # The export queue (audit.syslog): records not sent yet, oldest first.
            models.Index(
                fields=["id"],
                condition=models.Q(exported_at__isnull=True),
                name="audit_event_unexported",
            ),
            # The admin's list and date filter, `auditcheck` per day, retention.
            models.Index(fields=["time"], name="audit_event_time"),
            # The admin's filters: who, which patient, what.
            models.Index(fields=["user", "time"], name="audit_event_user_time"),
            models.Index(fields=["patient_id", "time"], name="audit_event_patient_time"),
            models.Index(fields=["action", "time"], name="audit_event_action_time"),
        ]

    def __str__(self) -> str:
        actor = self.user or self.ae_title or "?"
        return f"{self.time:%Y-%m-%d %H:%M:%S} {actor} {self.action} {self.outcome}"
