"""The staff pages over Django's test client: login required, then each page with real data
received over real associations."""

import hashlib
import struct

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage

from archive.models import Instance, Series, Study
from tests.conftest import sample_file
from tests.peers import eventually, send_files, send_raw


def _png_size(body: bytes) -> tuple[int, int]:
    assert body[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", body[16:24])


@pytest.fixture
def received(scp):
    """CT and MR images, a JPEG 2000 NM image, an RLE RGB image and an ECG waveform, received over
    one association."""
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "waveform_ecg.dcm"]
    assert send_files(scp.port, [sample_file(n) for n in names]) == [0] * len(names)
    return {
        name: Instance.objects.get(
            sop_instance_uid=dcmread(sample_file(name), stop_before_pixels=True).SOPInstanceUID
        )
        for name in names
    }


STAFF_PAGES = [
    ("archive-dashboard", None),
    ("receiver-status", None),
    ("receiver-status-json", None),
    ("archive-instance-preview", "instance"),
    ("archive-instance-download", "instance"),
    ("archive-series-preview", "series"),
    ("admin:archive_instance_change", "instance"),
    ("admin:archive_study_change", "study"),
    ("admin:receiver_associationlog_changelist", None),
    ("admin:receiver_receiverprocess_changelist", None),
]


def _url(name: str, kind: str | None, instance: Instance) -> str:
    ids = {"instance": instance.pk, "series": instance.series_id, "study": instance.series.study_id}
    return reverse(name, args=[ids[kind]] if kind else [])


@pytest.mark.parametrize(("name", "kind"), STAFF_PAGES)
def test_every_page_needs_a_staff_login(client, received, name, kind):
    url = _url(name, kind, received["CT_small.dcm"])
    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("admin:login"))

    User.objects.create_user("clerk", password="pw-for-tests-only")  # not staff
    client.login(username="clerk", password="pw-for-tests-only")
    assert client.get(url).status_code == 302


@pytest.mark.parametrize(("name", "kind"), STAFF_PAGES)
def test_staff_sees_every_page(admin_client, received, name, kind):
    response = admin_client.get(_url(name, kind, received["CT_small.dcm"]))
    assert response.status_code == 200


def test_admin_index_links_to_dashboard_and_status(admin_client, db):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert reverse("archive-dashboard") in page
    assert reverse("receiver-status") in page


def test_dashboard_shows_counts_and_charts(admin_client, received, storage_dir):
    page = admin_client.get(reverse("archive-dashboard")).content.decode()
    assert '<th scope="row">Instances</th><td>5</td>' in page
    assert '<th scope="row">Patients</th><td>' in page
    # Four charts, the daily one with 30 columns, the hourly one with 48.
    assert page.count('<svg class="chart"') == 4
    day_chart = page.split('id="chart-per-day"')[1].split("</svg>")[0]
    assert day_chart.count('<rect class="bar"') == 30
    assert ": 5 instances</title>" in day_chart  # today's column
    hour_chart = page.split('id="chart-per-hour"')[1].split("</svg>")[0]
    assert hour_chart.count('<rect class="bar"') == 48
    senders = page.split('id="chart-senders"')[1].split("</svg>")[0]
    assert "<title>TEST_SCU: 5</title>" in senders
    modalities = page.split('id="chart-modalities"')[1].split("</svg>")[0]
    assert "<title>CT: 1</title>" in modalities and "<title>MR: 1</title>" in modalities


def test_instance_page_shows_header_preview_and_download(admin_client, received):
    instance = received["CT_small.dcm"]
    page = admin_client.get(reverse("admin:archive_instance_change", args=[instance.pk]))
    text = page.content.decode()
    assert "(0010,0010) PN PatientName: CompressedSamples^CT1" in text
    assert "(7FE0,0010)" not in text  # no pixel data in the dump
    assert reverse("archive-instance-preview", args=[instance.pk]) in text
    assert reverse("archive-instance-download", args=[instance.pk]) in text


def test_download_streams_the_stored_file(admin_client, received):
    instance = received["CT_small.dcm"]
    response = admin_client.get(reverse("archive-instance-download", args=[instance.pk]))
    assert response.streaming
    body = b"".join(response.streaming_content)
    assert response["Content-Type"] == "application/dicom"
    assert f'filename="{instance.sop_instance_uid}.dcm"' in response["Content-Disposition"]
    assert hashlib.sha256(body).hexdigest() == instance.sha256
    assert len(body) == instance.size


