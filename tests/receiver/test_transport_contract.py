"""What receiver.transport relies on in pynetdicom, checked against the installed version.

Each reach-in listed in receiver/transport/__init__.py assumes something about pynetdicom's
private code: a method's signature, a literal sleep, a 6-byte header read, a module-level
name. An upgrade that changes one of them must fail here, in one file, rather than run subtly
slower or wrong in production. The source is read with `ast` (what pynetdicom ships, not what
we patched in memory); the installed objects are checked once install() has run.
"""

import ast
import copy
import inspect
from pathlib import Path

import pytest
from pydicom.uid import UID
from pynetdicom import (
    association,
    dimse,
    dimse_messages,
    dul,
    fsm,
    pdu_items,
    presentation,
    service_class,
    transport,
    utils,
)
from pynetdicom.presentation import PresentationContext

from receiver import transport as ours
from receiver.transport import reactor, retrieve_service, spool


def _module(module) -> ast.Module:
    return ast.parse(Path(inspect.getsourcefile(module)).read_text())


def _class(module, name: str) -> ast.ClassDef:
    for node in _module(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"pynetdicom.{module.__name__} has no class {name}")


def _method(module, class_name: str, name: str) -> ast.FunctionDef:
    for node in _class(module, class_name).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{class_name}.{name} is gone from pynetdicom.{module.__name__}")


def _arguments(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.args]


def _calls(node: ast.AST) -> list[str]:
    """Every call in `node` as source text, e.g. 'self.socket.recv(6)'."""
    return [ast.unparse(n) for n in ast.walk(node) if isinstance(n, ast.Call)]


def _assigned_attributes(function: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(function):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute):
                names.add(target.attr)
    return names


def test_installed_pynetdicom_is_the_supported_version():
    assert ours.pynetdicom_version() == ours.SUPPORTED_PYNETDICOM
    ours.version_check()


def test_another_pynetdicom_version_is_refused_with_one_line_naming_both(monkeypatch):
    monkeypatch.setattr(ours, "pynetdicom_version", lambda: "3.1.0")
    with pytest.raises(ours.UnsupportedPynetdicom) as raised:
        ours.version_check()
    message = str(raised.value)
    assert "\n" not in message
    assert "pynetdicom 3.1.0 is installed" in message
    assert f"supports pynetdicom {ours.SUPPORTED_PYNETDICOM} only" in message


# 1, 8: the fast path reads PDUs as pynetdicom does; the guard checks the 6-byte header read.
def test_dul_reads_a_pdu_as_a_six_byte_header_then_its_body():
    method = _method(dul, "DULServiceProvider", "_read_pdu_data")
    assert _arguments(method) == ["self"]
    calls = _calls(method)
    assert "self.socket.recv(6)" in calls
    assert "self.socket.recv(pdu_length)" in calls
    assert "self.event_queue.put('Evt17')" in calls
    # Our replacement feeds the same queues pynetdicom's reader feeds after decoding.
    decode = _method(dul, "DULServiceProvider", "_decode_pdu")
    assert _arguments(decode) == ["self", "bytestream"]


def test_dul_keeps_the_private_state_the_fast_path_and_waits_use():
    init = _method(dul, "DULServiceProvider", "__init__")
    attributes = _assigned_attributes(init)
    for name in (
        "_recv_pdu",
        "_idle_timer",
        "_kill_thread",
        "_run_loop_delay",
        "event_queue",
        "to_provider_queue",
        "state_machine",
        "artim_timer",
    ):
        assert name in attributes, f"DULServiceProvider no longer sets {name}"
    delay = next(
        n
        for n in ast.walk(init)
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "self._run_loop_delay"
    )
    assert ast.literal_eval(delay.value) == 0.001


