"""Real upstream servers for the forwarding tests, each on a free loopback port or a Unix socket.

* ``RecordingUpstream``: HTTP/1.1 written on raw asyncio sockets (no HTTP library, so it
  can misbehave): it records every request exactly as it arrived (raw head, request line,
  header lines in order, body digest) and every connection it accepted and saw closed, and
  answers with the ``Handler`` the test picked (``echo``, ``reply``, ``raw``, ``stall``...).
* ``NginxUpstream``: nginx with a configuration generated in the test's directory.
* ``WebSocketUpstream``: a ``websockets`` echo server that records the upgrade requests.

Example::

    async with RecordingUpstream.start(reply(201, [("Set-Cookie", "a=1")], b"made")) as up:
        ...  # a worker with url = up.url; then look at up.requests[0].target
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

KEEP_BODY: Final = 4 * 1024 * 1024
"""Bodies up to this size are kept whole; larger ones only by length and digest."""
READ_SIZE: Final = 1024 * 1024
HEAD_LIMIT: Final = 1024 * 1024
WAIT_CAP: Final = 30.0
"""The longest any handler waits for the proxy, so a broken test cannot hang the suite."""
NGINX: Final = "/usr/sbin/nginx"

Header = tuple[str, str]
Framing = Literal["length", "chunked", "close", "none"]
"""How a canned body is delimited; ``none`` sends no framing header and no body."""
Then = Literal["close", "reset", "stall", "keep"]
"""What a raw answer does after its bytes: FIN, RST, wait for the proxy to close, or go on."""


# --- What was received ---


@dataclass(slots=True)
class UpstreamRequest:
    """One request as the upstream read it off the wire; header names as sent."""

    connection: int
    raw_head: bytes
    method: str
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    body_length: int = 0
    body_sha256: str = hashlib.sha256(b"").hexdigest()
    is_complete: bool = True
    received_at: float = 0.0

    def values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("latin-1")
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        values = self.values(name)
        return values[0] if values else None

    @property
    def names(self) -> list[bytes]:
        """Header names lower-cased, in order, repeats kept."""
        return [key.lower() for key, _ in self.headers]


@dataclass(slots=True)
class UpstreamConnectionRecord:
    """One connection the upstream accepted; ``closed_at`` is set when it ends."""

    index: int
    opened_at: float
    closed_at: float | None = None
    requests: int = 0
    saw_eof: bool = False
    """The proxy closed (or shut down) its side, as opposed to the upstream closing first."""


class Peer:
    """The upstream's side of one connection, handed to a ``Handler``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: UpstreamConnectionRecord,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.record = record
        self.is_closed = False

    def write(self, data: bytes) -> None:
        if not self.is_closed:
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.write(data)
        await self.drain()

    async def wait_eof(self, timeout: float = WAIT_CAP) -> None:
        """Wait until the proxy closes its side (discarding anything it sends meanwhile)."""
        with suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while await self.reader.read(READ_SIZE):
                    pass
                self.record.saw_eof = True

    def close(self) -> None:
        """A normal close (FIN) after what was written."""
        self.is_closed = True
        self.writer.close()

    def reset(self) -> None:
        """Close with a reset (RST), as a crashing server does."""
        self.is_closed = True
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[UpstreamRequest, Peer], Awaitable[None]]
"""Answers one request; it may write anything, wait, or close the connection."""


# --- The recording upstream ---