def test_download_never_leaves_the_storage_directory(admin_client, received):
    instance = received["CT_small.dcm"]
    for path in ["../../../../etc/passwd", "/etc/passwd", ".incoming/x", "a/../../outside.dcm"]:
        Instance.objects.filter(pk=instance.pk).update(path=path)
        url = reverse("archive-instance-download", args=[instance.pk])
        assert admin_client.get(url).status_code == 404, path
        preview = admin_client.get(reverse("archive-instance-preview", args=[instance.pk]))
        assert preview.status_code == 404, path


def test_previews_of_uncompressed_and_compressed_images(admin_client, received):
    for name, size in [
        ("CT_small.dcm", (128, 128)),
        ("JPEG2000.dcm", (1024, 256)),
        ("SC_rgb_rle.dcm", (100, 100)),
    ]:
        instance = received[name]
        response = admin_client.get(reverse("archive-instance-preview", args=[instance.pk]))
        assert response["Content-Type"] == "image/png", name
        width, height = _png_size(response.content)
        # Scaled down to at most 512 pixels a side, keeping the aspect ratio.
        assert max(width, height) <= 512
        assert width / height == pytest.approx(size[1] / size[0], rel=0.05), name


def test_preview_window_changes_the_image(admin_client, received):
    url = reverse("archive-instance-preview", args=[received["CT_small.dcm"].pk])
    default = admin_client.get(url).content
    narrow = admin_client.get(url, {"wc": "40", "ww": "80"}).content
    assert _png_size(default) == _png_size(narrow)
    assert default != narrow


def test_preview_of_a_non_image_is_a_placeholder(admin_client, received):
    response = admin_client.get(
        reverse("archive-instance-preview", args=[received["waveform_ecg.dcm"].pk])
    )
    assert response["Content-Type"] == "image/svg+xml"
    assert response["X-Preview"] == "unavailable"
    assert b"No preview" in response.content


def test_study_page_shows_a_strip_of_series_previews(admin_client, received):
    study = Study.objects.get(series__instances=received["CT_small.dcm"])
    page = admin_client.get(reverse("admin:archive_study_change", args=[study.pk])).content
    series = Series.objects.filter(study=study)
    for s in series:
        assert reverse("archive-series-preview", args=[s.pk]).encode() in page
    preview = admin_client.get(reverse("archive-series-preview", args=[series[0].pk]))
    assert _png_size(preview.content)[0] > 0


def test_metrics_need_staff_or_the_token(client, admin_client, received, settings):
    assert client.get("/metrics").status_code == 401
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert scraped.status_code == 200
    assert admin_client.get("/metrics").status_code == 200
    text = scraped.content.decode()
    assert 'dicom_instances_received_total{kind="stored"} 5.0' in text
    assert 'dicom_associations_total{outcome="released"} 1.0' in text
    assert "dicom_archive_instances 5.0" in text
    assert "dicom_storage_free_bytes " in text
    assert "dicom_active_associations 0.0" in text
    assert 'dicom_store_failures_total{status="0xA900"}' not in text


def test_metrics_count_failures_by_status(client, scp, settings):
    settings.METRICS_TOKEN = "t"
    send_raw(scp.port, sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3", payload=b"junk")

    def failures_counted() -> bool:
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode()
        return 'dicom_store_failures_total{status="0xC000"} 1.0' in text

    assert eventually(failures_counted)


def test_studies_and_series_filter_by_calling_ae_title(admin_client, scp):
    assert send_files(scp.port, [sample_file("CT_small.dcm")], calling="CT_ROOM_1") == [0]
    assert send_files(scp.port, [sample_file("MR_small.dcm")], calling="MR_ROOM_2") == [0]
    studies = admin_client.get(
        reverse("admin:archive_study_changelist"), {"calling_ae": "MR_ROOM_2"}
    )
    text = studies.content.decode()
    assert "1 study" in text and "CompressedSamples, MR1" in text  # a name as people read it
    assert "CompressedSamples, CT1" not in text
    assert "CT_ROOM_1" in text  # offered as a choice
    series = admin_client.get(
        reverse("admin:archive_series_changelist"), {"calling_ae": "CT_ROOM_1"}
    )
    assert "1 series" in series.content.decode()
