"""A DICOM health check for load balancers: C-ECHO one node, exit 0 if it answers Success.

    python -m receiver.echo_check HOST PORT [--aec MY_PACS] [--aet HEALTH_CHECK]
                                  [--timeout 5] [--proxy-v2]

Light on purpose (pynetdicom only, no Django): HAProxy runs it every few seconds per node
(deploy/dicom-check, `option external-check`). `--proxy-v2` first sends a PROXY v2 LOCAL header,
as a node with `server.proxy_protocol` expects from its balancer's address. Exit status: 0 the
node answered the C-ECHO with Success, 1 it refused or failed, 2 bad arguments.
"""

import argparse
import logging
import sys
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from receiver.transport.proxy_protocol import HEADER, SIGNATURE

# The LOCAL command: the connection is the balancer's own, with no sender behind it.
PROXY_LOCAL = HEADER.pack(SIGNATURE, 0x20, 0x00, 0)


def echo_check(
    host: str,
    port: int,
    *,
    called: str = "MY_PACS",
    calling: str = "HEALTH_CHECK",
    timeout: float = 5.0,
    proxy_v2: bool = False,
) -> bool:
    """Whether the node at host:port answers a C-ECHO with Success within `timeout`."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)

    def header_first(event: Any) -> None:
        # Runs right after connect(), before the A-ASSOCIATE-RQ is sent.
        event.assoc.dul.socket.socket.sendall(PROXY_LOCAL)

    handlers = [(evt.EVT_CONN_OPEN, header_first)] if proxy_v2 else []
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=handlers)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="C-ECHO a DICOM node; exit 0 if it answers.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--aec", default="MY_PACS", help="called AE title")
    parser.add_argument("--aet", default="HEALTH_CHECK", help="calling AE title")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--proxy-v2", action="store_true", help="send a PROXY v2 LOCAL header")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the exit status is the answer
    ok = echo_check(
        args.host,
        args.port,
        called=args.aec,
        calling=args.aet,
        timeout=args.timeout,
        proxy_v2=args.proxy_v2,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
