"""The table of remote AEs: look-up, the configuration file's entries, and C-ECHO."""

import logging
from dataclasses import dataclass

from django.db import transaction

from receiver.config import RemoteAEEntry
from routing.models import ForwardingRule, RemoteAE
from routing.scu import Peer, echo

logger = logging.getLogger(__name__)


def remote_ae_find(*, ae_title: str) -> Peer | None:
    """The enabled remote AE called `ae_title`, or None."""
    row = RemoteAE.objects.enabled().filter(ae_title=ae_title.strip()).first()
    if row is None:
        return None
    return Peer(ae_title=row.ae_title, host=row.host, port=row.port, tls=row.tls)


def remote_ae_deidentified(*, ae_title: str) -> bool:
    """Whether a forwarding rule (enabled or not) de-identifies what goes to `ae_title`: then
    nothing identified may go there, a C-MOVE included (routing.forwarding)."""
    return ForwardingRule.objects.filter(
        destination__ae_title=ae_title.strip(), deidentify=True
    ).exists()


def remote_aes_sync(*, entries: tuple[RemoteAEEntry, ...]) -> None:
    """Make the rows marked `configured` be exactly the configuration file's entries.

    A file entry takes over an admin row of the same AE title (the file wins, as it does over
    the environment); rows the file no longer lists are removed.
    """
    titles = {entry.ae_title for entry in entries}
    with transaction.atomic():
        RemoteAE.objects.filter(configured=True).exclude(ae_title__in=titles).delete()
        for entry in entries:
            existing = RemoteAE.objects.filter(ae_title=entry.ae_title, configured=False)
            if existing.exists():
                logger.warning(
                    "Remote AE %s: the configuration file's entry replaces the admin's",
                    entry.ae_title,
                )
            RemoteAE.objects.update_or_create(
                ae_title=entry.ae_title,
                defaults={
                    "host": entry.host,
                    "port": entry.port,
                    "tls": entry.tls,
                    "description": entry.description,
                    "enabled": True,
                    "configured": True,
                },
            )


@dataclass(frozen=True)
class EchoResult:
    ae_title: str
    ok: bool
    detail: str


def remote_ae_echo(*, remote: RemoteAE, calling_ae_title: str) -> EchoResult:
    """C-ECHO one remote AE; the result says what went wrong when it did."""
    peer = Peer(ae_title=remote.ae_title, host=remote.host, port=remote.port, tls=remote.tls)
    ok, detail = echo(peer, calling_ae_title=calling_ae_title)
    return EchoResult(remote.ae_title, ok, detail)
