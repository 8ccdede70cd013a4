"""The admin a newcomer expects, over Django's test client with data received over real
associations: a home, study and series pages that list their children, names instead of UIDs,
readable person names, previews at a useful size, the configuration file's rules, and receiver
processes and associations as they are."""

import socket
import struct
import textwrap

import pytest
from django.urls import reverse
from django.utils import timezone
from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage

from archive.models import Instance, Patient
from archive.person_names import person_name_display
from receiver.config import resolve
from receiver.models import ReceiverProcess
from receiver.server import StartupError, ingest_settings, start
from receiver.status import receiver_status
from tests.conftest import sample_file
from tests.peers import eventually, scu, send_files


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Lestrade^G", "Lestrade, G"),
        ("^^^^", ""),
        ("Doe^John^Albert^Dr^Jr", "Doe, Dr John Albert, Jr"),
        ("^John", "John"),
        ("Doe", "Doe"),
        ("=山田^太郎=やまだ^たろう", "山田, 太郎"),
        ("Yamada^Tarou=山田^太郎", "Yamada, Tarou"),
        ("", ""),
        (None, ""),
    ],
)
def test_person_names_as_people_read_them(raw, shown):
    assert person_name_display(raw) == shown


def _png_size(body: bytes) -> tuple[int, int]:
    return struct.unpack(">II", body[16:24])


@pytest.fixture
def received(scp):
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]
    assert send_files(scp.port, [sample_file(n) for n in names]) == [0, 0, 0]
    return {
        n: Instance.objects.get(
            sop_instance_uid=dcmread(sample_file(n), stop_before_pixels=True).SOPInstanceUID
        )
        for n in names
    }


def test_root_and_view_site_lead_to_the_dashboard(admin_client, db):
    assert admin_client.get("/")["Location"] == reverse("archive-dashboard")
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("archive-dashboard")}">View site</a>' in index
    assert admin_client.get(reverse("archive-dashboard")).status_code == 200


def test_study_page_lists_its_series_and_series_page_its_instances(admin_client, received):
    ct = received["CT_small.dcm"]
    study = admin_client.get(reverse("admin:archive_study_change", args=[ct.series.study_id]))
    text = study.content.decode()
    series_url = reverse("admin:archive_series_change", args=[ct.series_id])
    assert f'<a href="{series_url}">' in text
    assert "<th>modality</th>" in text and "<td>CT</td>" in text
    assert "1 instance</a>" in text
    # Previews at 256 pixels, each opening the full preview.
    preview = reverse("archive-series-preview", args=[ct.series_id])
    assert f'href="{preview}?full=1"' in text and "width:256px" in text

    series = admin_client.get(series_url).content.decode()
    instance_url = reverse("admin:archive_instance_change", args=[ct.pk])
    assert f'<a href="{instance_url}">' in series
    assert f'<span title="{CTImageStorage}">CT Image Storage</span>' in series


def test_instance_page_names_classes_and_syntaxes_and_shows_the_whole_path(
    admin_client, received, storage_dir
):
    instance = received["JPEG2000.dcm"]
    text = admin_client.get(
        reverse("admin:archive_instance_change", args=[instance.pk])
    ).content.decode()
    syntax = instance.transfer_syntax_uid
    assert f'<span title="{syntax}">JPEG 2000 Image Compression</span>' in text
    assert f"{storage_dir / instance.path}</code>" in text
    listing = admin_client.get(reverse("admin:archive_instance_changelist")).content.decode()
    assert "CT Image Storage</span>" in listing


def test_full_preview_is_larger_than_the_page_preview(admin_client, received):
    url = reverse("archive-instance-preview", args=[received["JPEG2000.dcm"].pk])
    assert max(_png_size(admin_client.get(url).content)) == 512
    assert _png_size(admin_client.get(url, {"full": "1"}).content) == (256, 1024)


def test_person_names_read_in_lists_and_raw_in_the_detail(admin_client, received):
    patient = received["CT_small.dcm"].series.study.patient
    listing = admin_client.get(reverse("admin:archive_patient_changelist")).content.decode()
    assert "CompressedSamples, CT1" in listing
    assert "CompressedSamples^CT1" not in listing
    detail = admin_client.get(
        reverse("admin:archive_patient_change", args=[patient.pk])
    ).content.decode()
    assert "CompressedSamples, CT1" in detail
    assert "<code>CompressedSamples^CT1</code>" in detail


def test_deleting_returns_to_the_list_deleted_from(admin_client, received):
    instance = received["CT_small.dcm"]
    filters = f"series__id__exact={instance.series_id}"
    url = reverse("admin:archive_instance_delete", args=[instance.pk])
    response = admin_client.post(
        f"{url}?_changelist_filters={filters.replace('=', '%3D')}", {"post": "yes"}
    )
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:archive_instance_changelist')}?{filters}"
    assert not Instance.objects.filter(pk=instance.pk).exists()


def test_rules_of_the_configuration_file_are_shown_beside_the_admins(
    admin_client, db, settings, tmp_path
):
    path = tmp_path / "site.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            access:
              require_known_ae: true
              allowed_aes:
                - {ae_title: CT_SCANNER, host: 192.168.10.0/24}
                - MR_SCANNER
            accepted_sop_classes: [CT, MR]
            """
        )
    )
    settings.DICOM_CONFIG = path
    aes = admin_client.get(reverse("admin:receiver_allowedae_changelist")).content.decode()
    assert "From the configuration file (read-only)" in aes
    assert '<tr class="from-file"><td>CT_SCANNER</td><td>192.168.10.0/24</td>' in aes
    assert '<tr class="from-file"><td>MR_SCANNER</td><td>any host</td>' in aes
    assert f"{path} (access.allowed_aes)" in aes
    classes = admin_client.get(reverse("admin:receiver_sopclassrule_changelist")).content.decode()
    assert '<tr class="from-file"><td>CT</td><td>CT Image Storage, Enhanced CT Image' in classes


def test_stopped_receivers_show_as_stopped_and_failed_starts_not_at_all(start_scp, storage_dir):
    running = start_scp()
    running.stop(grace=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = resolve(
            {
                "port": taken.getsockname()[1],
                "bind": "127.0.0.1",
                "storage_dir": storage_dir,
            }
        )
        with pytest.raises(StartupError, match="already in use"):
            start(config, ingest_settings(config))
    assert ReceiverProcess.objects.filter(end=ReceiverProcess.FAILED).count() == 1
    receivers = receiver_status(timezone.now())["receivers"]
    assert [r["state"] for r in receivers] == ["stopped"]
    # A day later the stopped row is no longer listed.
    later = timezone.now() + timezone.timedelta(hours=25)
    assert receiver_status(later)["receivers"] == []


def test_status_counts_stored_and_duplicates_apart(start_scp, settings):
    settings.RECEIVER_HEARTBEAT = 0.2
    server = start_scp()
    ct = dcmread(sample_file("CT_small.dcm"))
    assert send_files(server.port, [sample_file("CT_small.dcm")]) == [0]
    ae = scu()
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.send_c_store(ct).Status == 0  # a resend: a duplicate, not a new instance
    mr_like = ct.copy()
    mr_like.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    assert assoc.send_c_store(mr_like).Status == 0

    def progress():
        active = receiver_status(timezone.now())["associations"]
        return active and (active[0]["stored"], active[0]["duplicates"]) == (1, 1)

    assert eventually(progress)
    assoc.release()
    assert Patient.objects.count() == 1
