"""Everything that reaches into pynetdicom's private internals, applied by one `install()`.

pynetdicom 3.0.4 is fast enough to be correct, not to beat Orthanc: it polls in 1 ms sleeps,
hands every message through three threads and deep-copies thousands of UID objects per
association. The modules of this package change that from outside, and this is the complete
list of what they touch (docs/performance.md has the measurements, docs/upstream/ the changes
worth proposing to pynetdicom so that some of this can go):

Each entry: the target in pynetdicom 3.0.4, how it is touched, by which module, why, and what
it was measured to bring.

1. `dul.DULServiceProvider._read_pdu_data`, replaced while one of our associations is in Sta6
   (fastpath): C-STORE-RQs served on the reading thread, no queue hand-offs, no pydicom encoding
   of the response. About 2.5 of 4 ms per 12 KB instance.
2. `dul.DULServiceProvider.run_reactor`, wrapped twice (fastpath, reactor): clean-up in the DUL
   thread as it ends (database connection, wake-up socket pair). Resources, not speed.
3. `dul.time`, replaced by a stand-in (reactor): the DUL thread's 1 ms idle sleep becomes a wait
   on its socket and a wake-up socket pair. With 4: pynetdicom's discard-only rate went from
   ~360/s to 700-900/s.
4. `association.time`, replaced by a stand-in (reactor): the association reactor's per-turn
   `time.sleep(0.001)` becomes a wait on an Event. See 3.
5. `association.Association._run_reactor`, wrapped (reactor): creates that Event and runs our
   end-of-association hook however the association ends (pynetdicom has no event for a
   connection that simply drops).
6. `fsm.StateMachine.do_action`, wrapped (reactor): wakes the reactor after each event, and
   drops the connection on `InvalidEventError` where pynetdicom would leave a dead DUL thread
   and an open socket (found by tests/receiver/test_fuzz.py).
7. `dul.DULServiceProvider.send_pdu`, `kill_dul`, `stop_dul`, wrapped (reactor): wake the DUL
   thread when there is something to send or it must stop. See 3.
8. `transport.AssociationSocket.recv`, wrapped (pdu_guard): a PDU whose 6-byte header announces
   more than we advertised is refused before its body is read. Memory bounded by max_pdu.
9. `transport.AssociationSocket.ready`, replaced (reactor): `poll` instead of `select.select`,
   which cannot watch a descriptor numbered 1024 or more (a connection flood pushes honest
   associations there).
10. `transport.deepcopy`, replaced for lists of presentation contexts only (contexts): shallow
    copies, UIDs being immutable. About 80 ms of CPU per association.
11. `dimse_messages._MESSAGE_TYPES[0x0001]`, replaced (spool): a C-STORE-RQ's dataset goes to a
    SpoolBuffer that moves to a file when large. A 1 GB instance no longer costs 1 GB of memory.
12. `association.uid_to_service_class` (the name pynetdicom.association imported), wrapped
    (retrieve_service): Query/Retrieve requests get a `QueryRetrieveServiceClass` subclass
    whose private `_c_find_scp`, `_move_scp` and `_get_scp` hand the request to
    receiver.query_handlers. Correctness first: pynetdicom answers 0xA801 with no counts when
    a C-MOVE destination cannot be reached, and wants every sub-operation as a decoded Dataset
    before it knows which syntaxes were accepted; C-FIND responses without pydicom's
    command-set encoding take a third less time each.
13. `DULServiceProvider.socket.socket` (the raw socket under `AssociationSocket`), written
    directly by the thread serving a C-FIND or C-GET on plain TCP (accepted): no hand-off to
    the DUL thread per PDU. C-GET of small instances ~1.5x faster (bench/qr.py).
14. `DULServiceProvider.send_pdu`, `to_provider_queue`, `_kill_thread` (accepted): on TLS the
    same PDUs go through the DUL thread, the queue kept to a few PDUs so that a large file is
    never all in memory. Correctness (one writer per TLS connection), memory.
15. The peer's C-STORE-RSP to a C-GET sub-operation (accepted, fastpath): taken from the
    fastpath reader (1), which queues its command set for the serving thread
    (`fastpath.store_responses_take`) instead of passing it through pynetdicom's state
    machine, DIMSE provider and pydicom's decoding; C-GET of 100 small instances about twice
    as fast (docs/performance.md). Where the fast path does not read the association (or hands
    it back to pynetdicom), `Association.dimse.get_msg(block=True)` as pynetdicom's own C-GET
    SCP does.

16. `set_uid`, defined in `utils` and imported by name into `pdu_items`, `pdu_primitives`,
    `presentation`, `dimse_primitives` and `ae`, replaced by a memoised wrapper (contexts): the
    ~2,500 UIDs of an A-ASSOCIATE-RQ proposing every storage class (getscu, storescu) are built
    and validated once per process instead of once per association.
17. `presentation.PresentationContext.add_transfer_syntax`, wrapped (contexts): a standard,
    conformant transfer syntax it once appended without a warning is appended again from
    memory, without building and regex-checking a UID (some 500 calls for getscu's
    A-ASSOCIATE-RQ). getscu's connection to A-ASSOCIATE-AC went from 19 to 10 ms.
18. `pdu_items.PresentationContextItemRQ.decode` and `SCP_SCU_RoleSelectionSubItem.decode`
    (the `PDUItem.decode` they inherit), wrapped (contexts): an item's bytes seen before are
    not decoded again; its decoded attributes are copied. getscu's A-ASSOCIATE-RQ decodes in
    0.4 ms instead of 7, and its primitive is built in 0.5 ms instead of 5.

Outside this package, routing.direct opens its own sockets for C-MOVE destinations and the
forwarding queue and uses only pynetdicom's documented PDU classes: no reach-in. The command
sets both write come from archive.dimse_codec, below both (routing must not import receiver).

Attributes we keep in pynetdicom's objects (through `__dict__`, so that a property or slot of
the same name in a later version cannot be shadowed silently): `AE._receiver_store`,
`DULServiceProvider._receiver_fastpath`, `DULServiceProvider._receiver_pipe`,
`Association._receiver_wake`, `AssociationSocket._pdu_body_next`, `DIMSEMessage._spool`,
`AE._receiver_find`, `AE._receiver_retrieve` (retrieve_service.enable); and,
outside this package, `Association.receiver_tally` (receiver.handlers: the association's
counts). Private attributes we read: `DULServiceProvider._idle_timer`, `_decode_pdu`,
`_recv_pdu`, `_kill_thread`, `event_queue`, `to_provider_queue`, `Association._accepted_cx`.

Not reach-ins, but worth knowing when upgrading: `receiver.server` builds the server with the
public `AE.make_server` and never runs its `serve_forever`: `lobby.py` (here) accepts, holds
each connection until its A-ASSOCIATE-RQ is complete, and hands it to the server's
`process_request`; it sets socketserver's `request_queue_size` on `ThreadedAssociationServer`.
`receiver.scp` sets the documented `_config.LOG_HANDLER_LEVEL`.

Each target's shape (signature, the literal sleep value, the 6-byte header read, ...) is
checked by tests/receiver/test_transport_contract.py, so that an upgrade fails there and not
in production; `install()` refuses any pynetdicom version other than the one tested.
"""

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from receiver.transport import (
    accepted,
    contexts,
    fastpath,
    pdu_guard,
    reactor,
    retrieve_service,
    spool,
)

