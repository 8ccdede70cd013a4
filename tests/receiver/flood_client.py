"""A connection flood, run as its own process (`python -m tests.receiver.flood_client PORT`) so
that its thousands of sockets are not the test's own: IDLE connections opened as fast as the
receiver accepts them and kept whatever it does with them, and SLOW ones sending a byte every
few seconds, opened again when the receiver closes them. Prints "opened N" as it goes and runs
until stdin closes."""

import resource
import socket
import sys
import threading


def connect(port: int) -> socket.socket | None:
    sock = socket.socket()
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def idle(port: int, count: int, stop: threading.Event) -> None:
    kept = []
    while len(kept) < count and not stop.is_set():
        sock = connect(port)
        if sock is not None:
            kept.append(sock)
            if len(kept) % 500 == 0 or len(kept) == count:
                print(f"opened {len(kept)}", flush=True)
    stop.wait()


def slow(port: int, count: int, stop: threading.Event) -> None:
    header = b"\x01\x00\x00\x00\x40\x00"  # an A-ASSOCIATE-RQ that never completes
    socks: list[socket.socket | None] = [None] * count
    sent = [0] * count
    while not stop.is_set():
        for i in range(count):
            sock = socks[i]
            if sock is None:
                socks[i], sent[i] = connect(port), 0
                continue
            try:
                sock.send(header[sent[i] : sent[i] + 1] or b"\0")
                sent[i] += 1
            except OSError:
                sock.close()
                socks[i] = None
        stop.wait(3)


def main() -> None:
    port, idle_count, slow_count = (int(arg) for arg in sys.argv[1:4])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    for target, count in ((idle, idle_count), (slow, slow_count)):
        threading.Thread(target=target, args=(port, count, stop), daemon=True).start()
    sys.stdin.read()  # until the test closes it
    stop.set()


if __name__ == "__main__":
    main()
