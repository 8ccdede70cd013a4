"""The receiver storing into a bucket: `runscp --storage-dir s3://BUCKET/PREFIX` fed by DCMTK's
storescu, read back through verifystorage and the download view; a bucket that goes away
during ingest gets 0xA700 and the receiver recovers when it returns."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Instance
from tests.conftest import free_port, sample_file
from tests.peers import eventually, run_dcmtk, send_dataset
from tests.receiver.test_runscp import ROOT, runscp, stop, wait_listening


def test_storescu_into_a_bucket_and_back(moto_server, tmp_path):
    bucket = moto_server.bucket_new()
    port = free_port()
    index = tmp_path / "index.db"
    environment = {**moto_server.environment, "DICOM_STAGING_DIR": str(tmp_path / "staging")}
    process = runscp(
        port,
        "MY_PACS",
        "--storage-dir",
        f"s3://{bucket}/archive",
        "--index-db",
        index,
        "--bind",
        "127.0.0.1",
        env=environment,
    )
    wait_listening(port, process)
    files = [sample_file("CT_small.dcm"), sample_file("MR_small.dcm")]
    sent = run_dcmtk("storescu", "-aec", "MY_PACS", "127.0.0.1", str(port), *files)
    code, output = stop(process)
    assert sent.returncode == 0, sent.stderr
    assert code == 0, output
    assert f"s3://{bucket}/archive" in output
    assert "Traceback" not in output

    # The two instances and the storage's identity marker (archive.storage_identity).
    keys = moto_server.keys(bucket)
    assert sorted(key.rpartition("/")[2].endswith(".dcm") for key in keys) == [False, True, True]
    assert "archive/.pacs-storage.json" in keys and all(k.startswith("archive/") for k in keys)
    assert not list((tmp_path / "staging").rglob("*.part"))

    verify = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "verifystorage",
            "--index-db",
            str(index),
            "--storage-dir",
            f"s3://{bucket}/archive",
        ],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "indexed instances checked: 2" in verify.stdout


@pytest.mark.django_db(transaction=True)
def test_download_and_preview_read_from_the_bucket(start_scp, s3_environment, tmp_path, settings):
    from django.contrib.auth.models import User

    bucket = s3_environment.bucket_new()
    settings.DICOM_STAGING_DIR = tmp_path / "staging"
    settings.DICOM_STORAGE_DIR = f"s3://{bucket}/web"
    scp = start_scp(storage_dir=f"s3://{bucket}/web")
    ds = dcmread(sample_file("CT_small.dcm"))
    assert send_dataset(scp.port, ds) == 0x0000
    instance = Instance.objects.get()

    client = Client()
    client.force_login(User.objects.create_superuser("admin", "a@example.org", "pw"))
    download = client.get(reverse("archive-instance-download", args=[instance.pk]))
    assert download.status_code == 200, download
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == instance.sha256
    preview = client.get(reverse("archive-instance-preview", args=[instance.pk]))
    assert preview["Content-Type"] == "image/png"
    page = client.get(reverse("admin:archive_instance_change", args=[instance.pk]))
    assert b"tag-dump" in page.content

    s3_environment.client().delete_object(Bucket=bucket, Key=f"web/{instance.path}")
    assert client.get(reverse("archive-instance-download", args=[instance.pk])).status_code == 404
    call_command("verifystorage", "--storage-dir", f"s3://{bucket}/web", "--repair", stdout=None)


@pytest.mark.django_db(transaction=True)
def test_endpoint_down_during_ingest_then_back(start_scp, s3_environment, tmp_path, settings):
    bucket = s3_environment.bucket_new()
    settings.DICOM_STAGING_DIR = tmp_path / "staging"
    scp = start_scp(storage_dir=f"s3://{bucket}/p")
    ds = dcmread(sample_file("CT_small.dcm"))
    assert send_dataset(scp.port, ds) == 0x0000

    s3_environment.stop()
    try:
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7133.4.1"
        assert send_dataset(scp.port, ds) == 0xA700
        assert not Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()
    finally:
        s3_environment.start()
    assert send_dataset(scp.port, ds) == 0x0000
    assert Instance.objects.count() == 2
    instances = [k for k in s3_environment.keys(bucket) if not k.endswith(".pacs-storage.json")]
    assert len(instances) == 2
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]


def test_runscp_names_a_missing_bucket_in_one_line(moto_server, tmp_path):
    port = free_port()
    environment = {**moto_server.environment, "DICOM_STAGING_DIR": str(tmp_path / "staging")}
    process = runscp(
        port,
        "MY_PACS",
        "--storage-dir",
        "s3://no-such-bucket-anywhere/x",
        "--index-db",
        tmp_path / "index.db",
        env=environment,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "no-such-bucket-anywhere" in line]
    assert "does not exist" in line and "storage.directory" in line


def test_workers_on_a_bucket_commit_and_serve_after_being_replaced(moto_server, tmp_path):
    """The parent of workers never uses the bucket (obstore's runtime does not survive a fork):
    Storage Commitment, which reads the bucket, is delivered by the workers, and workers
    forked again after it did still store."""
    from tests.e2e.test_storage_commitment import Requester, stored_at
    from tests.receiver.test_workers import _child_pids

    requester = Requester()
    requester.start()
    bucket = moto_server.bucket_new()
    config = tmp_path / "store_scp.yaml"
    config.write_text(
        f"storage: {{directory: 's3://{bucket}/w'}}\n"
        f"database: {{path: {tmp_path / 'index.db'}}}\n"
        f"remote_aes:\n  - {{ae_title: {requester.title}, host: 127.0.0.1, "
        f"port: {requester.port}}}\n"
    )
    port = free_port()
    environment = {**moto_server.environment, "DICOM_STAGING_DIR": str(tmp_path / "staging")}
    process = runscp(
        port, "TEST_SCP", "--config", config, "--workers", "2", "--bind", "127.0.0.1",
        env=environment,
    )  # fmt: skip
    try:
        wait_listening(port, process)
        references = stored_at(port)
        for round_ in range(2):
            uid = generate_uid()
            assert requester.request(port, references, uid) == 0x0000
            event_type, info = requester.reports.get(timeout=30)
            assert (event_type, info.TransactionUID) == (1, uid)
            assert "FailedSOPSequence" not in info
            if round_ == 1:
                break
            # Recorded as delivered (else the next first worker rightly sends it again).
            assert eventually(lambda uid=uid: _commitment_state(tmp_path, uid) == "delivered")
            # Both workers die; the parent forks two new ones, which must still reach the bucket.
            first = set(_child_pids(process.pid, expected=2))
            for pid in first:
                os.kill(pid, signal.SIGKILL)
            assert eventually(
                lambda first=first: len(set(_child_pids(process.pid)) - first) == 2, timeout=15
            )
            for _ in range(4):  # one association after another: each worker gets some
                ds = dcmread(sample_file("CT_small.dcm"))
                ds.SOPInstanceUID = generate_uid()
                assert send_dataset(port, ds) == 0x0000
    finally:
        code, output = stop(process)
        requester.stop()
    assert code == 0, output
    assert "Forked process detected" not in output and "Traceback" not in output, output


def _commitment_state(tmp_path, uid: str) -> str | None:
    with sqlite3.connect(tmp_path / "index.db") as db:
        row = db.execute(
            "SELECT state FROM routing_commitmenttransaction WHERE transaction_uid = ?", [uid]
        ).fetchone()
    return row and row[0]
