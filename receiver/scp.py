"""The Application Entity: what we accept, with which limits, and which handler serves what."""

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from archive.services import IngestSettings
from receiver import handlers
from receiver.config import ReceiverConfig

# pynetdicom logs each PDU and DIMSE message; we log one line per association instead.
_config.LOG_HANDLER_LEVEL = "none"

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


def storage_sop_classes() -> list[UID]:
    """Every storage SOP class pynetdicom knows."""
    return [UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def build_ae(config: ReceiverConfig, ingest: IngestSettings) -> tuple[AE, list]:
    """Return the configured AE and the event handlers to start its server with."""
    ae = AE(ae_title=config.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = config.max_associations
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    # Peers must address us by the name we were given only once access control asks for it.
    ae.require_called_aet = False
    ae.require_calling_aet = []

    syntaxes = transfer_syntaxes()
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, syntaxes)

    event_handlers = [
        (evt.EVT_C_STORE, handlers.handle_store, [ingest]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
        (evt.EVT_REJECTED, handlers.handle_rejected),
        (evt.EVT_RELEASED, handlers.handle_released),
        (evt.EVT_ABORTED, handlers.handle_aborted),
    ]
    return ae, event_handlers
