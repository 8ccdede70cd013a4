"""Free loopback ports for the servers a benchmark or a test starts."""

import socket

_ports_given: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process gave before: until something listens on
    it, the kernel may hand the same port out twice (Orthanc's DICOM and HTTP ports once)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
