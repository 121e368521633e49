"""Shared by the server tests: a real dispatcher on a loopback port, a raw HTTP/1.1 client
that reads responses byte-exactly, and ``App``, one ASGI app whose behaviour is picked by
the request path (it is mapped to several workers, so any service host reaches it).

Async tests run on uvloop, as the dispatcher does in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import uvloop

from dispatcher.app import RunningDispatcher
from dispatcher.testing import run_dispatcher
from dispatcher.types import ASGIApp, Message, Receive, Scope, Send

READ_TIMEOUT: Final = 5.0
SERVICES: Final = ("gateway", "db", "auth")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


# --- Requests and responses on the wire ---


def request_bytes(
    method: str = "GET",
    target: str = "/",
    host: str | None = "db.do",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    content_length: bool | None = None,
) -> bytes:
    """One request as raw bytes; ``content_length`` defaults to "when there is a body"."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes) -> bytes:
    """A chunked body: each chunk framed, then the last chunk."""
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Response:
    """One response as read off the wire; header names lower-cased, repeats kept."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    is_chunked: bool = False
    chunk_count: int = 0
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        wanted = name.encode("ascii")
        return [v.decode("latin-1") for n, v in self.headers if n == wanted]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    """Read one response; raises ``IncompleteReadError`` if the server stops short."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw_head[:-4].split(b"\r\n")
    version, status, _ = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", status_line
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip()))
    response = Response(int(status), headers, b"", raw_head=raw_head)
    return await _read_body(reader, response, method)


async def _read_body(reader: asyncio.StreamReader, response: Response, method: str) -> Response:
    status = response.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        return response
    encoding = response.header("transfer-encoding")
    if encoding is not None:
        assert encoding == "chunked", encoding
        body, count = await _read_chunked(reader)
        return Response(status, response.headers, body, True, count, response.raw_head)
    length = response.header("content-length")
    if length is not None:
        body = await reader.readexactly(int(length))
    else:
        body = await reader.read()  # delimited by the close
    return Response(status, response.headers, body, raw_head=response.raw_head)


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line[:-2], 16)
        if size == 0:
            assert await reader.readexactly(2) == b"\r\n"
            return b"".join(parts), len(parts)
        parts.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n"


