"""The PROXY protocol version 2 header (HAProxy's `send-proxy-v2`), read before the first PDU.

Behind a TCP load balancer every connection comes from the balancer's address, which would make
the AE whitelist by host and the logs useless. With `server.proxy_protocol: true`, connections
from `server.proxy_addresses` (and only those: anyone else could claim any address) must start
with this header, which names the real peer; the lobby reads it and uses that address from then
on. The format is HAProxy's proxy-protocol.txt, section 2.2: a 12-byte signature, version and
command, address family and protocol, the length of the address block, then the addresses.
A LOCAL command (the balancer's own health checks) keeps the balancer's address.
"""

import ipaddress
import socket
import struct
from collections.abc import Callable

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER = struct.Struct("!12sBBH")  # signature, version/command, family/protocol, length
MAX_LENGTH = HEADER.size + 536  # the largest block a sender may use (TLVs included), bounded
_LOCAL, _PROXY = 0x0, 0x1
_TCP4, _TCP6 = 0x11, 0x21


class ProxyHeaderInvalid(ValueError):
    """The connection does not start with a valid PROXY v2 header."""


def proxy_header_parse(data: bytes | memoryview) -> tuple[int, tuple[str, int] | None] | None:
    """(length of the header, the real peer's (host, port) or None to keep the connection's own)
    from the first bytes of a connection; None while incomplete. Raises ProxyHeaderInvalid."""
    available = min(len(data), len(SIGNATURE))
    if bytes(data[:available]) != SIGNATURE[:available]:
        raise ProxyHeaderInvalid("no PROXY protocol v2 signature")
    if len(data) < HEADER.size:
        return None
    _, version_command, family, length = HEADER.unpack_from(data)
    if version_command >> 4 != 2:
        raise ProxyHeaderInvalid(f"PROXY protocol version {version_command >> 4}, not 2")
    command = version_command & 0x0F
    total = HEADER.size + length
    if total > MAX_LENGTH:
        raise ProxyHeaderInvalid(f"PROXY header of {total} bytes")
    if len(data) < total:
        return None
    if command == _LOCAL:
        return total, None
    if command != _PROXY:
        raise ProxyHeaderInvalid(f"PROXY command {command}")
    block = bytes(data[HEADER.size : total])
    if family == _TCP4 and length >= 12:
        source, _, port, _ = struct.unpack_from("!4s4sHH", block)
        return total, (socket.inet_ntop(socket.AF_INET, source), port)
    if family == _TCP6 and length >= 36:
        source, _, port, _ = struct.unpack_from("!16s16sHH", block)
        return total, (socket.inet_ntop(socket.AF_INET6, source), port)
    if family == 0x00:  # UNSPEC: the sender does not know; keep the connection's address
        return total, None
    raise ProxyHeaderInvalid(f"PROXY address family 0x{family:02x} not TCP over IPv4/IPv6")


def proxy_header_build(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v2 header for TCP from `source` to `destination` (tests and health checks)."""
    host = ipaddress.ip_address(source[0])
    family, size = (socket.AF_INET, 4) if host.version == 4 else (socket.AF_INET6, 16)
    block = (
        socket.inet_pton(family, source[0])
        + socket.inet_pton(family, destination[0])
        + struct.pack("!HH", source[1], destination[1])
    )
    kind = _TCP4 if size == 4 else _TCP6
    return HEADER.pack(SIGNATURE, 0x20 | _PROXY, kind, len(block)) + block


def trusted_proxies(networks: tuple[str, ...]) -> Callable[[str], bool]:
    """A predicate: whether a connection's address is one of the listed proxies."""
    parsed = [ipaddress.ip_network(network, strict=False) for network in networks]

    def trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in parsed)

    return trusted
