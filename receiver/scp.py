"""The Application Entity: what we accept, with which limits, and which handler serves what."""

import functools
import gc
import ssl
from collections.abc import Callable

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from archive.services import IngestSettings
from receiver import commitment_handlers, handlers, query_handlers, transport
from receiver.config import ReceiverConfig
from receiver.handlers import requests_served
from receiver.limits import AssociationSlots
from receiver.live import LiveStatus
from receiver.sop_classes import storage_sop_classes
from receiver.transport import fastpath, retrieve_service
from routing import scu

# pynetdicom logs each PDU and DIMSE message; we log one line per association instead.
_config.LOG_HANDLER_LEVEL = "none"
# Identifiers hold patient names; pynetdicom would also format each one for its log.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

_UNCOMPRESSED_PREFERENCE = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Among compressed syntaxes a sender offers in one context, prefer those that lose nothing.
_LOSSLESS = {
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.5",
}


def transfer_syntaxes() -> list[UID]:
    """Every transfer syntax we accept, in order of preference.

    pynetdicom, as acceptor, takes the first of ours that the requestor proposed, so this order
    is our preference: explicit VR little endian first, compressed syntaxes only when proposed.
    """
    compressed = [uid for uid in AllTransferSyntaxes if uid not in _UNCOMPRESSED_PREFERENCE]
    compressed.sort(key=lambda uid: uid not in _LOSSLESS)
    return _UNCOMPRESSED_PREFERENCE + compressed


def build_ae(
    config: ReceiverConfig,
    ingest: IngestSettings,
    slots: AssociationSlots | None = None,
    live: LiveStatus | None = None,
    commitment_wake: Callable[[], None] | None = None,
) -> tuple[AE, list]:
    """Return the configured AE and the event handlers to start its server with.

    `commitment_wake()` is called when a Storage Commitment request has been recorded (the
    delivery loop of this process sends its report).
    """
    # The one place the pynetdicom reach-ins are applied, for one process and for workers.
    transport.install(
        spool_directory=lambda: ingest.storage.incoming,
        on_association_exit=handlers.association_ended,
        on_thread_exit=handlers.close_database,
    )
    ae = AE(ae_title=config.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # The limit is enforced by `slots` when an association is requested; pynetdicom's own
    # count (threads, requested or not) only backs it up against floods of silent connections.
    slots = slots or AssociationSlots(config.max_associations)
    ae.maximum_associations = config.max_associations * 4 + 16
    ae.maximum_pdu_size = config.max_pdu
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    # Access control is ours (receiver.access, on EVT_REQUESTED), read anew per association.
    ae.require_called_aet = False
    ae.require_calling_aet = []

    syntaxes = transfer_syntaxes()
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # SCP/SCU role selection accepted for storage, so that a C-GET requestor can take the
    # C-STORE SCP role on its association (PS3.4 C.4.3); without it, default roles apply.
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, syntaxes, scu_role=True, scp_role=True)
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    for sop_class in query_handlers.QUERY_RETRIEVE_CLASSES:
        ae.add_supported_context(sop_class, uncompressed)
    # Role selection accepted so that a requester taking the SCP role gets its report on the
    # same association while it keeps it open (PS3.4 J.3.3).
    ae.add_supported_context(StorageCommitmentPushModel, uncompressed, scu_role=True, scp_role=True)

    # C-STOREs are served on the connection's own thread (receiver.transport.fastpath); the
    # EVT_C_STORE handler serves the few it passes on to pynetdicom.
    fastpath.enable(ae, functools.partial(handlers.dataset_store, ingest=ingest))
    # C-FIND, C-MOVE and C-GET are served by query_handlers (receiver.transport.retrieve_service).
    retrieve_service.enable(
        ae,
        functools.partial(query_handlers.serve_retrieve, config=config, storage=ingest.storage),
        functools.partial(query_handlers.serve_find, config=config),
    )
    event_handlers = [
        (evt.EVT_REQUESTED, handlers.handle_requested, [config, slots, live]),
        (evt.EVT_C_STORE, handlers.handle_store, [ingest]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_CONN_OPEN, scu.nodelay),
        (evt.EVT_N_ACTION, commitment_handlers.handle_n_action, [commitment_wake or _nothing]),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
        (evt.EVT_REJECTED, handlers.handle_rejected),
        (evt.EVT_RELEASED, handlers.handle_released, [slots]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [slots]),
        (evt.EVT_CONN_CLOSE, handlers.handle_connection_closed, [slots]),
    ]
    # Notifications that tell why an association ends or what it asked that we do not serve.
    # Query/Retrieve has no event handler: retrieve_service hands it to query_handlers.
    served = requests_served(event_handlers) | {"C_FIND_RQ", "C_MOVE_RQ", "C_GET_RQ", "C_CANCEL_RQ"}
    event_handlers += [
        (evt.EVT_ACSE_RECV, handlers.handle_acse_received),
        (evt.EVT_DIMSE_RECV, handlers.handle_dimse_received, [served]),
    ]
    return ae, event_handlers


def _nothing() -> None:
    pass


def tls_context(config: ReceiverConfig) -> ssl.SSLContext | None:
    """The server's TLS context (PS3.15 B.1/B.9: TLS 1.2 or 1.3 only), or None without TLS."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_certificate, config.tls_private_key)
    if config.tls_ca_certificates:
        context.load_verify_locations(cafile=config.tls_ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if config.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def heap_freeze() -> None:
    """Leave what start-up built out of every later garbage collection.

    pynetdicom's server runs a full `gc.collect()` every 60 connections (`service_actions`, called
    by receiver.server for each connection), and Python a full collection of its own whenever enough
    objects survived: each walks every object Django, pydicom and pynetdicom's dictionaries left on
    the heap (some 100,000), tens of milliseconds, paid by whichever association is running then.
    Frozen, those objects are never walked (nor freed: they live as long as the process).
    """
    gc.collect()
    gc.freeze()