class RecordingUpstream:
    """An HTTP/1.1 server on raw sockets that records what it receives and answers ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []
        self.connections: list[UpstreamConnectionRecord] = []
        self.url = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return f"<RecordingUpstream {self.url} requests={len(self.requests)}>"

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        handler: Handler | None = None,
        *,
        unix_path: str | None = None,
        sock: socket.socket | None = None,
    ) -> AsyncIterator[RecordingUpstream]:
        """Serve on a free loopback port, on ``unix_path``, or on an already bound ``sock``."""
        upstream = cls(handler or echo())
        await upstream._listen(unix_path, sock)
        try:
            yield upstream
        finally:
            await upstream.aclose()

    async def _listen(self, unix_path: str | None, sock: socket.socket | None) -> None:
        if unix_path is not None:
            self._server = await asyncio.start_unix_server(self._serve, unix_path, limit=HEAD_LIMIT)
            self.url = "http+unix://" + quote(unix_path, safe="")
            return
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock, limit=HEAD_LIMIT)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    # -- what tests look at --

    @property
    def accepted(self) -> int:
        return len(self.connections)

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self.connections if c.closed_at is None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll until ``predicate()`` holds; ``TimeoutError`` if it does not within ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.requests) >= count, timeout)

    # -- serving --

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        record = UpstreamConnectionRecord(len(self.connections), time.monotonic())
        self.connections.append(record)
        peer = Peer(reader, writer, record)
        try:
            await self._serve_requests(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            record.closed_at = time.monotonic()
            self._writers.discard(writer)
            self._tasks.discard(task)
            if not peer.is_closed:
                writer.close()

    async def _serve_requests(self, peer: Peer) -> None:
        while not peer.is_closed:
            request = await read_request(peer.reader, peer.record.index)
            if request is None:
                peer.record.saw_eof = True
                return
            peer.record.requests += 1
            self.requests.append(request)
            if not request.is_complete:
                return
            await self.handler(request, peer)
            if not peer.is_closed:
                await peer.drain()


async def read_request(reader: asyncio.StreamReader, connection: int) -> UpstreamRequest | None:
    """Read one request; ``None`` at a clean EOF before its first byte."""
    try:
        raw_head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    request_line, *lines = raw_head[:-4].split(b"\r\n")
    method, target, version = request_line.split(b" ", 2)
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    request = UpstreamRequest(
        connection, raw_head, method.decode("ascii"), target, version, headers
    )
    await _read_body(reader, request)
    request.received_at = time.monotonic()
    return request


async def _read_body(reader: asyncio.StreamReader, request: UpstreamRequest) -> None:
    sink = _BodySink()
    try:
        encoding = request.header("transfer-encoding")
        if encoding is not None and encoding.lower() == b"chunked":
            await _read_chunked(reader, sink)
        else:
            length = request.header("content-length")
            await _read_length(reader, int(length) if length is not None else 0, sink)
    except (asyncio.IncompleteReadError, ConnectionError):
        request.is_complete = False
    request.body = bytes(sink.kept)
    request.body_length = sink.length
    request.body_sha256 = sink.digest.hexdigest()


class _BodySink:
    """Digests a body as it arrives, keeping the first ``KEEP_BODY`` bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.kept = bytearray()
        self.length = 0

    def add(self, data: bytes) -> None:
        self.digest.update(data)
        self.length += len(data)
        if self.length <= KEEP_BODY:
            self.kept += data


