"""An S3-compatible server for the tests: moto's server mode on a free loopback port.

`moto` is a test dependency (requirements-dev.txt); without it the S3 tests fail under
`CI=true` and skip elsewhere, like the other peers (tests/peers.py).
"""

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoServer:
    port: int
    server: object

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        """What a receiver process needs to find this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def bucket_new(self) -> str:
        name = f"pacs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        answer = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Start again on the same port (after `stop`): moto keeps its buckets in memory."""
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_start() -> MotoServer:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        message = "moto[server] is not installed (requirements-dev.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return MotoServer(port=port, server=server)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = moto_start()
    yield server
    with contextlib.suppress(Exception):
        server.stop()


@pytest.fixture
def s3_environment(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """This process's AWS environment pointed at the test server."""
    for name, value in moto_server.environment.items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture(params=["filesystem", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path):
    """A prepared storage on each backend: a directory, then a fresh bucket on moto."""
    from archive.storage import Storage

    if request.param == "filesystem":
        built = Storage(tmp_path / "received")
    else:
        server = request.getfixturevalue("s3_environment")
        built = Storage(f"s3://{server.bucket_new()}/archive", staging_dir=tmp_path / "staging")
    built.prepare()
    return built
