"""The viewer's pages: behind the admin's login with the viewer role, their own Content
Security Policy, and an "Open in viewer" link for each study in the admin."""

from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from archive.models import Patient, Study


def test_viewer_needs_a_staff_login(transactional_db):
    client = Client()
    response = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    User.objects.create_user("clerk", password="clerk-password-1", is_staff=True)
    client.login(username="clerk", password="clerk-password-1")
    assert client.get("/viewer/").status_code == 403


def test_viewer_has_its_own_policy_and_others_keep_theirs(admin_client):
    viewer = admin_client.get("/viewer/viewer")
    assert viewer.status_code in (200, 503)  # 503: not installed here, said so
    policy = viewer["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" in policy and "worker-src 'self' blob:" in policy
    admin = admin_client.get("/admin/")
    assert "wasm" not in admin["Content-Security-Policy"]


def test_viewer_files_are_cached_whatever_the_cookies_and_revalidated(
    admin_client, settings, tmp_path
):
    settings.VIEWER_DIR = tmp_path
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "app.bundle.0123456789abcdef.js").write_text("// bundle")
    # The first request after signing in records the session's activity (and sets its cookie,
    # which is varied on); those after it within the minute leave the session alone.
    admin_client.get("/viewer/viewer")
    bundle = admin_client.get("/viewer/app.bundle.0123456789abcdef.js")
    assert bundle.status_code == 200
    assert "immutable" in bundle["Cache-Control"]
    # Vary: Cookie made the browser fetch the bundles again whenever a cookie had changed.
    assert "Cookie" not in bundle.get("Vary", "")
    index = admin_client.get("/viewer/viewer")
    assert index["Cache-Control"] == "private, no-cache" and "Cookie" not in index.get("Vary", "")
    again = admin_client.get("/viewer/viewer", HTTP_IF_MODIFIED_SINCE=index["Last-Modified"])
    assert again.status_code == 304
    # Still only for those allowed: a 304 is no way round the login.
    assert (
        Client().get("/viewer/viewer", HTTP_IF_MODIFIED_SINCE=index["Last-Modified"]).status_code
        == 302
    )


def test_studies_link_to_the_viewer(admin_client):
    patient = Patient.objects.create(patient_id="P1", name="Doe^Jane")
    study = Study.objects.create(patient=patient, study_instance_uid="1.2.3.4")
    link = "/viewer/viewer?StudyInstanceUIDs=1.2.3.4"
    listing = admin_client.get(reverse("admin:archive_study_changelist"))
    assert link in listing.content.decode() and "Open in viewer" in listing.content.decode()
    page = admin_client.get(reverse("admin:archive_study_change", args=[study.pk]))
    assert link in page.content.decode()


def test_zip_download_of_study_series_and_patient(admin_client, storage_dir, transactional_db):
    import io
    import zipfile

    from archive.services import IngestSettings, instance_store
    from archive.storage import Storage
    from dicomweb.stow import _Window, file_meta_read
    from tests.conftest import sample_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        with open(sample_file(name), "rb") as body:
            meta = file_meta_read(body)
            instance_store(
                dataset=_Window(body, meta.dataset_offset),
                transfer_syntax_uid=meta.transfer_syntax_uid,
                sop_class_uid=meta.sop_class_uid,
                sop_instance_uid=meta.sop_instance_uid,
                calling_ae_title="",
                remote_address="",
                settings=IngestSettings(storage=Storage(storage_dir)),
            )
    study = Study.objects.get(patient__patient_id="1CT1")
    response = admin_client.get(reverse("archive-zip-download", args=["study", study.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [name, directory] = archive.namelist()
        assert directory == "DICOMDIR"
        stored = Storage(storage_dir).open(study.series.get().instances.get().path).read()
        assert archive.read(name) == stored
    series = study.series.get()
    assert (
        admin_client.get(reverse("archive-zip-download", args=["series", series.pk])).status_code
        == 200
    )
    patient = study.patient
    assert (
        admin_client.get(reverse("archive-zip-download", args=["patient", patient.pk])).status_code
        == 200
    )
    page = admin_client.get(reverse("admin:archive_study_change", args=[study.pk]))
    assert "Download as ZIP" in page.content.decode()


def test_upload_page_stores_files_and_zips_with_a_result_each(admin_client, transactional_db):
    import io
    import zipfile

    from django.core.files.uploadedfile import SimpleUploadedFile

    from archive.models import Instance
    from tests.conftest import sample_file

    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(sample_file("MR_small.dcm"), "a/MR_small.dcm")
        archive.writestr("a/readme.txt", "not DICOM")
    files = [
        SimpleUploadedFile("CT_small.dcm", sample_file("CT_small.dcm").read_bytes()),
        SimpleUploadedFile("bundle.zip", bundle.getvalue()),
        SimpleUploadedFile("notes.txt", b"plain text" * 30),
    ]
    assert "Drop files here" in admin_client.get(reverse("dicomweb-upload")).content.decode()
    response = admin_client.post(reverse("dicomweb-upload"), {"files": files})
    page = response.content.decode()
    assert response.status_code == 200
    assert "2 stored, 2 failed" in page
    assert "bundle.zip: a/readme.txt" in page
    assert Instance.objects.count() == 2


def test_admin_home_links_the_viewer_and_the_upload_page(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert 'href="/viewer/"' in page and 'href="/admin/upload/"' in page