class Client:
    """One raw TCP connection to the dispatcher."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(
        self,
        target: str = "/",
        *,
        method: str = "GET",
        host: str | None = "db.do",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Send one request and read its response."""
        self.send(request_bytes(method, target, host, headers, body))
        return await self.response(method=method)

    async def response(self, *, method: str = "GET", timeout: float = READ_TIMEOUT) -> Response:
        return await asyncio.wait_for(read_response(self.reader, method=method), timeout)

    async def read_until_closed(self, timeout: float = READ_TIMEOUT) -> bytes:
        """Everything the server still sends, up to its close (a reset counts as a close)."""
        data = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionResetError:
                    return bytes(data)
                if not chunk:
                    return bytes(data)
                data += chunk

    async def assert_closed(self, timeout: float = READ_TIMEOUT) -> None:
        """The server closes the connection and sends nothing more."""
        assert await self.read_until_closed(timeout) == b""

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@dataclass(slots=True)
class Server:
    """A running dispatcher, the app behind its workers, and ways to reach it."""

    running: RunningDispatcher
    app: App
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.listener.port

    async def connect(self, *, send_buffer: int | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        if send_buffer is not None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def exchange(self, data: bytes, *, method: str = "GET") -> Response:
        """Send ``data`` on a new connection and read one response."""
        client = await self.connect()
        client.send(data)
        return await client.response(method=method)

    async def assert_serves(self) -> None:
        """A fresh connection still gets a normal answer."""
        client = await self.connect()
        response = await client.request("/ping", host="db.do")
        assert response.status == 200
        assert response.json()["path"] == "/ping"
        await client.aclose()


def write_limits(tmp_path: Path, limits: Mapping[str, float]) -> Path:
    """A config file whose ``[limits]`` table sets ``limits``; everything else is the seed's."""
    path = tmp_path / "dispatcher.toml"
    lines = ["[limits]"] + [f"{key} = {value!r}" for key, value in limits.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@asynccontextmanager
async def serve(
    tmp_path: Path,
    app: App | None = None,
    *,
    workers: Mapping[str, ASGIApp] | None = None,
    limits: Mapping[str, float] | None = None,
) -> AsyncIterator[Server]:
    """Run a dispatcher whose gateway, db and auth workers are all ``app`` (or ``workers``),
    with the seed's configuration plus ``limits`` as its ``[limits]`` table."""
    app = app or App()
    config = write_limits(tmp_path, limits) if limits else None
    apps = dict(workers) if workers is not None else dict.fromkeys(SERVICES, app)
    async with run_dispatcher(config, workers=apps, environ={}) as running:
        server = Server(running, app)
        try:
            yield server
        finally:
            for client in server.clients:
                await client.aclose()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A dispatcher with the seed's configuration and default limits."""
    async with serve(tmp_path) as running:
        yield running


# --- The app ---


class App:
    """An ASGI app whose behaviour is picked by the first path segment; it records what it saw.

    Unknown paths answer with a description of the request (scope and body digest).
    """

    def __init__(self) -> None:
        self.lifespan: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.received: list[str] = []
        self.disconnected = asyncio.Event()
        self.started = asyncio.Event()
        self.flooded = 0  # body bytes do_flood has handed to send()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert scope["type"] == "http"
        first, _, rest = scope["path"][1:].partition("/")
        behaviour = getattr(self, "do_" + first.replace("-", "_"), None)
        self.started.set()
        if behaviour is None:
            await self.describe(scope, receive, send)
        else:
            await behaviour(rest, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            self.lifespan.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def describe(self, scope: Scope, receive: Receive, send: Send, delay: float = 0) -> None:
        body = await self.read_body(receive, delay)
        answer = {**describe_scope(scope), **body}
        self.requests.append(answer)
        await send_json(send, answer)

    async def read_body(self, receive: Receive, delay: float = 0) -> dict[str, Any]:
        """Read the whole body, sleeping ``delay`` before each receive."""
        digest = hashlib.sha256()
        length = chunks = 0
        while True:
            if delay:
                await asyncio.sleep(delay)
            message = await receive()
            self.received.append(message["type"])
            if message["type"] != "http.request":
                return {"complete": False, "length": length, "chunks": chunks}
            data = message.get("body", b"")
            digest.update(data)
            length += len(data)
            chunks += 1 if data else 0
            if not message.get("more_body", False):
                return {
                    "complete": True,
                    "length": length,
                    "chunks": chunks,
                    "sha256": digest.hexdigest(),
                }

    async def do_sleep(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(int(rest) / 1000)
        await send_text(send, 200, f"slept {rest}")

    async def do_slow_read(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Sleep ``rest`` ms before the first read, then read without a pause."""
        await asyncio.sleep(int(rest) / 1000)
        await self.describe(scope, receive, send)

    async def do_trickle_read(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Sleep ``rest`` ms before every read."""
        await self.describe(scope, receive, send, delay=int(rest) / 1000)

    async def do_stream(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(int(rest)):
            body = b"chunk-%d\n" % index
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def do_flood(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        """``rest`` MiB in 64 KiB chunks, as fast as ``send`` takes them (no other await)."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        block = b"f" * (64 * 1024)
        for _ in range(int(rest) * 16):
            await send({"type": "http.response.body", "body": block, "more_body": True})
            self.flooded += len(block)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def do_no_read(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 200, "not read")

    async def do_status(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": int(rest), "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def do_fixed(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of ``rest`` bytes, with no content-length from the app."""
        body = b"x" * int(rest)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def do_raise_before(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom before start")

    async def do_raise_after_start(
        self, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom after start")

    async def do_raise_mid_body(
        self, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = [(b"content-length", b"100")] if rest == "length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.sleep(0.05)
        raise RuntimeError("boom mid body")

    async def do_raise_after_end(
        self, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await send_text(send, 200, "done")
        raise RuntimeError("boom after the response")

    async def do_return_none(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        return

    async def do_bad_header(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            "crlf": [(b"x-ok", b"1\r\nx-injected: yes")],
            "lf": [(b"x-ok", b"1\nx-injected: yes")],
            "nul": [(b"x-ok", b"a\x00b")],
            "name": [(b"x bad", b"1")],
            "length": [(b"content-length", b"abc")],
        }[rest]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def do_wrong_length(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Declare 10 bytes, send ``rest`` bytes in two messages."""
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        data = b"y" * int(rest)
        await send({"type": "http.response.body", "body": data[:3], "more_body": True})
        await send({"type": "http.response.body", "body": data[3:]})

    async def do_wait_disconnect(
        self, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Read the body, then wait on receive (as long-poll and SSE apps do)."""
        await self.read_body(receive)
        message = await receive()
        self.received.append(message["type"])
        if message["type"] == "http.disconnect":
            self.disconnected.set()

    async def do_head_length(self, rest: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = b"0123456789" * 5
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def describe_scope(scope: Scope) -> dict[str, Any]:
    return {
        "type": scope["type"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "client": list(scope["client"]) if scope["client"] else None,
        "server": list(scope["server"]) if scope["server"] else None,
        "extensions": scope["extensions"],
    }


async def send_json(send: Send, value: object, status: int = 200) -> None:
    body = json.dumps(value).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_text(send: Send, status: int, text: str) -> None:
    message: Message = {"type": "http.response.start", "status": status, "headers": []}
    await send(message)
    await send({"type": "http.response.body", "body": text.encode()})
