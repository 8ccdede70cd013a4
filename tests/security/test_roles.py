"""The roles, page by page: a viewer browses but changes nothing, an operator also deletes and
edits the rules, an auditor sees the audit trail and no patient data. And idle sessions end."""

import time

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from django.urls import reverse

from archive.models import Instance, Patient
from audit.models import LOGOUT, REFUSED, AuditEvent
from audit.roles import AUDITOR, OPERATOR, ROLES, VIEWER, roles_sync
from receiver.models import AllowedAE
from tests.audit.atna_schema import audit_messages_checked  # noqa: F401 - fixture used by name
from tests.conftest import sample_file
from tests.peers import send_files

# Every audit record these tests leave makes a valid DICOM audit message.
pytestmark = pytest.mark.usefixtures("audit_messages_checked")


@pytest.fixture
def ct(scp):
    # A transactional test's database is flushed after it, data migrations' rows included.
    roles_sync(apps)
    assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0]
    return Instance.objects.select_related("series__study__patient").get()


def _client_for(client, role: str):
    user = User.objects.create_user(f"{role}-user", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


def _pages(ct: Instance) -> dict[str, str]:
    series, study = ct.series, ct.series.study
    patient = study.patient
    rule = AllowedAE.objects.get_or_create(ae_title="CT01")[0]
    return {
        "dashboard": reverse("archive-dashboard"),
        "status": reverse("receiver-status"),
        "status.json": reverse("receiver-status-json"),
        "association log": reverse("admin:receiver_associationlog_changelist"),
        "patients": reverse("admin:archive_patient_changelist"),
        "patient": reverse("admin:archive_patient_change", args=[patient.pk]),
        "study": reverse("admin:archive_study_change", args=[study.pk]),
        "series": reverse("admin:archive_series_change", args=[series.pk]),
        "instances": reverse("admin:archive_instance_changelist"),
        "instance": reverse("admin:archive_instance_change", args=[ct.pk]),
        "preview": reverse("archive-instance-preview", args=[ct.pk]),
        "series preview": reverse("archive-series-preview", args=[series.pk]),
        "download": reverse("archive-instance-download", args=[ct.pk]),
        "delete patient": reverse("admin:archive_patient_delete", args=[patient.pk]),
        "delete instance": reverse("admin:archive_instance_delete", args=[ct.pk]),
        "allowed AEs": reverse("admin:receiver_allowedae_changelist"),
        "add allowed AE": reverse("admin:receiver_allowedae_add"),
        "change allowed AE": reverse("admin:receiver_allowedae_change", args=[rule.pk]),
        "SOP class rules": reverse("admin:receiver_sopclassrule_changelist"),
        "audit trail": reverse("admin:audit_auditevent_changelist"),
        "audit CSV": reverse("admin:audit_auditevent_export"),
    }


_BROWSE = {
    "dashboard",
    "status",
    "status.json",
    "association log",
    "patients",
    "patient",
    "study",
    "series",
    "instances",
    "instance",
    "preview",
    "series preview",
    "download",
}
ALLOWED = {
    VIEWER: _BROWSE,
    OPERATOR: _BROWSE
    | {
        "delete patient",
        "delete instance",
        "allowed AEs",
        "add allowed AE",
        "change allowed AE",
        "SOP class rules",
    },
    AUDITOR: {"status", "status.json", "association log", "audit trail", "audit CSV"},
}


def test_the_roles_exist_with_their_permissions(db):
    for role in ROLES:
        assert Group.objects.get(name=role).permissions.exists()
    viewer = {p.codename for p in Group.objects.get(name=VIEWER).permissions.all()}
    assert "view_instance" in viewer and not any(c.startswith("delete_") for c in viewer)


@pytest.mark.parametrize("role", [VIEWER, OPERATOR, AUDITOR])
def test_each_page_is_open_exactly_to_the_roles_that_need_it(client, ct, role):
    client = _client_for(client, role)
    for name, url in _pages(ct).items():
        response = client.get(url)
        if name in ALLOWED[role]:
            assert response.status_code == 200, (role, name, response.status_code)
        else:
            assert response.status_code == 403, (role, name, response.status_code)
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)


def test_a_viewer_cannot_delete_or_change_rules(client, ct):
    client = _client_for(client, VIEWER)
    patient = ct.series.study.patient
    client.post(reverse("admin:archive_patient_delete", args=[patient.pk]), {"post": "yes"})
    client.post(
        reverse("admin:archive_instance_changelist"),
        {"action": "delete_selected", "_selected_action": [ct.pk], "post": "yes"},
    )
    client.post(reverse("admin:receiver_allowedae_add"), {"ae_title": "EVIL", "enabled": "on"})
    assert Patient.objects.filter(pk=patient.pk).exists()
    assert Instance.objects.filter(pk=ct.pk).exists()
    assert not AllowedAE.objects.filter(ae_title="EVIL").exists()
    # Each refusal is in the audit trail.
    refused = AuditEvent.objects.filter(action=REFUSED, user="viewer-user", outcome="denied")
    assert {e.detail["path"] for e in refused} >= {
        reverse("admin:archive_patient_delete", args=[patient.pk]),
        reverse("admin:receiver_allowedae_add"),
    }


def test_an_operator_deletes_and_changes_rules(client, ct):
    client = _client_for(client, OPERATOR)
    response = client.post(reverse("admin:receiver_allowedae_add"), {"ae_title": "CT02"})
    assert response.status_code == 302 and AllowedAE.objects.filter(ae_title="CT02").exists()
    patient = ct.series.study.patient
    client.post(reverse("admin:archive_patient_delete", args=[patient.pk]), {"post": "yes"})
    assert not Patient.objects.exists()


def test_an_auditor_sees_no_images_and_no_patient_data(client, ct):
    client = _client_for(client, AUDITOR)
    for url in [
        reverse("archive-instance-preview", args=[ct.pk]),
        reverse("archive-instance-download", args=[ct.pk]),
        reverse("archive-series-preview", args=[ct.series_id]),
        reverse("admin:archive_instance_change", args=[ct.pk]),
        reverse("archive-dashboard"),
    ]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert response.get("Content-Type", "") not in ("image/png", "application/dicom")
    index = client.get(reverse("admin:index")).content.decode()
    assert "Audit trail" in index and "Patients" not in index


def test_a_session_ends_after_the_idle_time_and_polling_does_not_count(client, ct, settings):
    settings.SESSION_IDLE_MINUTES = 1
    client = _client_for(client, VIEWER)
    assert client.get(reverse("admin:index")).status_code == 200
    session = client.session
    session["last_activity"] = time.time() - 50
    session.save()
    # Polling does not refresh the activity time ...
    poll = client.get(reverse("receiver-status-json"), HTTP_X_BACKGROUND_REFRESH="1")
    assert poll.status_code == 200
    assert client.session["last_activity"] < time.time() - 45
    session = client.session
    session["last_activity"] = time.time() - 61
    session.save()
    # ... and past the idle time the next request finds the user logged out.
    response = client.get(reverse("admin:archive_patient_changelist"))
    assert response.status_code == 302 and "/login/" in response.url
    assert AuditEvent.objects.filter(action=LOGOUT, user="viewer-user").exists()
