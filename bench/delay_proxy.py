"""A TCP proxy that holds every chunk for a fixed time before passing it on: a database
server across a network, on a machine whose kernel has no netem. Round trips, not bandwidth,
are what it adds.

    python bench/delay_proxy.py --listen 15432 --to 5432 --delay-ms 0.25 &
    python bench/run.py --peers ours-pg --pg-url postgres://postgres:postgres@127.0.0.1:15432/pacs
"""

import argparse
import contextlib
import socket
import threading
import time


def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            time.sleep(delay)
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--to", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--delay-ms", type=float, required=True, help="one way, per chunk")
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    server = socket.create_server(("127.0.0.1", args.listen), reuse_port=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", args.to))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True).start()


if __name__ == "__main__":
    main()
