"""A cheap copy of the AE's presentation contexts for each new association.

For every association it accepts, pynetdicom deep-copies the AE's supported presentation
contexts (`transport.RequestHandler._create_association`). With every storage SOP class in
some 30 transfer syntaxes that re-creates and re-validates about 5,000 pydicom UID objects:
roughly 80 ms of CPU per association (py-spy during bench/run.py), as much as storing a
hundred small instances, and paid again by every sender that opens an association per image.
UIDs are immutable strings; only the context objects and their lists of transfer syntaxes are
changed by negotiation, so only those are copied.

This reaches into pynetdicom: the `deepcopy` that pynetdicom.transport imported is replaced
(for lists of presentation contexts only; anything else is deep-copied as before).
tests/receiver/test_fastpath.py checks that negotiation leaves the AE's contexts untouched.
"""

import copy
from typing import Any

from pynetdicom import transport
from pynetdicom.presentation import PresentationContext


def contexts_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a list of presentation contexts that negotiation may change freely."""
    if not isinstance(value, list) or not all(type(cx) is PresentationContext for cx in value):
        return copy.deepcopy(value, memo)
    copies = []
    for context in value:
        clone = copy.copy(context)
        clone._transfer_syntax = list(context._transfer_syntax)
        copies.append(clone)
    return copies


def install() -> None:
    """Copy the contexts cheaply for every association accepted from now on (idempotent)."""
    transport.deepcopy = contexts_copy  # type: ignore[attr-defined]
