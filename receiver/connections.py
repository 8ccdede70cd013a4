"""The lobby (receiver.transport.lobby) of a receiver configuration: its limits, and where what
it drops is recorded (the process log, the association log, hence /metrics)."""

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from receiver.association_log import connections_dropped_record
from receiver.config import ReceiverConfig
from receiver.transport.lobby import DropCounter, Lobby, LobbyLimits
from receiver.transport.proxy_protocol import trusted_proxies


def lobby_build(
    config: ReceiverConfig,
    *,
    deliver: Callable[[socket.socket, Any], None],
    tls: ssl.SSLContext | None,
    complete_pdu: bool = True,
    on_tick: Callable[[], None] | None = None,
    proxy: bool = True,
) -> Lobby:
    """The lobby for this configuration; `deliver(sock, address)` receives each connection
    whose first PDU is complete (or, with `complete_pdu=False`, has begun)."""
    limits = LobbyLimits(
        # The ACSE timeout bounds association set-up as a whole (PS3.8's ARTIM timer).
        first_pdu_timeout=min(config.first_pdu_timeout, config.acse_timeout),
        per_address=config.max_waiting_per_address,
        total=config.max_waiting_connections,
    )

    def record(counts: dict[str, int], hosts: Any, since: float) -> None:
        # Not in the lobby's thread: a database write there would stall accepting for its
        # duration. Not a daemon: a report made as the process stops is still written.
        threading.Thread(
            target=connections_dropped_record,
            kwargs={"counts": counts, "hosts": hosts, "since": since},
            name="dropped-connections-log",
        ).start()

    return Lobby(
        deliver=deliver,
        limits=limits,
        drops=DropCounter(where=f"{config.ae_title}:{config.port}", on_report=record),
        tls=tls,
        complete_pdu=complete_pdu,
        on_tick=on_tick,
        # Read where connections arrive (not again in a worker the parent handed them to).
        proxies=trusted_proxies(config.proxy_addresses)
        if proxy and config.proxy_protocol
        else None,
    )
