"""multipart/related (RFC 2387) for DICOMweb: a streaming writer for responses and a streaming
reader for STOW-RS request bodies. Neither holds a body in memory: the writer yields chunks of
files as it reads them, the reader spools each part to a temporary file (on disk past
SPOOL_MEMORY bytes)."""

import io
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

CHUNK = 256 * 1024
SPOOL_MEMORY = 4 * 2**20
_MAX_HEADER = 16 * 1024


def boundary_new() -> str:
    return f"DICOMwebBoundary{uuid.uuid4().hex}"


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def file_chunks(stream: BinaryIO, *, length: int | None = None) -> Iterator[bytes]:
    """The stream's bytes (at most `length`), a chunk at a time."""
    remaining = length
    while remaining is None or remaining > 0:
        chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related body; the message says where."""


@dataclass
class Part:
    headers: dict[str, str]
    body: BinaryIO  # positioned at 0
    size: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parts_read(stream: BinaryIO, boundary: str) -> Iterator[Part]:
    """The parts of a multipart body read from `stream`, each spooled to a temporary file which
    the caller closes. Raises MultipartError for a missing boundary, a malformed part header or
    a body that ends before the closing delimiter (truncated)."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("no usable boundary in the Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    reader = _Buffered(stream)
    # The preamble: everything up to the first delimiter (which may start the body).
    first = b"--" + boundary.encode("latin-1")
    if not reader.skip_past(first, preamble=True):
        raise MultipartError("the body holds no part (boundary not found)")
    while True:
        tail = reader.read_exact(2)
        if tail == b"--":
            return  # closing delimiter
        if tail != b"\r\n":
            # Transport padding (spaces) is allowed before the CRLF.
            line = tail + reader.read_line()
            if line.strip(b" \t\r\n") not in (b"",):
                raise MultipartError("malformed delimiter line")
        headers = _headers_read(reader)
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (yielded)
        try:
            size = reader.copy_until(delimiter, body)
        except BaseException:
            body.close()
            raise
        body.seek(0)
        yield Part(headers, body, size)


def _headers_read(reader: "_Buffered") -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    while True:
        line = reader.read_line()
        total += len(line)
        if total > _MAX_HEADER:
            raise MultipartError("part headers too long")
        text = line.rstrip(b"\r\n")
        if not text:
            return headers
        name, sep, value = text.decode("latin-1").partition(":")
        if not sep:
            raise MultipartError(f"malformed part header {text[:40]!r}")
        headers[name.strip().lower()] = value.strip()


class _Buffered:
    """A read buffer over a stream, for searching delimiters across chunk edges."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise MultipartError("the body ends in the middle (truncated)")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEADER or not self._fill():
                raise MultipartError("the body ends in the middle of a header (truncated)")
        index = self.buffer.index(b"\n") + 1
        line, self.buffer = self.buffer[:index], self.buffer[index:]
        return line

    def skip_past(self, marker: bytes, *, preamble: bool) -> bool:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                self.buffer = self.buffer[index + len(marker) :]
                return True
            keep = len(marker) - 1
            if len(self.buffer) > keep:
                self.buffer = self.buffer[-keep:]
                if preamble and self.stream is None:
                    return False
            if not self._fill():
                return False

    def copy_until(self, marker: bytes, out: BinaryIO) -> int:
        """Copy bytes to `out` until `marker`, consumed; the count copied."""
        written = 0
        while True:
            index = self.buffer.find(marker)
            # Written through a memoryview: a slice of bytes would be one more copy of it.
            if index >= 0:
                out.write(memoryview(self.buffer)[:index])
                written += index
                self.buffer = self.buffer[index + len(marker) :]
                return written
            keep = len(marker) - 1
            if len(self.buffer) > keep:
                out.write(memoryview(self.buffer)[:-keep])
                written += len(self.buffer) - keep
                self.buffer = self.buffer[-keep:]
            if not self._fill():
                raise MultipartError("the body ends before its closing boundary (truncated)")


class LargeReads:
    """gunicorn's request body (`gunicorn.http.body.Body`, pinned gunicorn 23) read in the
    sizes asked: its own read() pulls 1 KiB at a time from the reader below (de-chunking or
    length-limited), copying its buffer each time, which was a quarter of a chunked STOW-RS's
    CPU in the worker (cProfile). The reader is asked directly, after what Body buffered."""

    def __init__(self, body: Any) -> None:
        self.reader = body.reader
        self.pending = body.buf.getvalue()
        body.buf = io.BytesIO()
        self.readline = body.readline

    @staticmethod
    def usable(stream: object) -> bool:
        return isinstance(getattr(stream, "buf", None), io.BytesIO) and hasattr(
            getattr(stream, "reader", None), "read"
        )

    def read(self, size: int = -1) -> bytes:
        if self.pending:
            data = self.pending if size is None or size < 0 else self.pending[:size]
            self.pending = self.pending[len(data) :]
            return data
        if size is None or size < 0:
            return b"".join(iter(lambda: self.reader.read(CHUNK), b""))
        return self.reader.read(size)


class Dechunked:
    """A chunked transfer-coded body (RFC 9112 7.1) read as plain bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.left = 0
        self.done = False

    def _line(self) -> bytes:
        line = self.stream.readline(1024)
        if not line.endswith(b"\n"):
            raise MultipartError("the chunked body ends in the middle (truncated)")
        return line

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self.left == 0:
                text = self._line().split(b";")[0].strip()
                try:
                    self.left = int(text, 16)
                except ValueError:
                    raise MultipartError("malformed chunk size in a chunked body") from None
                if self.left == 0:
                    while self._line().strip():  # trailers
                        pass
                    self.done = True
                    break
            want = self.left if size < 0 else min(self.left, size - len(out))
            data = self.stream.read(want)
            if not data:
                raise MultipartError("the chunked body ends in the middle (truncated)")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self._line()  # the CRLF after each chunk
        return bytes(out)


def multipart_body(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """A whole body from (content type, chunks) pairs; for clients and tests."""
    for content_type, chunks in parts:
        yield part_header(boundary, content_type)
        yield from chunks
        yield b"\r\n"
    yield closing(boundary)
