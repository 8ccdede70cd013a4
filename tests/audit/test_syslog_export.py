"""The audit trail to an audit record repository: DICOM audit messages (PS3.15 A.5) in RFC 5424
syslog over UDP and TLS, received by a listener here and validated against the schema of
A.5.1; a repository that is down leaves the records queued and blocks nothing."""

import contextlib
import io
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from lxml import etree

from audit.models import STORE, AuditEvent
from tests.audit.atna_schema import audit_message_validate
from tests.conftest import free_port, sample_file
from tests.peers import eventually, send_files

_SYSLOG = re.compile(
    rb"<(?P<pri>\d+)>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) - "
    rb"\xef\xbb\xbf(?P<xml><\?xml.*)",
    re.S,
)


class UdpListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                self.messages.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


class TlsListener:
    """A syslog-over-TLS receiver (RFC 5425: `LENGTH SP MESSAGE` frames)."""

    def __init__(self, pki: Path, port: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.listener = context.wrap_socket(
            socket.create_server(("127.0.0.1", port)), server_side=True
        )
        self.listener.settimeout(0.2)
        self.messages: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, ssl.SSLError, OSError):
                continue
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                buffer = b""
                while chunk := connection.recv(65536):
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        if len(rest) < int(length):
                            break
                        self.messages.append(rest[: int(length)])
                        buffer = rest[int(length) :]

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.listener.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("syslog-pki")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            directory / "server.key",
            "-out",
            directory / "server.pem",
            "-subj",
            "/CN=audit-repository",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


def _accesses(client, scp) -> None:
    """A login, a page view and an association storing two studies."""
    User.objects.create_superuser("alice", "", "pw")
    client.post(reverse("admin:login"), {"username": "alice", "password": "pw"})
    client.get(reverse("admin:archive_patient_changelist"), {"q": "x"})
    assert send_files(scp.port, [sample_file("CT_small.dcm"), sample_file("MR_small.dcm")])
    assert eventually(lambda: AuditEvent.objects.filter(action=STORE).count() == 2)


def _parsed(messages: list[bytes]) -> list[etree._Element]:
    roots = []
    for message in messages:
        match = _SYSLOG.fullmatch(message)
        assert match, message[:200]
        assert match["pri"] == b"85" and match["msgid"] == b"IHE+RFC-3881"
        roots.append(audit_message_validate(match["xml"]))
    return roots


def test_udp_export_sends_each_record_once_as_a_valid_audit_message(client, scp, settings):
    _accesses(client, scp)
    listener = UdpListener()
    try:
        settings.AUDIT_SYSLOG = f"udp://127.0.0.1:{listener.port}"
        call_command("auditexport", "--once", stdout=io.StringIO())
        queued = AuditEvent.objects.count()
        assert eventually(lambda: len(listener.messages) == queued)
    finally:
        listener.close()
    roots = _parsed(listener.messages)
    events = {root[0][0].get("originalText") for root in roots}
    assert {"User Authentication", "Query", "Import"} <= events
    imports = [root for root in roots if root[0][0].get("csd-code") == "110107"]
    assert len(imports) == 2
    for root in imports:
        sender = root.find("ActiveParticipant")
        assert sender.get("AlternativeUserID") == "AETITLES=TEST_SCU"
        assert sender.get("NetworkAccessPointID") == "127.0.0.1"
        ids = {
            o.find("ParticipantObjectIDTypeCode").get("csd-code")
            for o in root.findall("ParticipantObjectIdentification")
        }
        assert ids == {"2", "110180"}  # the patient and the study
    assert not AuditEvent.objects.filter(exported_at__isnull=True).exists()
    # Sent once: a second round has nothing to send.
    call_command("auditexport", "--once", stdout=io.StringIO())


def test_tls_repository_down_queues_records_and_blocks_nothing(client, scp, settings, pki):
    port = free_port()
    settings.AUDIT_SYSLOG = f"tls://127.0.0.1:{port}"
    settings.AUDIT_SYSLOG_CA = str(pki / "server.pem")
    _accesses(client, scp)  # the repository is down all along: the accesses work
    with pytest.raises(SystemExit) as exited:
        call_command("auditexport", "--once", stdout=io.StringIO(), stderr=io.StringIO())
    assert exited.value.code == 1
    queued = AuditEvent.objects.filter(exported_at__isnull=True).count()
    assert queued == AuditEvent.objects.count() >= 4

    listener = TlsListener(pki, port)  # back up
    try:
        call_command("auditexport", "--once", stdout=io.StringIO())
        assert eventually(lambda: len(listener.messages) == queued), (
            len(listener.messages),
            queued,
        )
    finally:
        listener.close()
    roots = _parsed(listener.messages)
    times = [root[0].get("EventDateTime") for root in roots]
    assert times == sorted(times)  # oldest first
    assert not AuditEvent.objects.filter(exported_at__isnull=True).exists()


def test_an_unverifiable_repository_certificate_is_refused(db, settings, pki, tmp_path):
    port = free_port()
    other = tmp_path / "other.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            tmp_path / "other.key",
            "-out",
            other,
            "-subj",
            "/CN=other",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    settings.AUDIT_SYSLOG = f"tls://127.0.0.1:{port}"
    settings.AUDIT_SYSLOG_CA = str(other)
    AuditEvent.objects.create(action="view", user="bob")
    listener = TlsListener(pki, port)
    try:
        with pytest.raises(SystemExit):
            call_command(
                "auditexport",
                "--once",
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
    finally:
        listener.close()
    assert listener.messages == []
    assert AuditEvent.objects.filter(exported_at__isnull=True).count() == 1


@pytest.mark.parametrize("url", ["http://x", "udp://", "tls://host:notaport", "syslog"])
def test_a_bad_destination_is_one_error_naming_the_setting(db, settings, url):
    from django.core.management.base import CommandError

    settings.AUDIT_SYSLOG = url
    with pytest.raises(CommandError, match="AUDIT_SYSLOG"):
        call_command("auditexport", "--once")
