"""Every access to patient data leaves exactly one audit record with the right actor and object,
through the real path: Django's test client for the pages, DCMTK's storescu and pynetdicom for
C-STORE."""

import csv
import datetime as dt
import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from archive.models import Instance, Patient, Study
from audit.models import (
    AUDIT_ACCESS,
    DELETE,
    DOWNLOAD,
    FAILURE,
    LOGIN,
    LOGIN_FAILED,
    LOGOUT,
    PREVIEW,
    QUERY,
    RULE_CHANGE,
    STORE,
    VIEW,
    AuditEvent,
)
from audit.services import audit_record
from receiver.models import AllowedAE
from tests.conftest import sample_file
from tests.peers import eventually, run_dcmtk, send_files, send_raw


@pytest.fixture
def ct(scp):
    assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0]
    instance = Instance.objects.select_related("series__study__patient").get()
    AuditEvent.objects.all().delete()  # what follows is what each test looks at
    return instance


@pytest.fixture
def staff(db):
    return User.objects.create_superuser("alice", "", "correct horse battery")


@pytest.fixture
def alice(client, staff):
    client.force_login(staff)
    AuditEvent.objects.all().delete()
    return client


def _only(**filters) -> AuditEvent:
    events = list(AuditEvent.objects.filter(**filters))
    assert len(events) == 1, [str(e) for e in AuditEvent.objects.all()]
    return events[0]


def _target(instance: Instance, level: str) -> dict[str, str]:
    series, study = instance.series, instance.series.study
    target = {"patient_id": study.patient.patient_id}
    if level in ("study", "series", "instance"):
        target["study_instance_uid"] = study.study_instance_uid
    if level in ("series", "instance"):
        target["series_instance_uid"] = series.series_instance_uid
    if level == "instance":
        target["sop_instance_uid"] = instance.sop_instance_uid
    return target


@pytest.mark.parametrize("level", ["patient", "study", "series", "instance"])
def test_viewing_a_page_is_one_record_naming_the_user_and_object(alice, ct, level):
    obj = {
        "patient": ct.series.study.patient,
        "study": ct.series.study,
        "series": ct.series,
        "instance": ct,
    }[level]
    response = alice.get(reverse(f"admin:archive_{level}_change", args=[obj.pk]))
    assert response.status_code == 200
    event = _only(action=VIEW)
    assert event.user == "alice" and event.peer_address == "127.0.0.1"
    assert event.outcome == "success" and event.detail["via"] == "web"
    for field, value in _target(ct, level).items():
        assert getattr(event, field) == value, field
    if level == "instance":
        assert event.detail["tag_dump"] is True


def test_preview_download_and_series_preview_are_recorded(alice, ct):
    alice.get(reverse("archive-instance-preview", args=[ct.pk]))
    event = _only(action=PREVIEW)
    assert event.sop_instance_uid == ct.sop_instance_uid and event.user == "alice"
    AuditEvent.objects.all().delete()
    alice.get(reverse("archive-series-preview", args=[ct.series_id]))
    assert _only(action=PREVIEW).series_instance_uid == ct.series.series_instance_uid
    response = alice.get(reverse("archive-instance-download", args=[ct.pk]))
    b"".join(response.streaming_content)
    event = _only(action=DOWNLOAD)
    assert event.sop_instance_uid == ct.sop_instance_uid and event.detail["bytes"] == ct.size


def test_a_list_search_is_recorded_with_its_parameters(alice, ct):
    alice.get(reverse("admin:archive_patient_changelist"), {"q": "Compressed"})
    event = _only(action=QUERY)
    assert event.detail == {"via": "web", "list": "patient", "parameters": {"q": ["Compressed"]}}


