"""Who may associate, and which of the proposed presentation contexts an association may use.

`association_decide` is a plain function of the configuration, the access rules and what the
A-ASSOCIATE-RQ proposes: it returns a Decision (a rejection, or which abstract syntaxes are
accepted and which refused, each with its reason). `association_request_decide` reads the
admin's rules first (at every association, so a change applies to the next one); the
EVT_REQUESTED handler applies the decision.
"""

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from django.db import DatabaseError
from pydicom.uid import UID
from pynetdicom.sop_class import Verification

from receiver.config import AllowedPeer, ReceiverConfig
from receiver.models import AllowedAE, SOPClassRule
from receiver.sop_classes import sop_classes_parse

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
TRANSIENT_NO_REASON = (0x02, 0x01, 0x01)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

# Why a presentation context was refused (its abstract syntax), as the log and status show it.
SERVICE_NOT_PROVIDED = "not a service this receiver provides"
UNKNOWN_SOP_CLASS = "unknown SOP class"


@dataclass(frozen=True)
class ClassRule:
    """An admin SOP class rule, its classes resolved: `accept` adds them, `refuse` removes."""

    action: str
    label: str
    classes: frozenset[str]


@dataclass(frozen=True)
class AccessRules:
    """The admin's enabled rules: allowed AE titles and SOP class rules."""

    allowed_aes: tuple[AllowedPeer, ...] = ()
    class_rules: tuple[ClassRule, ...] = ()


@dataclass(frozen=True)
class ContextRefusal:
    """A proposed abstract syntax we refuse ("abstract syntax not supported"), and why."""

    abstract_syntax: str
    why: str

    @property
    def name(self) -> str:
        return UID(self.abstract_syntax).name

    def as_json(self) -> dict[str, str]:
        return {"uid": self.abstract_syntax, "name": self.name, "why": self.why}


@dataclass(frozen=True)
class Decision:
    """Either a rejection (result, source, reason and why), or the proposed abstract syntaxes
    accepted and those refused with their reasons."""

    rejection: tuple[int, int, int] | None
    why: str = ""
    accepted: tuple[str, ...] = ()
    refused: tuple[ContextRefusal, ...] = field(default_factory=tuple)

    @property
    def refused_uids(self) -> frozenset[str]:
        return frozenset(r.abstract_syntax for r in self.refused)

    def refusal_summary(self, limit: int = 3) -> str:
        """One phrase for the log and the association log's reason ("" if nothing refused)."""
        if not self.refused:
            return ""
        shown = "; ".join(f"{r.name} ({r.why})" for r in self.refused[:limit])
        more = f"; and {len(self.refused) - limit} more" if len(self.refused) > limit else ""
        total = len(self.refused) + len(self.accepted)
        return f"refused {len(self.refused)} of {total} presentation contexts: {shown}{more}"


def association_decide(
    *,
    config: ReceiverConfig,
    rules: AccessRules,
    calling_ae: str,
    called_ae: str,
    address: str,
    proposed: Iterable[str],
    served: Collection[str],
    storage_classes: Collection[str],
) -> Decision:
    """Decide on an association request from `calling_ae` at `address` addressed to
    `called_ae`, proposing the abstract syntaxes `proposed`.

    `served` are the abstract syntaxes this AE has services for, `storage_classes` those of
    them that are storage classes (filtered by `accepted_sop_classes` and the admin's rules);
    Verification is always accepted, other served services are left to their own handlers.
    """
    calling_ae = calling_ae.strip()
    if config.require_called_ae_title and called_ae.strip() != config.ae_title:
        return Decision(
            CALLED_AE_NOT_RECOGNISED, f"called AE title {called_ae.strip()!r} is not ours"
        )
    if config.require_known_ae and not any(
        peer.matches(calling_ae, address) for peer in (*config.allowed_aes, *rules.allowed_aes)
    ):
        return Decision(
            CALLING_AE_NOT_RECOGNISED,
            f"calling AE title {calling_ae!r} is not allowed from {address}",
        )
    accepted: list[str] = []
    refused: list[ContextRefusal] = []
    for uid in dict.fromkeys(str(u) for u in proposed):  # once each, in the order proposed
        why = _context_refusal(config, rules, uid, served, storage_classes)
        if why is None:
            accepted.append(uid)
        else:
            refused.append(ContextRefusal(uid, why))
    return Decision(None, accepted=tuple(accepted), refused=tuple(refused))


def _context_refusal(
    config: ReceiverConfig,
    rules: AccessRules,
    uid: str,
    served: Collection[str],
    storage_classes: Collection[str],
) -> str | None:
    if uid == Verification:
        return None
    if uid not in served:
        return SERVICE_NOT_PROVIDED if UID(uid).name != uid else UNKNOWN_SOP_CLASS
    if uid not in storage_classes:
        return None
    for rule in rules.class_rules:
        if rule.action == SOPClassRule.REFUSE and uid in rule.classes:
            return f"refused by the admin's SOP class rule {rule.label!r}"
    if config.accepted_sop_classes is None or uid in config.accepted_sop_classes:
        return None
    if any(r.action == SOPClassRule.ACCEPT and uid in r.classes for r in rules.class_rules):
        return None
    source = config.sources.get("accepted_sop_classes", "default")
    if source == "command line":
        return "not in --accept"
    return f"not in accepted_sop_classes{' of the configuration file' * source.startswith('file ')}"


def access_rules_load() -> AccessRules:
    """The admin's enabled rules; raises DatabaseError when the index is unavailable."""
    peers = tuple(
        AllowedPeer(title, host)
        for title, host in AllowedAE.objects.enabled().values_list("ae_title", "host")
    )
    class_rules = []
    for action, entry in SOPClassRule.objects.filter(enabled=True).values_list(
        "action", "sop_classes"
    ):
        try:
            classes = frozenset(str(uid) for uid in sop_classes_parse([entry]))
        except ValueError:
            logger.warning("Ignoring SOP class rule %r: not a known class", entry)
            continue
        class_rules.append(ClassRule(action=action, label=entry, classes=classes))
    return AccessRules(allowed_aes=peers, class_rules=tuple(class_rules))


def association_request_decide(
    *,
    config: ReceiverConfig,
    calling_ae: str,
    called_ae: str,
    address: str,
    proposed: Iterable[str],
    served: Collection[str],
    storage_classes: Collection[str],
) -> Decision:
    """`association_decide` with the admin's current rules; without them (index unavailable)
    reject, transient: we cannot tell who may send."""
    try:
        rules = access_rules_load()
    except DatabaseError as exc:
        return Decision(TRANSIENT_NO_REASON, f"access rules unavailable: {exc}")
    return association_decide(
        config=config,
        rules=rules,
        calling_ae=calling_ae,
        called_ae=called_ae,
        address=address,
        proposed=proposed,
        served=served,
        storage_classes=storage_classes,
    )