# 2, 3, 7: the DUL loop sleeps through the module-level `time`; the methods we wrap.
def test_dul_loop_sleeps_through_the_time_module_we_replace():
    run = _method(dul, "DULServiceProvider", "run_reactor")
    assert _arguments(run) == ["self"]
    assert "time.sleep(self._run_loop_delay)" in _calls(run)
    assert "self._is_transport_event()" in _calls(run)
    assert "self.state_machine.do_action(event)" in _calls(run)
    imports = [n for n in _module(dul).body if isinstance(n, ast.Import)]
    assert any(alias.name == "time" and alias.asname is None for n in imports for alias in n.names)
    assert _arguments(_method(dul, "DULServiceProvider", "send_pdu")) == ["self", "primitive"]
    assert "self.to_provider_queue.put(primitive)" in _calls(
        _method(dul, "DULServiceProvider", "send_pdu")
    )
    assert _arguments(_method(dul, "DULServiceProvider", "kill_dul")) == ["self"]
    stop = _method(dul, "DULServiceProvider", "stop_dul")
    assert _arguments(stop) == ["self"]
    assert "time.sleep(self._run_loop_delay)" in _calls(stop)


# 4, 5: the association reactor's literal 1 ms sleep, through the module-level `time`.
def test_association_reactor_sleeps_one_millisecond_per_turn():
    run = _method(association, "Association", "_run_reactor")
    assert _arguments(run) == ["self"]
    sleeps = [c for c in _calls(run) if c.startswith("time.sleep(")]
    assert sleeps == [f"time.sleep({reactor._REACTOR_SLEEP})"]
    imports = [n for n in _module(association).body if isinstance(n, ast.Import)]
    assert any(a.name == "time" and a.asname is None for n in imports for a in n.names)
    assert "_accepted_cx" in _assigned_attributes(_method(association, "Association", "__init__"))


# 6
def test_state_machine_action_and_its_error():
    method = _method(fsm, "StateMachine", "do_action")
    assert _arguments(method) == ["self", "event"]
    assert "InvalidEventError(msg)" in _calls(method)
    assert issubclass(fsm.InvalidEventError, Exception)


# 8, 9: the socket wrapper's read and readiness test.
def test_association_socket_recv_and_ready():
    assert _arguments(_method(transport, "AssociationSocket", "recv")) == ["self", "nr_bytes"]
    ready = _method(transport, "AssociationSocket", "ready")
    assert [ast.unparse(d) for d in ready.decorator_list] == ["property"]
    assert "select.select([self.socket], [], [], 0)" in _calls(ready)
    assert "self.event_queue.put('Evt17')" in _calls(ready)
    init = _method(transport, "AssociationSocket", "__init__")
    assert {"socket", "_is_connected"} <= _assigned_attributes(init)


# 10: the per-association copy of the AE's contexts.
def test_acceptor_contexts_are_copied_with_the_module_level_deepcopy():
    module = _module(transport)
    imports = [n for n in module.body if isinstance(n, ast.ImportFrom) and n.module == "copy"]
    assert any(a.name == "deepcopy" for n in imports for a in n.names)
    create = _method(transport, "RequestHandler", "_create_association")
    assert "deepcopy(self.server.contexts)" in _calls(create)
    context = PresentationContext()
    context.abstract_syntax = "1.2.840.10008.1.1"
    context.add_transfer_syntax("1.2.840.10008.1.2")
    assert isinstance(context._transfer_syntax, list)
    clone = ours.contexts.contexts_copy([context])[0]
    assert clone is not context and clone._transfer_syntax is not context._transfer_syntax
    # A plain object: its state is its __dict__, all of which the copy takes.
    assert not hasattr(PresentationContext, "__slots__")
    assert not hasattr(PresentationContext, "__copy__")
    assert clone.__dict__ == copy.copy(context).__dict__
    assert clone.transfer_syntax == copy.deepcopy(context).transfer_syntax


