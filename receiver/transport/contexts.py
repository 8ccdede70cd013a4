"""A cheap copy of the AE's presentation contexts for each new association.

For every association it accepts, pynetdicom deep-copies the AE's supported presentation
contexts (`transport.RequestHandler._create_association`). With every storage SOP class in
some 30 transfer syntaxes that re-creates and re-validates about 5,000 pydicom UID objects:
roughly 80 ms of CPU per association (py-spy during bench/run.py), as much as storing a
hundred small instances, and paid again by every sender that opens an association per image.
UIDs are immutable strings; only the context objects and their lists of transfer syntaxes are
changed by negotiation, so only those are copied.

The same UIDs are built again from the peer's A-ASSOCIATE-RQ: getscu proposes some 120 storage
classes, each with its transfer syntaxes, and pynetdicom turns every one of those strings into a
pydicom UID, validated with a regular expression, two or three times over (PDU item, primitive,
presentation context): about 2,500 UIDs and some 20 ms of CPU per association on this machine,
the largest fixed cost of a C-GET. `set_uid` is memoised for the str, bytes and UID values it
accepted: a valid UID stays valid, and UID objects are immutable.
`PresentationContext.add_transfer_syntax` builds and checks its UIDs itself (a UID, two regular
expressions, four properties), once per proposed transfer syntax and again for each accepted
one: some 500 calls and a third of the CPU of getscu's A-ASSOCIATE-RQ (py-spy). It is wrapped to
answer from memory for a standard transfer syntax it has accepted before, the one case in which
it logs nothing and appends the UID when not already listed; anything else goes through it.

Before any of that, the A-ASSOCIATE-RQ's items are decoded by pynetdicom's generic, field by
field `PDUItem.decode`: 7 ms for getscu's. A peer sends the same presentation context items and
SCP/SCU role selection sub-items in every request, so those two item classes decode each
distinct item once and copy it afterwards (0.4 ms; building the primitive from the items then
takes 0.5 ms instead of 5).

This reaches into pynetdicom: the `deepcopy` that pynetdicom.transport imported is replaced
(for lists of presentation contexts only; anything else is deep-copied as before), and so is
the `set_uid` that pynetdicom.utils defines and its PDU, primitive, presentation and AE modules
imported; `PresentationContext.add_transfer_syntax` and the `decode` of
`PresentationContextItemRQ` and `SCP_SCU_RoleSelectionSubItem` are wrapped.
tests/receiver/test_fastpath.py checks that negotiation leaves the AE's contexts untouched;
tests/receiver/test_transport_contract.py the names, signatures and equivalence.
"""

import copy
import inspect
from collections.abc import Callable
from typing import Any

from pydicom.uid import UID
from pynetdicom import (
    ae,
    dimse_primitives,
    pdu_items,
    pdu_primitives,
    presentation,
    transport,
    utils,
)
from pynetdicom.presentation import PresentationContext

# The modules that imported pynetdicom.utils.set_uid by name.
SET_UID_MODULES = (utils, pdu_items, pdu_primitives, presentation, dimse_primitives, ae)
# Bounded: a peer proposing ever new UIDs costs at most this many entries.
_MEMO_LIMIT = 4096
# decode_memo: items of at most this many bytes (a context with a few dozen transfer syntaxes),
# at most this many of them.
_ITEM_MEMO_BYTES = 2048
_ITEM_MEMO_LIMIT = 1024


