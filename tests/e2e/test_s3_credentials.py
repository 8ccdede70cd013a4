"""Credentials the S3 server refuses: a moto server of its own (a separate process) that checks
every request against the IAM users it knows, once the test has created them. A start with a
wrong key is one line naming the setting; a key revoked while the receiver runs costs the
C-STORE 0xA700 with nothing indexed."""

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom import dcmread

from archive.models import Instance
from tests.conftest import free_port, sample_file
from tests.peers import eventually, send_dataset
from tests.receiver.test_runscp import runscp

REGION = "us-east-1"


def _allow(action: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}],
        }
    )


@dataclass
class AuthMoto:
    endpoint: str
    bucket: str
    # The receiver's key (S3 only) and an administrator's, which revokes it.
    key: tuple[str, str]
    admin: tuple[str, str]

    def environment(self, key: tuple[str, str]) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1],
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, service: str, key: tuple[str, str]):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            region_name=REGION,
        )

    def revoke(self) -> None:
        self.client("iam", self.admin).delete_access_key(
            UserName="receiver", AccessKeyId=self.key[0]
        )


def _listening(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def auth_moto(tmp_path) -> Iterator[AuthMoto]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        message = "moto[server] is not installed (requirements-dev.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: _listening(endpoint), timeout=30), "moto did not start"
        anyone = ("setup", "setup")  # not checked until authentication is switched on below
        server = AuthMoto(endpoint, "pacs-auth", ("", ""), ("", ""))
        iam = server.client("iam", anyone)
        keys = {}
        for user, action in (("receiver", "s3:*"), ("admin", "*")):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="access", PolicyDocument=_allow(action))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        server.key, server.admin = keys["receiver"], keys["admin"]
        server.client("s3", anyone).create_bucket(Bucket=server.bucket)
        # From now on every request is checked against the users above.
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        yield server
    finally:
        process.terminate()
        process.wait(10)


def test_a_start_with_a_wrong_key_is_one_line_naming_the_setting(auth_moto, tmp_path):
    wrong = (auth_moto.key[0], "not-the-secret")
    process = runscp(
        free_port(),
        "MY_PACS",
        "--storage-dir",
        f"s3://{auth_moto.bucket}/x",
        "--index-db",
        tmp_path / "index.db",
        env={**auth_moto.environment(wrong), "DICOM_STAGING_DIR": str(tmp_path / "staging")},
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "credentials refused" in line]
    assert "AWS_SECRET_ACCESS_KEY" in line and auth_moto.bucket in line


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_during_ingest_answers_a700_with_nothing_indexed(
    auth_moto, start_scp, tmp_path, settings, monkeypatch
):
    for name, value in auth_moto.environment(auth_moto.key).items():
        monkeypatch.setenv(name, value)
    settings.DICOM_STAGING_DIR = tmp_path / "staging"
    scp = start_scp(storage_dir=f"s3://{auth_moto.bucket}/p")
    ds = dcmread(sample_file("CT_small.dcm"))
    assert send_dataset(scp.port, ds) == 0x0000
    auth_moto.revoke()
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7133.6.1"
    assert send_dataset(scp.port, ds) == 0xA700
    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [
        dcmread(sample_file("CT_small.dcm")).SOPInstanceUID
    ]
    listed = auth_moto.client("s3", auth_moto.admin).list_objects_v2(Bucket=auth_moto.bucket)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert not [key for key in keys if ds.SOPInstanceUID in key]
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
