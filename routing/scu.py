"""Outbound associations through pynetdicom: C-ECHO and Storage Commitment's N-EVENT-REPORT;
the presentation contexts of a C-MOVE (whose C-STOREs go through routing.direct).

Used by C-MOVE, Storage Commitment reports, the admin's C-ECHO action, and forwarding.
"""

import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
TIMEOUT = 30.0
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    tls: bool = False


class AssociationFailed(Exception):
    """The peer could not be reached, or refused the association."""


def _ae(calling_ae_title: str) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.connection_timeout = 10
    return ae


def nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: Nagle's algorithm off. pynetdicom writes a message's command and data
    set as separate PDUs; with Nagle on, the second waits for the peer's delayed ACK (40 ms
    per C-STORE, C-FIND response or C-GET sub-operation)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not TCP, or already closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reactor_pause(assoc: Association) -> None:
    """Let a send_*() from this thread start at once.

    pynetdicom's send_*() methods wait until the association's reactor thread has paused,
    which it does between turns; receiver.reactor makes those turns wait on an event for up
    to 50 ms instead of polling every millisecond, so each C-STORE sub-operation waited for
    it. Asking for the pause and waking the reactor here makes it pause now.
    """
    wake = assoc.__dict__.get("_receiver_wake")
    if wake is not None:
        assoc._reactor_checkpoint.clear()
        wake.set()


# Built once per process (loading certificates per association would cost more than the
# handshake); replaced by client_tls_configure.
_client_context: ssl.SSLContext | None = None


def client_tls_configure(
    *,
    certificate: Path | None = None,
    private_key: Path | None = None,
    ca_certificates: Path | None = None,
) -> None:
    """Our side of outgoing TLS associations (forwarding, C-MOVE destinations, Storage
    Commitment reports), from the receiver's own `tls:` settings: its certificate and key are
    presented as the client certificate (DICOM TLS peers usually require one: DCMTK's
    storescp +tls does by default), and its CA certificates are trusted beside the system's.

    Raises OSError or ssl.SSLError when a file is not usable.
    """
    global _client_context
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_certificates is not None:
        context.load_verify_locations(cafile=ca_certificates)
    if certificate is not None:
        context.load_cert_chain(certificate, private_key)
    _client_context = context


def client_tls_context() -> ssl.SSLContext:
    """TLS 1.2+ verifying the peer against the system's certificate authorities and those of
    client_tls_configure, with its client certificate if it named one."""
    if _client_context is None:
        client_tls_configure()
    assert _client_context is not None
    return _client_context


def associate(
    peer: Peer,
    *,
    calling_ae_title: str,
    contexts: list[PresentationContext],
    ext_neg: list | None = None,
    evt_handlers: list | None = None,
) -> Association:
    """An established association with `peer`, or AssociationFailed saying why."""
    ae = _ae(calling_ae_title)
    tls_args = (client_tls_context(), peer.host) if peer.tls else None
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            contexts=contexts,
            ae_title=peer.ae_title,
            ext_neg=ext_neg,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, nodelay), *(evt_handlers or [])],
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise AssociationFailed(f"{peer.ae_title}@{peer.host}:{peer.port}: {exc}") from None
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "association rejected"
        elif getattr(assoc.acceptor, "primitive", None) is None:
            why = "no connection (nothing listening, or no answer)"
        else:
            why = "association aborted"
        raise AssociationFailed(f"{peer.ae_title}@{peer.host}:{peer.port}: {why}")
    return assoc


def echo(peer: Peer, *, calling_ae_title: str) -> tuple[bool, str]:
    """C-ECHO `peer`: (success, what happened)."""
    started = time.monotonic()
    try:
        assoc = associate(
            peer,
            calling_ae_title=calling_ae_title,
            contexts=[build_context(Verification)],
        )
    except AssociationFailed as exc:
        return False, str(exc)
    _reactor_pause(assoc)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        return False, "no response to C-ECHO"
    if status.Status != 0x0000:
        return False, f"C-ECHO status 0x{status.Status:04X}"
    return True, f"C-ECHO success in {1000 * (time.monotonic() - started):.0f} ms"


def store_contexts(syntaxes: dict[str, frozenset[str]]) -> list[PresentationContext]:
    """Presentation contexts for sending instances of these classes, stored in these syntaxes.

    Per class: one context for each compressed (or big endian) syntax it is stored in, so the
    receiver can take it as stored, and one offering explicit and implicit VR little endian,
    for the uncompressed instances and for those we must decompress. Beyond 128 contexts,
    only the uncompressed ones are proposed (grouped by class).
    """
    exact: list[PresentationContext] = []
    plain: list[PresentationContext] = []
    for sop_class in sorted(syntaxes):
        for syntax in sorted(syntaxes[sop_class]):
            if syntax not in (*_UNCOMPRESSED, DeflatedExplicitVRLittleEndian):
                exact.append(build_context(sop_class, [syntax]))
        plain.append(build_context(sop_class, _UNCOMPRESSED))
    if len(exact) + len(plain) <= MAX_CONTEXTS:
        return exact + plain
    if len(plain) > MAX_CONTEXTS:
        logger.warning("More than %d SOP classes to send: the rest fail", MAX_CONTEXTS)
    return plain[:MAX_CONTEXTS]


def commitment_contexts() -> tuple[list[PresentationContext], list]:
    """Storage Commitment Push Model, proposed with us in the SCP role (PS3.4 J.3.3)."""
    return (
        [build_context(StorageCommitmentPushModel, _UNCOMPRESSED)],
        [build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)],
    )


def event_report_send(
    assoc: Association, *, event_type: int, information: Dataset, instance_uid: str
) -> int | None:
    """Send an N-EVENT-REPORT-RQ for Storage Commitment; its status, or None."""
    _reactor_pause(assoc)
    status, _ = assoc.send_n_event_report(
        information, event_type, StorageCommitmentPushModel, UID(instance_uid)
    )
    return int(status.Status) if "Status" in status else None