def contexts_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a list of presentation contexts that negotiation may change freely."""
    if not isinstance(value, list) or not all(type(cx) is PresentationContext for cx in value):
        return copy.deepcopy(value, memo)
    copies = []
    new = object.__new__
    for context in value:
        # What copy.copy does for a plain object, without its __reduce_ex__ round trip (a
        # sixth of the time, for some 170 contexts per association).
        clone = new(PresentationContext)
        clone.__dict__.update(context.__dict__)
        clone._transfer_syntax = list(context._transfer_syntax)
        copies.append(clone)
    return copies


def uid_memo(set_uid: Callable[..., UID | None]) -> Callable[..., UID | None]:
    """`set_uid` answering again from memory for a str, bytes or UID value it accepted before
    with the same options (values it refused go through `set_uid` every time)."""
    memo: dict[tuple[str | bytes, bool, bool], UID] = {}

    def set_uid_memo(
        value: str | bytes | UID | None,
        name: str,
        allow_empty: bool = True,
        allow_none: bool = True,
        validate: bool = True,
    ) -> UID | None:
        kind = type(value)
        if kind is UID:
            # Built again and validated again by set_uid, unless it carries a private
            # transfer syntax's encoding, which a plain UID from memory would lose.
            if "_PRIVATE_TS_ENCODING" in value.__dict__:  # type: ignore[union-attr]
                return set_uid(value, name, allow_empty, allow_none, validate)
        elif kind is not str and kind is not bytes:
            return set_uid(value, name, allow_empty, allow_none, validate)
        key = (value, allow_empty, validate)
        uid = memo.get(key)  # type: ignore[arg-type]
        if uid is None:
            uid = set_uid(value, name, allow_empty, allow_none, validate)
            if uid is not None and len(memo) < _MEMO_LIMIT:
                memo[key] = uid  # type: ignore[index]
        return uid

    set_uid_memo.memoised = set_uid  # type: ignore[attr-defined]
    set_uid_memo.__signature__ = inspect.signature(set_uid)  # type: ignore[attr-defined]
    return set_uid_memo


def transfer_syntax_memo(add: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """`PresentationContext.add_transfer_syntax` answering from memory for a str, bytes or plain UID
    value that was a valid, conformant, standard transfer syntax UID: append it unless already
    there, as `add` does without logging anything. Any other value goes through `add`."""
    memo: dict[str | bytes, UID] = {}  # a UID finds its str: same hash, equal

    def add_transfer_syntax(self: Any, syntax: Any) -> None:
        kind = type(syntax)
        plain = kind is str or kind is bytes
        if kind is UID:
            # As in set_uid_memo: a UID carrying a private transfer syntax's encoding goes on.
            plain = "_PRIVATE_TS_ENCODING" not in syntax.__dict__
        if plain:
            uid = memo.get(syntax)
            if uid is not None:
                if uid not in self._transfer_syntax:
                    self._transfer_syntax.append(uid)
                return
        add(self, syntax)
        if plain and len(memo) < _MEMO_LIMIT:
            uid = UID(syntax.decode("ascii") if kind is bytes else syntax)
            # What `add` checks before it appends silently; a private transfer syntax is left
            # out, its UID object may carry an encoding set on it later.
            silent = uid.is_transfer_syntax and uid.is_valid and not uid.is_private
            if silent and presentation.validate_uid(uid):
                memo[syntax] = next(s for s in self._transfer_syntax if s == uid)

    add_transfer_syntax.memoised = add  # type: ignore[attr-defined]
    return add_transfer_syntax


def decode_memo(decode: Callable[[Any, bytes], None]) -> Callable[[Any, bytes], None]:
    """`PDUItem.decode` for an item class whose decoded state is a function of its bytes alone
    and is only read afterwards: decoded once per distinct item, then copied (lists anew).
    Peers send the same items in every A-ASSOCIATE-RQ: a presentation context item (its ID,
    abstract syntax and transfer syntaxes) or an SCP/SCU role selection sub-item. Bytes that
    do not decode raise every time, as before."""
    memo: dict[bytes, dict[str, Any]] = {}

    def decode_from_memory(self: Any, bytestream: bytes) -> None:
        state = memo.get(bytestream) if type(bytestream) is bytes else None
        if state is None:
            decode(self, bytestream)
            # Peers that nobody has authenticated yet send these: only items of a real size
            # are kept (an item may be 64 KiB), and a full memory starts again rather than
            # stopping, so that a flood of made-up items costs a bounded few megabytes and
            # honest peers soon get the fast path back.
            if type(bytestream) is bytes and len(bytestream) <= _ITEM_MEMO_BYTES:
                if len(memo) >= _ITEM_MEMO_LIMIT:
                    memo.clear()
                memo[bytestream] = dict(self.__dict__)
            return
        self.__dict__.update(state)
        for name, value in state.items():
            if type(value) is list:
                self.__dict__[name] = list(value)

    decode_from_memory.memoised = decode  # type: ignore[attr-defined]
    return decode_from_memory


# The A-ASSOCIATE-RQ items decoded from memory (decode_memo).
DECODED_FROM_MEMORY = (pdu_items.PresentationContextItemRQ, pdu_items.SCP_SCU_RoleSelectionSubItem)


def install() -> None:
    """Copy the contexts cheaply for every association accepted from now on, and memoise
    pynetdicom's UIDs (idempotent)."""
    transport.deepcopy = contexts_copy  # type: ignore[attr-defined]
    if getattr(utils.set_uid, "memoised", None) is None:
        memoised = uid_memo(utils.set_uid)
        for module in SET_UID_MODULES:
            module.set_uid = memoised  # type: ignore[attr-defined]
    add = PresentationContext.add_transfer_syntax
    if getattr(add, "memoised", None) is None:
        PresentationContext.add_transfer_syntax = transfer_syntax_memo(add)  # type: ignore[method-assign]
    for item_class in DECODED_FROM_MEMORY:
        if getattr(item_class.decode, "memoised", None) is None:
            item_class.decode = decode_memo(item_class.decode)  # type: ignore[method-assign]
