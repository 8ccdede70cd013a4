"""Sending the audit trail to an audit record repository over syslog (IHE ATNA): RFC 5424
messages over UDP (RFC 5426) or TLS (RFC 5425, octet-counted frames).

The database is the queue: records are written there with the access, whatever the repository
does, and `audit_export` sends those not sent yet, oldest first, marking each batch once it is
out. A repository that is down leaves them queued until it is back; an access never waits for it.
"""

import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from audit.atna import atna_message
from audit.models import AuditEvent

logger = logging.getLogger(__name__)

# RFC 5424: facility 10 (security/authorization), severity 5 (notice), as IHE ATNA uses.
_PRI = 10 * 8 + 5
_MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"


class SyslogConfigError(ValueError):
    """AUDIT_SYSLOG or its TLS files are unusable; the message names the setting."""


@dataclass(frozen=True)
class SyslogTarget:
    transport: str  # "udp" or "tls"
    host: str
    port: int
    ca_file: str = ""
    certificate: str = ""
    private_key: str = ""


def syslog_target_parse(url: str) -> SyslogTarget:
    """`udp://host:514` or `tls://host:6514`. Raises SyslogConfigError naming AUDIT_SYSLOG."""
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tls") or not parts.hostname:
        raise SyslogConfigError(
            f"AUDIT_SYSLOG: {url!r} is not udp://HOST[:PORT] or tls://HOST[:PORT]"
        )
    try:
        port = parts.port or (514 if parts.scheme == "udp" else 6514)
    except ValueError:
        raise SyslogConfigError(f"AUDIT_SYSLOG: bad port in {url!r}") from None
    return SyslogTarget(
        transport=parts.scheme,
        host=parts.hostname,
        port=port,
        ca_file=settings.AUDIT_SYSLOG_CA,
        certificate=settings.AUDIT_SYSLOG_CERTIFICATE,
        private_key=settings.AUDIT_SYSLOG_PRIVATE_KEY,
    )


def syslog_frame(xml: bytes, *, when: dt.datetime, hostname: str) -> bytes:
    """One RFC 5424 message carrying `xml` (UTF-8, marked with the BOM as RFC 5424 asks)."""
    timestamp = when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{_PRI}>1 {timestamp} {hostname[:255]} pacs {os.getpid()} {_MSGID} - "
    return header.encode("ascii") + _BOM + xml


class _Connection:
    def __init__(self, target: SyslogTarget, timeout: float) -> None:
        self.target = target
        if target.transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.settimeout(timeout)
            self.sock.connect((target.host, target.port))
            return
        context = ssl.create_default_context(cafile=target.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if target.certificate:
            context.load_cert_chain(target.certificate, target.private_key or None)
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=target.host)
        except BaseException:
            raw.close()
            raise

    def send(self, message: bytes) -> None:
        if self.target.transport == "udp":
            self.sock.send(message)
        else:
            self.sock.sendall(f"{len(message)} ".encode("ascii") + message)

    def close(self) -> None:
        if isinstance(self.sock, ssl.SSLSocket):
            # close_notify, reading what the server sent meanwhile (TLS 1.3 session tickets):
            # closing with unread data would reset the connection, and a reset can discard
            # messages the server has not read yet.
            with contextlib.suppress(OSError):
                self.sock.unwrap()
        self.sock.close()


def audit_export(target: SyslogTarget, *, batch: int = 500, timeout: float = 10.0) -> int:
    """Send every queued record to `target`, oldest first; return how many went. Raises OSError
    (ssl.SSLError included) when the repository cannot be reached or drops the connection:
    what was sent before stays marked, the rest stays queued."""
    hostname = socket.gethostname()
    source_id = settings.AUDIT_SOURCE_ID or hostname
    sent_total = 0
    connection = _Connection(target, timeout)
    try:
        while True:
            events = list(
                AuditEvent.objects.filter(exported_at__isnull=True).order_by("pk")[:batch]
            )
            if not events:
                return sent_total
            sent: list[int] = []
            try:
                for event in events:
                    xml = atna_message(event, source_id=source_id, application=source_id)
                    connection.send(syslog_frame(xml, when=event.time, hostname=hostname))
                    sent.append(event.pk)
            finally:
                if sent:
                    AuditEvent.objects.filter(pk__in=sent).update(exported_at=timezone.now())
                    sent_total += len(sent)
    finally:
        connection.close()
