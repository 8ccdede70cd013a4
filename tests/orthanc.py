"""Orthanc (Debian package `orthanc`) as a real peer: started on free loopback ports with its own
configuration in a temporary directory, driven through its REST API."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.peers import system_tool


class Orthanc:
    def __init__(
        self,
        folder: Path,
        *,
        ae_title: str,
        modalities: dict[str, list],
        extra: dict[str, Any] | None = None,
    ) -> None:
        # Debian installs it in /usr/sbin, which is not on every user's PATH.
        sbin = Path("/usr/sbin/Orthanc")
        self.binary = str(sbin) if sbin.is_file() else system_tool("Orthanc", "orthanc")
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test",
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomModalities": modalities,
            "Plugins": [],
            "DicomAssociationCloseDelay": 0,
            "StorageCompression": False,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
            **(extra or {}),
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.binary, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
