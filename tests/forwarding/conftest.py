"""Shared by the forwarding tests: a dispatcher whose workers are real upstreams, configured by
a TOML file written in ``tmp_path``, and a raw HTTP/1.1 client that reads responses
byte-exactly (so a cut body shows as cut, never as a complete one).

Async tests run on uvloop, as the dispatcher does in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import uvloop

from dispatcher.app import RunningDispatcher
from dispatcher.testing import run_dispatcher

from .upstreams import NginxUpstream, nginx_available, run_nginx

READ_TIMEOUT: Final = 5.0
NAMESPACE: Final = "dotdo-development"
"""The namespace of the default environment (``environ={}`` means development)."""

WorkerSpec = str | Sequence[str] | Mapping[str, object]
"""A worker's URL, its URLs, or its whole spec (``{"url": ..., "preserve_host": False}``)."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


# --- Configuration ---


def toml_value(value: object) -> str:
    """A TOML literal for a config value (strings as JSON strings, which TOML accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def worker_spec(spec: WorkerSpec) -> Mapping[str, object]:
    if isinstance(spec, str):
        return {"url": spec}
    if isinstance(spec, Mapping):
        return spec
    return {"url": list(spec)}


def config_text(
    workers: Mapping[str, WorkerSpec],
    *,
    proxy: Mapping[str, object] | None = None,
    limits: Mapping[str, object] | None = None,
    store: str | None = None,
) -> str:
    lines = []
    for section, table in (("proxy", proxy), ("limits", limits)):
        if table:
            lines.append(f"[{section}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    if store is not None:
        lines += ["[store]", f"url = {toml_value(store)}"]
    lines.append(f'[workers."{NAMESPACE}"]')
    lines += [f"{name} = {toml_value(worker_spec(spec))}" for name, spec in workers.items()]
    return "\n".join(lines) + "\n"


def write_config(
    tmp_path: Path,
    workers: Mapping[str, WorkerSpec],
    *,
    proxy: Mapping[str, object] | None = None,
    limits: Mapping[str, object] | None = None,
    store: str | None = None,
) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(config_text(workers, proxy=proxy, limits=limits, store=store))
    return path


# --- The raw client ---


def request_bytes(
    method: str = "GET",
    target: str = "/",
    host: str | None = "db.do",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    content_length: bool | None = None,
) -> bytes:
    """One request as raw bytes; ``content_length`` defaults to "when there is a body"."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Response:
    """One response as read off the wire; header names lower-cased, order and repeats kept."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    is_chunked: bool = False
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        wanted = name.encode("ascii")
        return [v.decode("latin-1") for n, v in self.headers if n == wanted]

    @property
    def names(self) -> list[bytes]:
        return [n for n, _ in self.headers]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_head(reader: asyncio.StreamReader) -> Response:
    raw_head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw_head[:-4].split(b"\r\n")
    version, status, *_ = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", status_line
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip()))
    return Response(int(status), headers, raw_head=raw_head)


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    """Read one response; raises ``IncompleteReadError`` if the server stops short."""
    head = await read_head(reader)
    status = head.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        return head
    encoding = head.header("transfer-encoding")
    if encoding is not None:
        assert encoding == "chunked", encoding
        body = b"".join([part async for part in read_chunks(reader)])
        return Response(status, head.headers, body, True, head.raw_head)
    length = head.header("content-length")
    body = await reader.readexactly(int(length)) if length is not None else await reader.read()
    return Response(status, head.headers, body, raw_head=head.raw_head)


async def read_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The chunks of a chunked body as they arrive; ``IncompleteReadError`` if it is cut."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line[:-2], 16)
        if size == 0:
            assert await reader.readexactly(2) == b"\r\n"
            return
        data = await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"
        yield data


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
        timeout: float = READ_TIMEOUT,
    ) -> Response:
        self.send(request_bytes(method, target, host, headers, body))
        return await self.response(method=method, timeout=timeout)

    async def response(self, *, method: str = "GET", timeout: float = READ_TIMEOUT) -> Response:
        return await asyncio.wait_for(read_response(self.reader, method=method), timeout)

    async def read_until_closed(self, timeout: float = READ_TIMEOUT) -> bytes:
        """Everything the server still sends, up to its close (a reset counts as a close)."""
        data = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    piece = await self.reader.read(65536)
                except ConnectionResetError:
                    return bytes(data)
                if not piece:
                    return bytes(data)
                data += piece

    def reset(self) -> None:
        """Go away with a reset (RST), as a killed client does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def aclose(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass(slots=True)
class Gateway:
    """A running dispatcher and the clients opened to it (closed at the end of the test)."""

    running: RunningDispatcher
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.listener.port

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def request(
        self,
        target: str = "/",
        *,
        method: str = "GET",
        host: str | None = "db.do",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float = READ_TIMEOUT,
    ) -> Response:
        """One request on a new connection."""
        client = await self.connect()
        try:
            return await client.request(
                target, method=method, host=host, headers=headers, body=body, timeout=timeout
            )
        finally:
            await client.aclose()
            self.clients.remove(client)


@asynccontextmanager
async def serve(
    tmp_path: Path,
    workers: Mapping[str, WorkerSpec],
    *,
    proxy: Mapping[str, object] | None = None,
    limits: Mapping[str, object] | None = None,
) -> AsyncIterator[Gateway]:
    """Run a dispatcher (development environment) whose ``workers`` are upstream URLs.

    The graceful drain at the end is cut to 2 s: a test that fails with a response still in
    flight must not wait out the default 30 s."""
    limits = {"drain_timeout": 2.0, **(limits or {})}
    config = write_config(tmp_path, workers, proxy=proxy, limits=limits)
    async with run_dispatcher(config, environ={}) as running:
        gateway = Gateway(running)
        try:
            yield gateway
        finally:
            for client in gateway.clients:
                await client.aclose()


def error_fields(response: Response) -> dict[str, Any]:
    """The JSON error body, checked to be served as JSON with a matching length."""
    assert response.header("content-type") == "application/json", response.headers
    assert response.header("content-length") == str(len(response.body))
    fields: dict[str, Any] = response.json()
    return fields


# --- nginx ---


def require_nginx() -> None:
    """Skip without nginx; under CI (CI=true) its absence is a failure, not a skip."""
    if nginx_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("nginx is required under CI (/usr/sbin/nginx is missing)")
    pytest.skip("nginx is not installed (/usr/sbin/nginx)")


NGINX_FILES: Final = {"page.html": b"<h1>static page</h1>\n" * 64}


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[NginxUpstream]:
    """nginx on a free port, with ``/echo``, ``/teapot`` and static files under ``/static/``."""
    require_nginx()
    root = tmp_path / "nginx"
    root.mkdir()
    async with run_nginx(root, files=NGINX_FILES) as server:
        yield server
