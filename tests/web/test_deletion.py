"""Deleting in the admin removes the files with the rows, after a confirmation page."""

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse
from pydicom import dcmread

from archive.models import Instance, Patient, Series, Study
from tests.conftest import sample_file, stored_files
from tests.peers import send_dataset, send_files


@pytest.fixture
def two_patients(scp):
    # Three patients, each with one study of one series of one instance.
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]
    assert send_files(scp.port, [sample_file(n) for n in names]) == [0, 0, 0]
    return scp


def _verify_consistent(storage_dir) -> str:
    out = io.StringIO()
    call_command("verifystorage", "--storage-dir", str(storage_dir), stdout=out)  # exit 0
    return out.getvalue()


def test_deleting_a_study_removes_its_files_and_empty_parents(
    admin_client, two_patients, storage_dir
):
    ct = Instance.objects.select_related("series__study__patient").get(series__modality="CT")
    study = ct.series.study
    url = reverse("admin:archive_study_delete", args=[study.pk])

    confirmation = admin_client.get(url).content.decode()
    assert "Are you sure" in confirmation
    assert "1 stored file(s)" in confirmation
    assert (storage_dir / ct.path).is_file()  # nothing goes before the confirmation

    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not Instance.objects.filter(pk=ct.pk).exists()
    assert not Study.objects.filter(pk=study.pk).exists()
    assert not Patient.objects.filter(patient_id=study.patient.patient_id).exists()
    assert not (storage_dir / ct.path).exists()
    assert not (storage_dir / ct.path).parent.exists()  # its empty folders went too
    # The other patient's files and rows are untouched.
    assert len(stored_files(storage_dir)) == 2 == Instance.objects.count()
    _verify_consistent(storage_dir)


def test_bulk_deleting_instances_removes_the_emptied_parents(
    admin_client, two_patients, storage_dir
):
    mr = Instance.objects.select_related("series__study").get(series__modality="MR")
    response = admin_client.post(
        reverse("admin:archive_instance_changelist"),
        {"action": "delete_selected", "_selected_action": [mr.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Instance.objects.filter(pk=mr.pk).exists()
    assert not Series.objects.filter(pk=mr.series_id).exists()
    assert not Study.objects.filter(pk=mr.series.study_id).exists()
    assert not Patient.objects.filter(pk=mr.series.study.patient_id).exists()
    assert Patient.objects.count() == 2
    assert not (storage_dir / mr.path).exists()
    assert len(stored_files(storage_dir)) == 2
    _verify_consistent(storage_dir)


def test_deleting_a_patient_then_receiving_it_again(admin_client, two_patients, storage_dir):
    patient = Patient.objects.get(studies__series__modality="CT")
    admin_client.post(reverse("admin:archive_patient_delete", args=[patient.pk]), {"post": "yes"})
    assert not Patient.objects.filter(pk=patient.pk).exists()
    assert len(stored_files(storage_dir)) == 2
    # The receiver remembered the deleted series' row; it must notice and index afresh.
    assert send_dataset(two_patients.port, dcmread(sample_file("CT_small.dcm"))) == 0x0000
    assert Instance.objects.filter(series__modality="CT").count() == 1
    assert len(stored_files(storage_dir)) == 3
    _verify_consistent(storage_dir)


def test_a_user_without_delete_permission_cannot_delete(client, two_patients, storage_dir):
    viewer = User.objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_study"))
    client.login(username="viewer", password="pw-for-tests-only")
    study = Study.objects.first()
    response = client.post(reverse("admin:archive_study_delete", args=[study.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert len(stored_files(storage_dir)) == 3
