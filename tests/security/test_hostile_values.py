"""Values a sender controls, shown to people: control characters escaped in terminals and marked
in pages; HTML in any indexed attribute or AE title stays text; deletion needs the CSRF token;
downloads name the file safely whatever the UID says."""

import io
import json
import logging

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from archive.models import Instance, Patient, Series, Study
from archive.safetext import TerminalSafeFormatter, html_marked, terminal_safe
from receiver.models import AssociationLog
from tests.peers import send_dataset

ESCAPES = "\x1b[2J\x1b[31mFAKE"  # clear the screen, then red
RLO_ID = "\u202e1234-ABC"  # shown reversed: "CBA-4321"
XSS = {
    "PatientName": "<script>alert('pn')</script>",
    "StudyDescription": "<img src=x onerror=alert('sd')>",
    "SeriesDescription": "</title><svg onload=alert('se')>",
    "AccessionNumber": "<b>acc</b>",
    "ReferringPhysicianName": "<iframe src=//x>",
    "BodyPartExamined": "<I>",
}
HOSTILE_AE = "<svg/onload=1>"


def _dataset(**values: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.Modality = "CT"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def hostile(scp):
    """Received over real associations: control characters, bidi overrides and HTML."""
    assert send_dataset(scp.port, _dataset(Modality=ESCAPES, PatientID=RLO_ID)) == 0
    assert send_dataset(scp.port, _dataset(PatientID="P2", **XSS), calling=HOSTILE_AE) == 0
    return scp


def test_terminal_safe_escapes_controls_and_bidi_overrides():
    assert terminal_safe(ESCAPES) == "\\x1b[2J\\x1b[31mFAKE"
    assert terminal_safe(RLO_ID) == "\\u202e1234-ABC"
    assert terminal_safe("a\u2066b\u200fc\x7fd\x85e\tf\ng") == (
        "a\\u2066b\\u200fc\\x7fd\\x85e\\x09f\\x0ag"
    )
    assert terminal_safe("Müller^Jürgen 山田") == "Müller^Jürgen 山田"


def test_html_marking_is_visible_and_leaves_whitespace_alone():
    marked = html_marked("<td>\u202eABC</td>\n\t<td>x\x1by</td>")
    assert "\u202e" not in marked and "\x1b" not in marked
    assert "\\u202e</span>ABC" in marked and "\\x1b</span>y" in marked
    assert "\n\t" in marked


def test_storagestats_prints_no_terminal_escapes(hostile):
    out = io.StringIO()
    call_command("storagestats", stdout=out)
    text = out.getvalue()
    assert "\x1b" not in text
    assert "\\x1b[2J\\x1b[31mFAKE" in text


def test_scpstatus_prints_no_terminal_escapes(db):
    AssociationLog.objects.create(
        calling_ae_title="\x1b[2JEVIL",
        called_ae_title="PACS",
        peer_address="127.0.0.1",
        peer_port=1,
        started_at=timezone.now(),
        outcome=AssociationLog.REJECTED,
        reason="calling AE title not recognised \u202e",
    )
    out = io.StringIO()
    call_command("scpstatus", stdout=out)
    assert "\x1b" not in out.getvalue() and "\u202e" not in out.getvalue()
    assert "\\x1b[2JEVIL" in out.getvalue()


def test_log_lines_escape_values_from_peers():
    formatter = TerminalSafeFormatter("%(message)s")
    record = logging.LogRecord("receiver", logging.INFO, "", 0, "from %s", (ESCAPES,), None)
    assert formatter.format(record) == "from \\x1b[2J\\x1b[31mFAKE"


def test_pages_mark_control_and_bidi_characters(admin_client, hostile):
    patient = Patient.objects.get(patient_id=RLO_ID)
    pages = [
        reverse("admin:archive_patient_changelist"),
        reverse("admin:archive_patient_change", args=[patient.pk]),
        reverse("admin:archive_series_changelist"),
        reverse("admin:archive_study_changelist"),
        reverse("admin:archive_instance_changelist"),
        reverse("archive-dashboard"),
    ]
    for url in pages:
        page = admin_client.get(url).content.decode()
        assert "\u202e" not in page and "\x1b" not in page, url
    patients = admin_client.get(pages[0]).content.decode()
    assert "\\u202e</span>1234-ABC" in patients
    dashboard = admin_client.get(reverse("archive-dashboard")).content.decode()
    assert "\\x1b[2J\\x1b[31mFAKE" in dashboard  # the modality chart's label, as text


def test_status_json_marks_control_characters(admin_client, db):
    AssociationLog.objects.create(
        calling_ae_title="\u202eEVIL",
        called_ae_title="PACS",
        peer_address="127.0.0.1",
        peer_port=1,
        started_at=timezone.now(),
        outcome=AssociationLog.REJECTED,
        reason="unknown",
    )
    status = json.loads(admin_client.get(reverse("receiver-status-json")).content)
    assert status["problems"][0]["calling_ae_title"] == "\\u202eEVIL"
    page = admin_client.get(reverse("receiver-status")).content.decode()
    assert "\u202e" not in page


def test_html_in_indexed_attributes_and_ae_titles_stays_text(admin_client, hostile):
    patient = Patient.objects.get(patient_id="P2")
    study = Study.objects.get(patient=patient)
    series = Series.objects.get(study=study)
    instance = Instance.objects.get(series=series)
    assert instance.calling_ae_title == HOSTILE_AE
    pages = [
        reverse("admin:archive_patient_changelist"),
        reverse("admin:archive_patient_change", args=[patient.pk]),
        reverse("admin:archive_study_changelist"),
        reverse("admin:archive_study_change", args=[study.pk]),
        reverse("admin:archive_series_changelist"),
        reverse("admin:archive_series_change", args=[series.pk]),
        reverse("admin:archive_instance_changelist"),
        reverse("admin:archive_instance_change", args=[instance.pk]),
        reverse("admin:receiver_associationlog_changelist"),
        reverse("archive-dashboard"),
        reverse("receiver-status"),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        for payload in [*XSS.values(), HOSTILE_AE]:
            # BodyPartExamined "<I>" is also an HTML tag name; check it as an element only.
            assert payload not in page, (url, payload)
    dashboard = admin_client.get(reverse("archive-dashboard")).content.decode()
    assert "&lt;svg/onload=1&gt;" in dashboard  # the senders chart, escaped in the SVG


@pytest.mark.django_db(transaction=True)
def test_deletion_without_the_csrf_token_is_refused(hostile):
    User.objects.create_superuser("root", "", "pw")
    client = Client(enforce_csrf_checks=True)
    client.login(username="root", password="pw")
    patient = Patient.objects.get(patient_id="P2")
    url = reverse("admin:archive_patient_delete", args=[patient.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:archive_patient_changelist")
    bulk = {"action": "delete_selected", "_selected_action": [patient.pk], "post": "yes"}
    assert client.post(changelist, bulk).status_code == 403
    assert Patient.objects.filter(pk=patient.pk).exists()
    assert Instance.objects.filter(series__study__patient=patient).count() == 1


@pytest.mark.parametrize(
    "uid",
    [
        '1.2"; filename="evil.sh',
        "1.2\r\nSet-Cookie: a=b",
        "../../etc/passwd",
        "1.2\u202e3",
    ],
)
def test_download_names_the_file_safely_whatever_the_uid(admin_client, hostile, uid):
    instance = Instance.objects.filter(series__study__patient__patient_id="P2").get()
    Instance.objects.filter(pk=instance.pk).update(sop_instance_uid=uid)
    response = admin_client.get(reverse("archive-instance-download", args=[instance.pk]))
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert disposition == f'attachment; filename="instance-{instance.pk}.dcm"'
    b"".join(response.streaming_content)
