"""A blocking raw HTTP/1.1 client that reads exactly one response and checks its syntax.

Strict where the test needs it: the status line must be ``HTTP/1.1 NNN reason``, every
header line a token, a colon and a field value, the body framed by one decimal
``Content-Length`` or a lone ``chunked`` (never both), and everything must arrive within a
deadline. Interim ``1xx`` responses (``100 Continue``) are collected and skipped.

Example::

    answer = exchange(port, b"GET / HTTP/1.1\\r\\nHost: db.do\\r\\n\\r\\n", method="GET")
    answer.response.status, answer.closed
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Final

STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 ([1-9][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)")
TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
CHUNK_SIZE: Final = re.compile(rb"[0-9a-fA-F]{1,16}")
MAX_HEAD: Final = 65536


class MalformedResponse(AssertionError):
    """The server's answer is not a well-formed HTTP/1.1 response."""


class NoResponse(AssertionError):
    """The server closed, reset or stalled before a whole response arrived."""


@dataclass(frozen=True, slots=True)
class WireResponse:
    """One final response; header names lower-cased, order and repeats kept."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    interim: tuple[int, ...] = ()

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: bytes) -> bytes | None:
        values = self.values(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Answer:
    """The response, and whether the server then closed the connection with nothing more
    written (read only for a status the caller named as closing; ``None`` otherwise)."""

    response: WireResponse
    closed: bool | None


class _Reader:
    """Buffered reads from a socket, each bounded by one deadline for the whole exchange."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = bytearray()

    def _fill(self) -> bool:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise NoResponse("no complete response before the deadline (a hang)")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except TimeoutError as exc:
            raise NoResponse("no complete response before the deadline (a hang)") from exc
        except ConnectionResetError:
            return False
        if not data:
            return False
        self._buffer += data
        return True

    def line(self, limit: int = MAX_HEAD) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > limit:
                raise MalformedResponse(f"a response line longer than {limit} bytes")
            if not self._fill():
                raise NoResponse(f"connection ended inside a line: {bytes(self._buffer)!r}")

    def exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if not self._fill():
                raise NoResponse(f"connection ended {count - len(self._buffer)} bytes short")
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def until_closed(self) -> bytes:
        """Whatever arrives until the peer closes (or resets); ``NoResponse`` on a stall."""
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def read_response(reader: _Reader, method: str) -> WireResponse:
    interim: list[int] = []
    while True:
        status, headers = _read_head(reader)
        if status >= 200:
            break
        interim.append(status)
    return WireResponse(
        status, headers, _read_body(reader, method, status, headers), tuple(interim)
    )


def _read_head(reader: _Reader) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
    line = reader.line()
    match = STATUS_LINE.fullmatch(line)
    if match is None:
        raise MalformedResponse(f"bad status line {line!r}")
    headers: list[tuple[bytes, bytes]] = []
    while line := reader.line():
        name, colon, value = line.partition(b":")
        if not colon or TOKEN.fullmatch(name) is None or FIELD_VALUE.fullmatch(value) is None:
            raise MalformedResponse(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    return int(match.group(1)), tuple(headers)


def _read_body(
    reader: _Reader, method: str, status: int, headers: tuple[tuple[bytes, bytes], ...]
) -> bytes:
    lengths = [v for n, v in headers if n == b"content-length"]
    codings = [v for n, v in headers if n == b"transfer-encoding"]
    if lengths and codings:
        raise MalformedResponse("a response with both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(codings) > 1:
        raise MalformedResponse(f"repeated framing headers: {headers!r}")
    if method == "HEAD" or status in (204, 304):
        return b""
    if codings:
        if codings[0].lower() != b"chunked":
            raise MalformedResponse(f"unknown transfer-coding {codings[0]!r}")
        return _read_chunked(reader)
    if lengths:
        if not lengths[0].isdigit():
            raise MalformedResponse(f"bad content-length {lengths[0]!r}")
        return reader.exactly(int(lengths[0]))
    return reader.until_closed()


def _read_chunked(reader: _Reader) -> bytes:
    body = bytearray()
    while True:
        size_line = reader.line().split(b";", 1)[0]
        if CHUNK_SIZE.fullmatch(size_line) is None:
            raise MalformedResponse(f"bad chunk size {size_line!r}")
        size = int(size_line, 16)
        if size == 0:
            while reader.line():  # trailers
                pass
            return bytes(body)
        body += reader.exactly(size)
        if reader.exactly(2) != b"\r\n":
            raise MalformedResponse("chunk data not followed by CRLF")


def exchange(
    port: int,
    raw: bytes,
    *,
    method: str,
    timeout: float,
    closing: frozenset[int] = frozenset(),
) -> Answer:
    """Send ``raw`` on a new connection, read the first final response within ``timeout``;
    when its status is in ``closing``, also read until the server closes (same deadline)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way (a 413 before the body): the answer may still be readable
        reader = _Reader(sock, deadline)
        response = read_response(reader, method)
        closed: bool | None = None
        if response.status in closing:
            closed = reader.until_closed() == b""
    return Answer(response, closed)