# 16: set_uid, imported by name where PDUs, primitives and contexts build UIDs.
def test_set_uid_keeps_its_signature_and_the_modules_that_import_it():
    original = getattr(utils.set_uid, "memoised", utils.set_uid)
    assert list(inspect.signature(original).parameters) == [
        "value", "name", "allow_empty", "allow_none", "validate",
    ]  # fmt: skip
    for module in ours.contexts.SET_UID_MODULES[1:]:
        imports = [
            n for n in _module(module).body
            if isinstance(n, ast.ImportFrom) and n.module == "pynetdicom.utils"
        ]  # fmt: skip
        assert any(a.name == "set_uid" for n in imports for a in n.names), module.__name__


def test_memoised_set_uid_returns_the_same_uids_and_still_refuses_bad_ones():
    memoised = ours.contexts.uid_memo(getattr(utils.set_uid, "memoised", utils.set_uid))
    first = memoised(b"1.2.840.10008.1.2.1", "Transfer Syntax")
    assert first == "1.2.840.10008.1.2.1" and isinstance(first, UID)
    assert memoised(b"1.2.840.10008.1.2.1", "Transfer Syntax") is first
    second = memoised("1.2.840.10008.1.2.1", "x")
    assert second == first
    assert memoised(UID("1.2.840.10008.1.2.1"), "x") is second
    private = UID("1.2.3.4.5")
    private.set_private_encoding(False, True)
    assert memoised(private, "x").is_little_endian  # not a plain UID from memory
    for _ in range(2):
        with pytest.raises(ValueError):
            memoised("1" * 70, "Abstract Syntax")  # longer than 64
        with pytest.raises(ValueError):
            memoised("", "Abstract Syntax", allow_empty=False)
    assert memoised(None, "x") is None


# 17: add_transfer_syntax, answered from memory when it would append silently.
def test_add_transfer_syntax_still_checks_what_the_memo_reproduces():
    source = ast.unparse(_method(presentation, "PresentationContext", "add_transfer_syntax"))
    for check in (
        "syntax = UID(syntax)",
        "not validate_uid(syntax)",
        "not syntax.is_valid",
        "if syntax not in self._transfer_syntax and syntax != '':",
        "not syntax.is_private and (not syntax.is_transfer_syntax)",
        "self._transfer_syntax.append(syntax)",
    ):
        assert check in source, check
    assert "validate_uid" in {a.name for n in _module(presentation).body
                              if isinstance(n, ast.ImportFrom) for a in n.names}  # fmt: skip


def test_memoised_add_transfer_syntax_appends_as_pynetdicom_does(caplog):
    original = getattr(
        PresentationContext.add_transfer_syntax, "memoised", PresentationContext.add_transfer_syntax
    )
    memoised = ours.contexts.transfer_syntax_memo(original)
    private = UID("1.2.3.4.5")
    private.set_private_encoding(False, True)
    values = [
        "1.2.840.10008.1.2.1", b"1.2.840.10008.1.2", UID("1.2.840.10008.1.2.1"),
        "1.2.840.10008.1.2.1", "1.2.3.4", "1.2.840.10008.1.1", "1.2.840.10008.1.2.1.99", private,
    ]  # fmt: skip
    for _ in range(2):  # the second time from memory, where it may
        plain, ours_ = PresentationContext(), PresentationContext()
        for value in values:
            caplog.clear()
            original(plain, value)
            expected = [r.getMessage() for r in caplog.records]
            caplog.clear()
            memoised(ours_, value)
            assert [r.getMessage() for r in caplog.records] == expected, value
        assert ours_.transfer_syntax == plain.transfer_syntax
        assert [type(s) for s in ours_.transfer_syntax] == [type(s) for s in plain.transfer_syntax]
        assert ours_.transfer_syntax[-1].is_little_endian  # the private one, not from memory
    for bad in ("1" * 70, b"2" * 65):  # longer than 64
        with pytest.raises(ValueError):
            memoised(PresentationContext(), bad)