async def _read_length(reader: asyncio.StreamReader, remaining: int, sink: _BodySink) -> None:
    while remaining > 0:
        data = await reader.read(min(remaining, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(data)
        sink.add(data)


async def _read_chunked(reader: asyncio.StreamReader, sink: _BodySink) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line[:-2].split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then a blank line
                pass
            return
        await _read_length(reader, size, sink)
        if await reader.readexactly(2) != b"\r\n":
            raise asyncio.IncompleteReadError(b"", 2)


# --- Handlers: what the recording upstream answers ---


def response_head(status: int, headers: Sequence[Header] = (), reason: str | None = None) -> bytes:
    """A status line and header lines, ending with the blank line."""
    phrase = reason if reason is not None else HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def echo_response(request: UpstreamRequest) -> bytes:
    """A 200 whose JSON body describes ``request`` (method, target, headers, body digest)."""
    body = json.dumps(
        {
            "method": request.method,
            "target": request.target.decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
            "body_length": request.body_length,
            "sha256": request.body_sha256,
            "connection": request.connection,
        }
    ).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return response_head(200, headers) + body


def echo() -> Handler:
    """Answer 200 with a JSON description of the request (``echo_response``)."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        peer.write(echo_response(request))

    return handle


def reply(
    status: int = 200,
    headers: Sequence[Header] = (),
    body: bytes = b"",
    *,
    framing: Framing = "length",
    chunks: Sequence[bytes] | None = None,
    reason: str | None = None,
) -> Handler:
    """A canned response; ``framing`` is ``length``, ``chunked``, ``close`` or ``none``
    (no framing header and no body: HEAD, 204 and 304 answers)."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        lines = list(headers)
        if framing == "length":
            lines.append(("Content-Length", str(len(body))))
        elif framing == "chunked":
            lines.append(("Transfer-Encoding", "chunked"))
        payload = b"" if request.method == "HEAD" or framing == "none" else body
        if framing == "chunked" and payload:
            payload = b"".join(chunk(c) for c in (chunks or [payload])) + b"0\r\n\r\n"
        elif framing == "chunked":
            payload = b"0\r\n\r\n" if request.method != "HEAD" else b""
        peer.write(response_head(status, lines, reason) + payload)
        if framing == "close":
            await peer.drain()
            peer.close()

    return handle


def raw(data: bytes, *, then: Then = "close") -> Handler:
    """Write ``data`` as it is, then ``close``, ``reset``, ``stall`` (until the proxy closes)
    or ``keep`` (serve the next request on this connection)."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        await peer.send(data)
        await _then(peer, then)

    return handle


async def _then(peer: Peer, then: Then) -> None:
    if then == "close":
        peer.close()
    elif then == "reset":
        peer.reset()
    elif then == "stall":
        await peer.wait_eof()
        peer.close()


def stall() -> Handler:
    """Read the request and never answer (until the proxy closes the connection)."""
    return raw(b"", then="stall")


def close_without_answer() -> Handler:
    """Read the request, then close the connection without a byte of answer."""
    return raw(b"", then="close")


def by_path(routes: Mapping[str, Handler], default: Handler | None = None) -> Handler:
    """Pick the handler by the first path segment of the target (``/garbage/x`` → ``garbage``)."""
    fallback = default or echo()

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        first = request.target.decode("latin-1").lstrip("/").split("/")[0].split("?")[0]
        await routes.get(first, fallback)(request, peer)

    return handle


def paced(
    parts: Sequence[bytes],
    interval: float,
    *,
    headers: Sequence[Header] = (("Content-Type", "text/event-stream"),),
    sent_at: list[float] | None = None,
) -> Handler:
    """A chunked response whose parts are flushed ``interval`` seconds apart; the send time of
    each part is appended to ``sent_at``."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        await peer.send(response_head(200, [*headers, ("Transfer-Encoding", "chunked")]))
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(interval)
            if sent_at is not None:
                sent_at.append(time.monotonic())
            await peer.send(chunk(part))
        await peer.send(b"0\r\n\r\n")

    return handle


def trickle_until_closed(interval: float = 0.05) -> Handler:
    """A chunked response that sends a small chunk every ``interval`` until the proxy goes."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        await peer.send(response_head(200, [("Transfer-Encoding", "chunked")]))
        deadline = time.monotonic() + WAIT_CAP
        with suppress(ConnectionError):
            while time.monotonic() < deadline and not peer.writer.is_closing():
                await peer.send(chunk(b"tick\n"))
                await asyncio.sleep(interval)
                if peer.reader.at_eof():
                    peer.record.saw_eof = True
                    break
        peer.close()

    return handle


def generated(size: int, *, block: int = READ_SIZE) -> Handler:
    """A ``size``-byte body made by ``body_blocks``, with a Content-Length."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        peer.write(response_head(200, [("Content-Length", str(size))]))
        for data in body_blocks(size, block):
            peer.write(data)
            await peer.drain()

    return handle


def body_blocks(size: int, block: int = READ_SIZE) -> Iterator[bytes]:
    """``size`` bytes of varied content, generated block by block (never held whole)."""
    seed = hashlib.sha256(b"dispatcher").digest() * (block // 32 + 1)
    sent = 0
    index = 0
    while sent < size:
        length = min(block, size - sent)
        data = index.to_bytes(8, "big") + seed[8:length]
        yield data[:length]
        sent += length
        index += 1


def body_digest(size: int, block: int = READ_SIZE) -> str:
    digest = hashlib.sha256()
    for data in body_blocks(size, block):
        digest.update(data)
    return digest.hexdigest()


# --- Addresses ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def refusing_socket() -> socket.socket:
    """A socket bound to a loopback port but not listening: connects to it are refused.

    Holding it keeps the port from being reused; ``listen`` on it later to start serving."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def short_socket_dir() -> str:
    """A new directory with a short path: a Unix socket path must fit in 108 bytes."""
    return tempfile.mkdtemp(prefix="dup-", dir="/tmp")


# --- nginx ---


@dataclass(slots=True)
class NginxUpstream:
    """nginx started with a generated config; ``url`` reaches its one server block."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


NGINX_ECHO: Final = " ".join(
    [
        "method=$request_method",
        "uri=$request_uri",
        "host=$http_host",
        "xff=$http_x_forwarded_for",
        "proto=$http_x_forwarded_proto",
        "fhost=$http_x_forwarded_host",
        "conn=$connection",
        "req=$connection_requests",
        "te=$http_te",
    ]
)
"""What nginx's ``/echo`` answers: ``name=value`` pairs about the request it received."""

NGINX_CONFIG: Final = """
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_timeout {keepalive_timeout};
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        root {root}/www;
        etag on;
        location = /echo {{
            default_type text/plain;
            add_header Set-Cookie "a=1; Path=/";
            add_header Set-Cookie "b=2; Path=/";
            return 200 "{echo}\\n";
        }}
        location = /teapot {{
            return 418;
        }}
        location /static/ {{
        }}
    }}
}}
"""


@asynccontextmanager
async def run_nginx(
    root: Path, *, keepalive_timeout: str = "75s", files: dict[str, bytes] | None = None
) -> AsyncIterator[NginxUpstream]:
    """Start nginx (foreground, one process) on a free port with a config in ``root``."""
    (root / "www" / "static").mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (root / "www" / "static" / name).write_bytes(data)
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(
        NGINX_CONFIG.format(
            root=root, port=port, keepalive_timeout=keepalive_timeout, echo=NGINX_ECHO
        )
    )
    process = subprocess.Popen(
        [NGINX, "-c", str(config), "-p", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    nginx = NginxUpstream(root, port, process, dict(files or {}))
    try:
        await _wait_listening(port, process)
        yield nginx
    finally:
        _stop(process)


async def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"nginx exited with {process.returncode}: {stderr}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nginx did not listen on port {port} within 10 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


def nginx_available() -> bool:
    return os.path.exists(NGINX)


# --- WebSocket ---


@dataclass(slots=True)
class WebSocketUpstream:
    """A websockets echo server; ``requests`` holds the upgrade requests' headers."""

    port: int
    requests: list[Headers] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    closed: list[tuple[int | None, str | None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def run_websocket_upstream() -> AsyncIterator[WebSocketUpstream]:
    """Echo text and binary messages; ``/close-4001`` closes with 4001; ``/forbidden`` is 403."""
    upstream = WebSocketUpstream(0)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        upstream.requests.append(request.headers)
        upstream.paths.append(request.path)
        if request.path == "/forbidden":
            return connection.respond(HTTPStatus.FORBIDDEN, "no websocket for you\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        if connection.request is not None and connection.request.path == "/close-4001":
            await connection.recv()
            await connection.close(4001, "bye from upstream")
            return
        try:
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            upstream.closed.append((connection.close_code, connection.close_reason))

    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, max_size=4 * 1024 * 1024
    ) as server:
        upstream.port = next(iter(server.sockets)).getsockname()[1]
        yield upstream
