"""Writers that the archive's own apps run inside the ingest transaction (forwarding's queue).

What `archive.signals.instance_stored_in_transaction` offers any app, at the cost of Django's
atomic() around every new instance (on SQLite as much CPU as the INSERT of the instance: see
archive.dblock.bare_transaction). A hook registered here runs in the bare transaction instead,
so it must write with plain cursor statements on the default connection and never open an
atomic block (no bulk_create, get_or_create or save). For a resend that replaced the stored
copy (`created` False) it runs inside an atomic block, where the ORM may be used.

A hook that raises rolls the transaction back, and the C-STORE fails with 0xA700.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """The instance just written, with what rules select on, so a hook needs no read."""

    instance_id: int
    series_id: int
    sop_class_uid: str
    calling_ae_title: str
    created: bool


Hook = Callable[[StoredInstance], None]

# A tuple replaced whole, so ingest threads iterate it without a lock.
hooks: tuple[Hook, ...] = ()


def hook_add(hook: Hook) -> None:
    """Run `hook` in every ingest transaction of this process (once, however often added)."""
    global hooks
    if hook not in hooks:
        hooks = (*hooks, hook)


def hook_remove(hook: Hook) -> None:
    global hooks
    hooks = tuple(h for h in hooks if h is not hook)