# 18: presentation context items and role selection sub-items decoded once per distinct item.
def test_item_decoding_sets_attributes_from_the_bytes_alone():
    source = ast.unparse(_method(pdu_items, "PDUItem", "decode"))
    assert "for (offset, length), attr_name, func, args in self._decoders:" in source
    assert "setattr(self, attr_name, func(bytestream[sl], *args))" in source
    for item_class in ours.contexts.DECODED_FROM_MEMORY:
        assert "decode" not in {
            n.name for n in _class(pdu_items, item_class.__name__).body
            if isinstance(n, ast.FunctionDef)
        }, item_class.__name__  # fmt: skip


def test_items_decoded_from_memory_equal_items_decoded_anew():
    context = PresentationContext()
    context.context_id = 7
    context.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    context.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    item = pdu_items.PresentationContextItemRQ()
    item.from_primitive(context)
    role = pdu_items.SCP_SCU_RoleSelectionSubItem()
    role.sop_class_uid, role.scu_role, role.scp_role = "1.2.840.10008.5.1.4.1.1.2", 0, 1
    for original in (item, role):
        item_class = type(original)
        plain = getattr(item_class.decode, "memoised", item_class.decode)
        memoised = ours.contexts.decode_memo(plain)
        encoded = original.encode()
        expected = item_class()
        plain(expected, encoded)
        decoded = []
        for _ in range(2):  # the second from memory
            decoded.append(item_class())
            memoised(decoded[-1], encoded)
            assert decoded[-1].encode() == expected.encode() == original.encode()
        assert str(decoded[1]) == str(expected)
    first, second = decoded
    assert first.__dict__ == second.__dict__
    if isinstance(first, pdu_items.PresentationContextItemRQ):
        assert (
            first.abstract_transfer_syntax_sub_items
            is not second.abstract_transfer_syntax_sub_items
        )
    broken = pdu_items.PresentationContextItemRQ()
    memoised = ours.contexts.decode_memo(
        getattr(pdu_items.PresentationContextItemRQ.decode, "memoised", None)
        or pdu_items.PresentationContextItemRQ.decode
    )
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - whatever pynetdicom raises, every time
            memoised(broken, b"\x20\x00\x00\x08\x07\x00\x00\x00\x30\x00\x00\x99")

    # What unauthenticated peers can make it hold is bounded: a large item is decoded and not
    # kept, and a memory full of made-up items starts again.
    memoised = ours.contexts.decode_memo(
        getattr(pdu_items.PresentationContextItemRQ.decode, "memoised", None)
        or pdu_items.PresentationContextItemRQ.decode
    )
    memory = next(
        c.cell_contents for c in memoised.__closure__ if isinstance(c.cell_contents, dict)
    )
    big = PresentationContext()
    big.context_id = 1
    big.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    big.transfer_syntax = [f"1.2.3.{n}" for n in range(400)]
    big_item = pdu_items.PresentationContextItemRQ()
    big_item.from_primitive(big)
    memoised(pdu_items.PresentationContextItemRQ(), big_item.encode())
    assert memory == {}
    for n in range(ours.contexts._ITEM_MEMO_LIMIT + 5):
        context.context_id = 2 * (n % 128) + 1
        context.abstract_syntax = f"1.2.3.{n}"
        made_up = pdu_items.PresentationContextItemRQ()
        made_up.from_primitive(context)
        memoised(pdu_items.PresentationContextItemRQ(), made_up.encode())
        assert len(memory) <= ours.contexts._ITEM_MEMO_LIMIT
    assert 0 < len(memory) < ours.contexts._ITEM_MEMO_LIMIT


# 11: incoming messages are typed through _MESSAGE_TYPES, and the dataset written to data_set.
def test_incoming_messages_are_typed_through_the_message_table():
    decode = _method(dimse_messages, "DIMSEMessage", "decode_msg")
    source = ast.unparse(decode)
    assert "self.__class__ = _MESSAGE_TYPES[cast(int, self.command_set.CommandField)][1]" in source
    assert "cast(BytesIO, self.data_set).write(data[1:])" in source
    table = next(
        n
        for n in _module(dimse_messages).body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "_MESSAGE_TYPES"
    )
    keys, values = _dict(table.value)
    entries = {ast.literal_eval(k): ast.unparse(v) for k, v in zip(keys, values, strict=True)}
    assert entries[0x0001] == "('C-STORE-RQ', C_STORE_RQ)"


