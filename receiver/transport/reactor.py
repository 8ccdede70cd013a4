"""Blocking waits for pynetdicom's two per-association loops, instead of 1 ms polling.

pynetdicom runs each association as two threads that poll: the DUL thread sleeps 1 ms whenever
it found nothing to do, and the association reactor sleeps 1 ms on every turn. Each C-STORE
crosses both loops twice (request in, response out), so a single association spends most of
its time asleep (docs/performance.md: replacing the polling doubled pynetdicom's own rate).

Here the DUL thread waits in poll() on its socket and on a wake-up pipe that is written
whenever a primitive is queued for sending or the thread is told to stop; the association
reactor waits on an Event set whenever the DUL thread has processed an event. Both waits have a
timeout, so timers and anything we did not foresee still run at least every IDLE_WAIT.

This reaches into pynetdicom (the `time` module its loops call, and four methods we wrap); the
whole test suite runs through it, and it is installed by `receiver.transport.install`.
"""

import contextlib
import logging
import select
import socket
import threading
import time as _time
from collections.abc import Callable
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import fsm as _fsm
from pynetdicom import transport as _transport

IDLE_WAIT = 0.05
_READABLE = select.POLLIN | select.POLLPRI
_REACTOR_SLEEP = 0.001  # the association reactor's per-turn sleep in pynetdicom 3.0

logger = logging.getLogger(__name__)

_installed = False
_local = threading.local()
_exit_hooks: list[Callable[[Any], None]] = []


def _wake_pipe(dul: Any) -> tuple[socket.socket, socket.socket]:
    # A socket pair rather than os.pipe(): a socket object refuses use after close, where a raw
    # descriptor number could by then belong to another file.
    pipe = dul.__dict__.get("_receiver_pipe")
    if pipe is None:
        pipe = socket.socketpair()
        for end in pipe:
            end.setblocking(False)
        dul.__dict__["_receiver_pipe"] = pipe
    return pipe


def _wake_dul(dul: Any) -> None:
    pipe = dul.__dict__.get("_receiver_pipe")
    if pipe is not None:
        # Full means a wake-up is pending anyway; closed means the thread has ended.
        with contextlib.suppress(OSError):
            pipe[1].send(b"\0")


def _dul_idle(dul: Any, seconds: float) -> None:
    """Wait until the peer sends something, a primitive is queued, or IDLE_WAIT passes."""
    raw = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if raw is None or dul._kill_thread:
        _time.sleep(seconds)
        return
    pending = getattr(raw, "pending", None)
    if pending is not None and pending():
        return  # TLS has decrypted data buffered that select() cannot see
    wake_read = _wake_pipe(dul)[0]
    if not dul.to_provider_queue.empty():
        return
    # poll, not select: select() cannot watch a descriptor numbered 1024 or more, which a
    # connection flood gives the next honest association.
    try:
        poller = select.poll()
        poller.register(raw.fileno(), _READABLE)
        poller.register(wake_read.fileno(), _READABLE)
        ready = poller.poll(IDLE_WAIT * 1000)
    except (OSError, ValueError):
        return  # the socket closed under us; the loop notices
    if any(fd == wake_read.fileno() for fd, _ in ready):
        with contextlib.suppress(OSError):
            while wake_read.recv(4096):
                pass


def _socket_ready(self: Any) -> bool:
    """`AssociationSocket.ready` with poll() instead of select(): is there data (or an end of
    file) to read? Queues Evt17 when the socket is closed, as pynetdicom's does."""
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            raise OSError("socket closed")
        poller = select.poll()
        poller.register(fd, _READABLE)
        events = poller.poll(0)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # transport connection closed
        return False
    if events and events[0][1] & select.POLLNVAL:
        self.event_queue.put("Evt17")
        return False
    if events:
        return True
    # TLS may hold decrypted data that poll() cannot see (pynetdicom #528).
    pending = getattr(sock, "pending", None)
    return bool(pending is not None and pending())


class _DulTime:
    """Stands in for `time` in pynetdicom.dul: the DUL thread's idle sleep becomes a wait."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, _dul.DULServiceProvider):
            _dul_idle(thread, seconds)
        else:
            _time.sleep(seconds)


class _AssociationTime:
    """Stands in for `time` in pynetdicom.association: the reactor's per-turn sleep becomes a
    wait for the DUL thread to have processed something."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        wake = getattr(_local, "reactor_wake", None)
        if wake is None or seconds != _REACTOR_SLEEP:
            _time.sleep(seconds)
            return
        wake.wait(IDLE_WAIT)
        wake.clear()


def install(on_exit: Callable[[Any], None] | None = None) -> None:
    """Replace the polling in every association started from now on (idempotent).

    `on_exit(assoc)` is called in the association's thread when its reactor stops, however it
    stops (pynetdicom has no event for a connection that simply drops).
    """
    global _installed
    if on_exit is not None and on_exit not in _exit_hooks:
        _exit_hooks.append(on_exit)
    if _installed:
        return
    _installed = True
    _dul.time = _DulTime()
    _association.time = _AssociationTime()

    run_reactor = _association.Association._run_reactor

    def _run_reactor(self: Any) -> None:
        wake = threading.Event()
        self.__dict__["_receiver_wake"] = wake
        _local.reactor_wake = wake
        try:
            run_reactor(self)
        finally:
            _local.reactor_wake = None
            for hook in _exit_hooks:
                hook(self)

    do_action = _fsm.StateMachine.do_action

    def _do_action(self: Any, event: str) -> None:
        try:
            do_action(self, event)
        except _fsm.InvalidEventError as exc:
            # An event the state machine has no transition for: a peer breaking the protocol,
            # or pynetdicom's own threads racing (found by tests/receiver/test_fuzz.py: our
            # A-ASSOCIATE-AC after the DUL had already aborted, 'Evt7' in 'Sta13'). pynetdicom
            # lets the exception kill the DUL thread and leaves the socket open; drop the
            # connection instead.
            logger.warning("Dropping a connection that broke the DICOM protocol: %s", exc)
            self.dul._kill_thread = True
            with contextlib.suppress(Exception):
                self.dul.socket.close()
        wake = self.dul.assoc.__dict__.get("_receiver_wake")
        if wake is not None:
            wake.set()

    send_pdu = _dul.DULServiceProvider.send_pdu

    def _send_pdu(self: Any, primitive: Any) -> None:
        send_pdu(self, primitive)
        _wake_dul(self)

    kill_dul = _dul.DULServiceProvider.kill_dul

    def _kill_dul(self: Any) -> None:
        kill_dul(self)
        _wake_dul(self)

    stop_dul = _dul.DULServiceProvider.stop_dul

    def _stop_dul(self: Any) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True  # what stop_dul does next; wake the thread to see it
            _wake_dul(self)
        return stop_dul(self)

    dul_run = _dul.DULServiceProvider.run_reactor

    def _dul_run(self: Any) -> None:
        try:
            dul_run(self)
        finally:
            pipe = self.__dict__.pop("_receiver_pipe", None)
            if pipe is not None:
                pipe[0].close()
                pipe[1].close()

    _transport.AssociationSocket.ready = property(_socket_ready)  # type: ignore[assignment]
    _association.Association._run_reactor = _run_reactor
    _fsm.StateMachine.do_action = _do_action
    _dul.DULServiceProvider.send_pdu = _send_pdu
    _dul.DULServiceProvider.kill_dul = _kill_dul
    _dul.DULServiceProvider.stop_dul = _stop_dul
    _dul.DULServiceProvider.run_reactor = _dul_run