SUPPORTED_PYNETDICOM = "3.0.4"


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not the version this package was tested against."""


def pynetdicom_version() -> str:
    try:
        return version("pynetdicom")
    except PackageNotFoundError:  # pragma: no cover - pynetdicom is a requirement
        return "not installed"


def version_check() -> None:
    """Raise UnsupportedPynetdicom (one line naming both versions) unless the installed
    pynetdicom is the one every reach-in above was tested with."""
    installed = pynetdicom_version()
    if installed != SUPPORTED_PYNETDICOM:
        raise UnsupportedPynetdicom(
            f"pynetdicom {installed} is installed, but receiver.transport supports "
            f"pynetdicom {SUPPORTED_PYNETDICOM} only (pin it, or re-run "
            "tests/receiver/test_transport_contract.py and update the package)"
        )


def install(
    *,
    spool_directory: Callable[[], Path],
    on_association_exit: Callable[[Any], None],
    on_thread_exit: Callable[[], None],
) -> None:
    """Apply every reach-in, in a fixed order (idempotent; later calls only update the spool
    directory).

    `spool_directory()` is where large datasets are spooled; `on_association_exit(assoc)` runs
    in each association's thread when it ends, however it ends; `on_thread_exit()` runs in
    each DUL thread as it ends (the store function may have opened resources there).
    """
    version_check()
    # The spool first: the fast path asks it for buffers. The guard and the blocking waits
    # wrap methods the fast path's replacement then calls or relies on.
    spool.install(spool_directory)
    pdu_guard.install()
    reactor.install(on_exit=on_association_exit)
    fastpath.install(on_thread_exit=on_thread_exit)
    contexts.install()
    retrieve_service.install()


__all__ = [
    "accepted",
    "contexts",
    "fastpath",
    "install",
    "pdu_guard",
    "reactor",
    "retrieve_service",
    "spool",
]
