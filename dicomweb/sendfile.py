"""Stored files of a WADO-RS response sent by the kernel (sendfile) under gunicorn.

A multipart body of instances as stored is mostly file bytes. Read into Python and written
back, each byte is copied three times in the worker (file to bytes, gunicorn's chunk framing,
bytes to socket). Here the body
has a Content-Length (so gunicorn writes it as it is, without chunk framing), and the WSGI
entry point (`sendfile_application`) hands its file parts to the client socket's sendfile
between the bytes it yields to gunicorn: part headers go through gunicorn, file contents from
the page cache straight to the socket. A 200-instance study of 512x512 CT: about 45 ms of the
worker's CPU read and written, 30 ms sent so (Orthanc: 47 ms), on loopback.

gunicorn's access log counts the bytes it wrote itself, not the files (its `%(b)s`).

Anywhere else (Django's test client, another server, a middleware that rewrote the body, a
stream without a file descriptor) the same response is an ordinary streaming response that
reads its files a chunk at a time. Either way each file sends exactly the bytes its part was
counted for in the Content-Length, or the response is cut short (the client sees a broken
body, never a wrong instance).
"""

import io
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from django.http import StreamingHttpResponse

from dicomweb.multipart import file_chunks


class LengthBroken(RuntimeError):
    """A file does not have the size its part was counted for: the response is cut short."""


@dataclass(frozen=True)
class FilePart:
    """`size` bytes of an open stream, from its start."""

    stream: BinaryIO
    size: int

    def _check(self) -> None:
        # Counted before the status line; a file replaced since would send a wrong instance.
        end = self.stream.seek(0, io.SEEK_END)
        if end != self.size:
            raise LengthBroken(f"the file has {end} bytes now, {self.size} when counted")
        self.stream.seek(0)

    def chunks(self) -> Iterator[bytes]:
        self._check()
        sent = 0
        for chunk in file_chunks(self.stream, length=self.size):
            sent += len(chunk)
            yield chunk
        if sent != self.size:
            raise LengthBroken(f"the file ended after {sent} of its {self.size} bytes")

    def sendfile(self, sock: Any) -> bool:
        """Send the part with the socket's sendfile; False (nothing sent) when the stream has no
        file descriptor to send from."""
        try:
            self.stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return False
        self._check()
        if type(sock) is socket.socket and sock.gettimeout() is None:
            sent = _sendfile_blocking(sock.fileno(), self.stream.fileno(), self.size)
        else:  # SSL, gevent, a timeout: the socket's own sendfile knows what it needs
            sent = sock.sendfile(self.stream, 0, self.size)
        if sent != self.size:
            raise LengthBroken(f"the file ended after {sent} of its {self.size} bytes")
        return True


def _sendfile_blocking(out_fd: int, in_fd: int, size: int) -> int:
    """os.sendfile to a blocking socket (gunicorn's sync and gthread workers): what
    socket.sendfile does, without its per-call poll object, fstat and seek."""
    sent = 0
    while sent < size:
        n = os.sendfile(out_fd, in_fd, sent, size - sent)
        if n == 0:  # the file ended
            break
        sent += n
    return sent


Piece = bytes | FilePart


class PartsResponse(StreamingHttpResponse):
    """A body of `length` bytes made of bytes and file parts. `pieces` yields each FilePart
    while its stream is open, and closes it when resumed."""

    def __init__(self, pieces: Iterator[Piece], length: int, content_type: str) -> None:
        self.pieces = pieces
        super().__init__(self._read(), content_type=content_type)
        self["Content-Length"] = str(length)
        self.rewritten = False

    # A middleware that wraps or replaces the body (compression, say) sets streaming_content:
    # then the body is no longer `pieces` and must be sent as that middleware made it.
    @property
    def streaming_content(self) -> Iterator[bytes]:
        return super().streaming_content

    @streaming_content.setter
    def streaming_content(self, value: Iterable[bytes]) -> None:
        self.rewritten = True
        self._set_streaming_content(value)

    def _read(self) -> Iterator[bytes]:
        try:
            for piece in self.pieces:
                if isinstance(piece, FilePart):
                    yield from piece.chunks()
                else:
                    yield piece
        finally:
            _close(self.pieces)


def _close(pieces: Iterator[Piece]) -> None:
    # A generator closed here closes the file it has open (pieces of a HEAD are no generator).
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


class _SocketBody:
    """The WSGI iterable of a PartsResponse under gunicorn: bytes are yielded to the server,
    file parts sent on its socket in between (the server has written everything yielded
    before it asks for the next piece)."""

    def __init__(self, response: PartsResponse, sock: Any) -> None:
        self.response = response
        self.sock = sock

    def __iter__(self) -> Iterator[bytes]:
        headers_sent = False
        for piece in self.response.pieces:
            if isinstance(piece, FilePart):
                if not headers_sent:
                    yield b""  # the server sends the status line and headers first
                    headers_sent = True
                if not piece.sendfile(self.sock):
                    yield from piece.chunks()
            else:
                headers_sent = True
                yield piece

    def close(self) -> None:
        try:
            _close(self.response.pieces)
        finally:
            self.response.close()


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def sendfile_application(application: WSGIApp) -> WSGIApp:
    """`application` with the file parts of its PartsResponses sent by sendfile where the server
    is gunicorn (its socket is in the environ) and the body goes out as the response built it:
    a GET, the Content-Length unchanged, no transfer or content coding added."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sent_headers: dict[str, str] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            sent_headers.update((name.lower(), value) for name, value in headers)
            return start_response(status, headers, exc_info)

        result = application(environ, start)
        sock = environ.get("gunicorn.socket")
        if (
            isinstance(result, PartsResponse)
            and not result.rewritten
            and sock is not None
            and environ.get("REQUEST_METHOD") == "GET"
            and sent_headers.get("content-length") == result["Content-Length"]
            and "content-encoding" not in sent_headers
            and "transfer-encoding" not in sent_headers
        ):
            return _SocketBody(result, sock)
        return result

    return wrapped