# 12: the service class of a Query/Retrieve request comes from the name association imported,
# called with the context's abstract syntax, and the private methods we override take
# (req, context).
def test_query_retrieve_requests_go_through_the_service_class_we_substitute():
    imports = [
        n for n in _module(association).body if isinstance(n, ast.ImportFrom) and n.level == 0
    ]
    assert any(
        n.module == "pynetdicom.sop_class" and "uid_to_service_class" in {a.name for a in n.names}
        for n in imports
    )
    source = ast.unparse(_method(association, "Association", "_serve_request"))
    assert "uid_to_service_class(class_uid)(self)" in source
    for owner, name in (
        ("ServiceClass", "_c_find_scp"),
        ("QueryRetrieveServiceClass", "_move_scp"),
        ("QueryRetrieveServiceClass", "_get_scp"),
    ):
        assert _arguments(_method(service_class, owner, name)) == ["self", "req", "context"], name
    scp = ast.unparse(_method(service_class, "QueryRetrieveServiceClass", "SCP"))
    for call in ("self._c_find_scp(req, context)", "self._move_scp(req, context)"):
        assert call in scp
    assert "self._get_scp(req, context)" in scp
    assert _arguments(_method(service_class, "ServiceClass", "is_cancelled")) == [
        "self",
        "msg_id",
    ]


# 13, 14, 15: what receiver.transport.accepted writes to and reads from.
def test_accepted_association_writers_find_the_socket_queue_and_responses():
    init = _method(dul, "DULServiceProvider", "__init__")
    assert {"socket", "to_provider_queue", "_kill_thread"} <= _assigned_attributes(init)
    init = _method(transport, "AssociationSocket", "__init__")
    assert "socket" in _assigned_attributes(init)
    assert _arguments(_method(dul, "DULServiceProvider", "send_pdu")) == ["self", "primitive"]
    get_msg = _method(dimse, "DIMSEServiceProvider", "get_msg")
    assert _arguments(get_msg) == ["self", "block"]
    assert "self.msg_queue.get(block=block, timeout=self.dimse_timeout)" in ast.unparse(get_msg)


def _dict(node: ast.AST) -> tuple[list, list]:
    assert isinstance(node, ast.Dict)
    return node.keys, node.values


def test_install_applies_every_reach_in(scp):
    """After the receiver started (install() ran): each target is ours."""
    assert getattr(dul.DULServiceProvider._read_pdu_data, "fastpath", False)
    assert getattr(transport.AssociationSocket.recv, "pdu_guard", False)
    assert transport.AssociationSocket.ready.fget is reactor._socket_ready
    assert type(dul.time).__name__ == "_DulTime"
    assert type(association.time).__name__ == "_AssociationTime"
    assert transport.deepcopy is ours.contexts.contexts_copy
    for module in ours.contexts.SET_UID_MODULES:
        assert getattr(module.set_uid, "memoised", None) is not None, module.__name__
    assert getattr(PresentationContext.add_transfer_syntax, "memoised", None) is not None
    for item_class in ours.contexts.DECODED_FROM_MEMORY:
        assert getattr(item_class.decode, "memoised", None) is not None, item_class.__name__
    assert dimse_messages._MESSAGE_TYPES[0x0001][1].__module__ == spool.__name__
    assert getattr(association.uid_to_service_class, "retrieve_service", False)
    query_class = association.uid_to_service_class("1.2.840.10008.5.1.4.1.2.2.1")
    assert query_class is retrieve_service._RetrieveService
    for target in (
        association.Association._run_reactor,
        fsm.StateMachine.do_action,
        dul.DULServiceProvider.send_pdu,
        dul.DULServiceProvider.kill_dul,
        dul.DULServiceProvider.stop_dul,
        dul.DULServiceProvider.run_reactor,
    ):
        assert target.__module__.startswith("receiver.transport."), target
