"""Who may associate, and which storage classes an association may use.

Read from the configuration and from the admin-edited rules at every association request.
"""

import logging
from dataclasses import dataclass

from django.db import DatabaseError
from pydicom.uid import UID

from receiver.config import AllowedPeer, ReceiverConfig
from receiver.models import AllowedAE, SOPClassRule
from receiver.sop_classes import sop_classes_parse, storage_sop_classes

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
TRANSIENT_NO_REASON = (0x02, 0x01, 0x01)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class Decision:
    """Either a rejection (result, source, reason and why) or the classes to accept."""

    rejection: tuple[int, int, int] | None
    why: str = ""
    sop_classes: frozenset[UID] = frozenset()


def association_decide(
    *, config: ReceiverConfig, calling_ae: str, called_ae: str, address: str
) -> Decision:
    """Decide on an association request from `calling_ae` at `address` addressed to `called_ae`."""
    calling_ae = calling_ae.strip()
    if config.require_called_ae_title and called_ae.strip() != config.ae_title:
        return Decision(
            CALLED_AE_NOT_RECOGNISED, f"called AE title {called_ae.strip()!r} is not ours"
        )
    try:
        if config.require_known_ae and not _known(config.allowed_aes, calling_ae, address):
            return Decision(
                CALLING_AE_NOT_RECOGNISED,
                f"calling AE title {calling_ae!r} is not allowed from {address}",
            )
        classes = accepted_sop_classes(config)
    except DatabaseError as exc:
        # Fail closed: without the rules we cannot tell who may send.
        return Decision(TRANSIENT_NO_REASON, f"access rules unavailable: {exc}")
    return Decision(None, sop_classes=classes)


def _known(file_entries: tuple[AllowedPeer, ...], calling_ae: str, address: str) -> bool:
    if any(peer.matches(calling_ae, address) for peer in file_entries):
        return True
    rows = AllowedAE.objects.enabled().filter(ae_title=calling_ae).values_list("host", flat=True)
    return any(AllowedPeer(calling_ae, host).matches(calling_ae, address) for host in rows)


def accepted_sop_classes(config: ReceiverConfig) -> frozenset[UID]:
    """The configured classes (all storage classes if none), plus admin accept rules, minus
    admin refuse rules."""
    accepted = set(config.accepted_sop_classes or storage_sop_classes())
    for action, entry in SOPClassRule.objects.filter(enabled=True).values_list(
        "action", "sop_classes"
    ):
        try:
            classes = sop_classes_parse([entry])
        except ValueError:
            logger.warning("Ignoring SOP class rule %r: not a known class", entry)
            continue
        if action == SOPClassRule.ACCEPT:
            accepted.update(classes)
        else:
            accepted.difference_update(classes)
    return frozenset(accepted)
