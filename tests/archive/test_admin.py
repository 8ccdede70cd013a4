import pytest
from django.urls import reverse
from pydicom import dcmread

from archive.models import Instance
from tests.conftest import sample_file
from tests.peers import send_dataset

PAGES = [
    "admin:archive_patient_changelist",
    "admin:archive_study_changelist",
    "admin:archive_series_changelist",
    "admin:archive_instance_changelist",
]


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_user_is_sent_to_login(client, db, page):
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_staff_browses_patient_to_instances_with_counts(admin_client, scp):
    ds = dcmread(sample_file("CT_small.dcm"))
    assert send_dataset(scp.port, ds) == 0x0000
    instance = Instance.objects.select_related("series__study__patient").get()
    patient = instance.series.study.patient

    page = admin_client.get(reverse("admin:archive_patient_changelist"), {"q": patient.patient_id})
    assert page.status_code == 200
    assert "1 study<" in page.content.decode()  # pluralised

    study_id = instance.series.study_id
    studies = admin_client.get(
        reverse("admin:archive_study_changelist"), {"patient__id__exact": patient.pk}
    )
    assert "1 series" in studies.content.decode()
    series = admin_client.get(
        reverse("admin:archive_series_changelist"), {"study__id__exact": study_id}
    )
    assert "1 instance<" in series.content.decode()
    instances = admin_client.get(
        reverse("admin:archive_instance_changelist"), {"series__id__exact": instance.series_id}
    )
    assert instance.sop_instance_uid in instances.content.decode()


def test_index_rows_are_read_only_in_the_admin(admin_client, scp):
    assert send_dataset(scp.port, dcmread(sample_file("MR_small.dcm"))) == 0x0000
    instance = Instance.objects.get()
    page = admin_client.get(reverse("admin:archive_instance_change", args=[instance.pk]))
    assert page.status_code == 200
    assert 'name="sop_instance_uid"' not in page.content.decode()
    assert admin_client.get(reverse("admin:archive_instance_add")).status_code == 403