def test_deletion_is_recorded_with_what_it_removed(alice, ct):
    patient = ct.series.study.patient
    response = alice.post(
        reverse("admin:archive_patient_delete", args=[patient.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Patient.objects.exists()
    event = _only(action=DELETE)
    assert event.patient_id == patient.patient_id and event.user == "alice"
    assert event.detail["removed"] == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


def test_bulk_deletion_leaves_one_record_per_selected_object(alice, scp):
    names = ["CT_small.dcm", "MR_small.dcm"]
    assert send_files(scp.port, [sample_file(n) for n in names]) == [0, 0]
    AuditEvent.objects.all().delete()
    pks = list(Study.objects.values_list("pk", flat=True))
    response = alice.post(
        reverse("admin:archive_study_changelist"),
        {"action": "delete_selected", "_selected_action": pks, "post": "yes"},
    )
    assert response.status_code == 302 and not Study.objects.exists()
    events = AuditEvent.objects.filter(action=DELETE)
    assert sorted(e.study_instance_uid for e in events) == sorted(
        str(dcmread(sample_file(n)).StudyInstanceUID) for n in names
    )


def test_logins_failed_logins_and_logouts(client, staff):
    url = reverse("admin:login")
    client.post(url, {"username": "alice", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    event = _only(action=LOGIN_FAILED)
    assert (event.user, event.peer_address, event.outcome) == ("alice", "10.0.0.9", "denied")
    client.post(url, {"username": "alice", "password": "correct horse battery"})
    assert _only(action=LOGIN).user == "alice"
    client.post(reverse("admin:logout"))
    assert _only(action=LOGOUT).user == "alice"
    assert "correct horse" not in str(list(AuditEvent.objects.values_list("detail", flat=True)))


def test_changes_to_allowed_aes_are_recorded(alice):
    add = reverse("admin:receiver_allowedae_add")
    response = alice.post(add, {"ae_title": "CT01", "host": "10.0.0.1", "enabled": "on"})
    assert response.status_code == 302
    rule = AllowedAE.objects.get()
    event = _only(action=RULE_CHANGE)
    assert event.detail["change"] == "added" and event.detail["fields"]["ae_title"] == "CT01"
    AuditEvent.objects.all().delete()
    change = reverse("admin:receiver_allowedae_change", args=[rule.pk])
    alice.post(change, {"ae_title": "CT01", "host": "10.0.0.2", "enabled": "on"})
    assert _only(action=RULE_CHANGE).detail["fields"] == {"host": "10.0.0.2"}
    AuditEvent.objects.all().delete()
    alice.post(reverse("admin:receiver_allowedae_delete", args=[rule.pk]), {"post": "yes"})
    assert _only(action=RULE_CHANGE).detail["change"] == "deleted"


def test_storescu_association_is_one_record_per_study(scp):
    AuditEvent.objects.all().delete()
    files = [sample_file("CT_small.dcm"), sample_file("MR_small.dcm")]
    result = run_dcmtk(
        "storescu", "-aet", "MODALITY1", "-aec", "TEST_SCP", "127.0.0.1", scp.port, *files
    )
    assert result.returncode == 0, result.stderr
    assert eventually(lambda: AuditEvent.objects.filter(action=STORE).count() == 2)
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        event = _only(action=STORE, study_instance_uid=ds.StudyInstanceUID)
        assert event.ae_title == "MODALITY1" and event.peer_address == "127.0.0.1"
        assert event.patient_id == ds.PatientID and event.outcome == "success"
        assert event.detail["instances"] == 1 and event.detail["association"] == "released"


def test_failed_c_stores_are_one_failure_record(scp):
    AuditEvent.objects.all().delete()
    status = send_raw(
        scp.port, sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3", payload=b"\x00" * 64
    )
    assert status == 0xC000
    assert eventually(lambda: AuditEvent.objects.filter(action=STORE).exists())
    event = _only(action=STORE)
    assert event.outcome == FAILURE and event.detail["failed"] == {"0xC000": 1}
    assert event.ae_title == "TEST_SCU"


def test_many_instances_of_one_study_are_one_record(scp):
    AuditEvent.objects.all().delete()
    from tests.peers import scu

    study, series = generate_uid(), generate_uid()
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    for _ in range(20):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "P20"
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert eventually(lambda: AuditEvent.objects.filter(action=STORE).exists())
    assert _only(action=STORE).detail["instances"] == 20


def test_the_audit_trail_is_read_only_for_superusers_too(alice, staff):
    event = audit_record(VIEW, user="bob", patient_id="P1")
    assert alice.get(reverse("admin:audit_auditevent_add")).status_code == 403
    change = alice.post(
        reverse("admin:audit_auditevent_change", args=[event.pk]), {"user": "mallory"}
    )
    assert change.status_code == 403
    delete = alice.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"})
    assert delete.status_code == 403
    listing = alice.get(reverse("admin:audit_auditevent_changelist"))
    assert listing.status_code == 200 and b"delete_selected" not in listing.content
    assert AuditEvent.objects.get(pk=event.pk).user == "bob"
    # Reading the trail is itself recorded.
    assert AuditEvent.objects.filter(action=AUDIT_ACCESS, user="alice").exists()


def test_the_list_filters_by_actor_patient_action_and_date(alice):
    # Distinctive values: a short one could turn up inside the page's random CSRF token.
    audit_record(VIEW, user="bob-the-reader", patient_id="PATIENT-ONE")
    audit_record(DOWNLOAD, user="carol-downloads", patient_id="PATIENT-TWO")
    url = reverse("admin:audit_auditevent_changelist")
    for query, shown, hidden in [
        ({"user": "bob-the-reader"}, "PATIENT-ONE", "PATIENT-TWO"),
        ({"patient_id": "PATIENT-TWO"}, "carol-downloads", "bob-the-reader"),
        ({"action__exact": DOWNLOAD}, "carol-downloads", "bob-the-reader"),
    ]:
        page = alice.get(url, query).content.decode()
        assert shown in page and hidden not in page, query
    today = timezone.localdate()
    page = alice.get(url, {"time__year": today.year, "time__month": today.month})
    assert page.status_code == 200 and b"bob-the-reader" in page.content


def test_csv_export_follows_the_filters_and_defuses_formulas(alice):
    audit_record(VIEW, user="bob", patient_id="=HYPERLINK(1)")
    audit_record(VIEW, user="carol", patient_id="P2")
    response = alice.get(reverse("admin:audit_auditevent_export"), {"user": "bob"})
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["time", "action", "outcome", "user"]
    assert [row[3] for row in rows[1:]] == ["bob"]
    assert rows[1][6] == "'=HYPERLINK(1)"


def test_auditcheck_counts_per_day_and_shows_gaps(db):
    now = timezone.now()
    for days_ago in (0, 1, 3):
        event = audit_record(VIEW, user="bob")
        AuditEvent.objects.filter(pk=event.pk).update(time=now - dt.timedelta(days=days_ago))
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("auditcheck", "--days", "4", stdout=out)
    assert exited.value.code == 1
    lines = out.getvalue().splitlines()
    gap_day = timezone.localdate(now - dt.timedelta(days=2))
    assert f"{gap_day:%Y-%m-%d}         0  GAP: no records" in lines
    assert lines[-1] == "3 records in 4 days, 1 day(s) without any"
    AuditEvent.objects.create(action=VIEW, time=now - dt.timedelta(days=2))
    call_command("auditcheck", "--days", "4", stdout=io.StringIO())  # no gap: exit 0


def test_retention_removes_old_records_and_records_that_it_did(db, settings):
    old = audit_record(VIEW, user="bob")
    AuditEvent.objects.filter(pk=old.pk).update(time=timezone.now() - dt.timedelta(days=400))
    audit_record(VIEW, user="carol")
    settings.AUDIT_RETENTION_DAYS = 365
    call_command("auditprune", stdout=io.StringIO())
    assert list(AuditEvent.objects.values_list("action", "user")) == [
        ("audit-prune", "auditprune"),
        ("view", "carol"),
    ]
