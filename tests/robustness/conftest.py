"""The harness of the robustness suite (``test_checklist.py``): raw request builders, the
``Case`` a checklist table row holds, a dispatcher whose workers are ``RecordingUpstream``
servers (``running_stack``), and the assertions every case makes.

Reuses the forwarding tests' upstreams and raw client (``tests.forwarding``). Async tests run
on uvloop, as the dispatcher does in production.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, cast

import pytest
import uvloop
from _pytest.mark.structures import ParameterSet

from dispatcher.testing import run_dispatcher
from dispatcher.types import ASGIApp, Message, Receive, Send
from tests.admin.conftest import send
from tests.forwarding.conftest import Client, Gateway, Response, serve, write_config
from tests.forwarding.upstreams import (
    Handler,
    Peer,
    RecordingUpstream,
    UpstreamRequest,
    body_blocks,
    free_port,
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


Seen = Literal["nothing", "one", "cut"]
"""What the upstream may have received: nothing (not even a connection); one complete,
well-framed request; or a cut one (a well-framed head whose body never completed, because
the dispatcher aborted the exchange when the body went bad)."""
WorkerName = Literal["db", "other"]


# --- Limits and markers ---

BODY_LIMIT: Final = 1024
LIMITS: Final = {"max_body_bytes": BODY_LIMIT, "body_idle_timeout": 1.0}
SMUGGLED: Final = b"GET /smuggled HTTP/1.1\r\nHost: db.do\r\n\r\n"
"""Appended after a bad body: if any byte after the error were read as a new request, this
one would reach the worker."""
CLOSING: Final = frozenset({400, 405, 408, 413, 414, 417, 431, 501, 505})
"""Refusals after which the connection must be closed."""
SERVICES: Final = ["gateway", "db", "auth", "schedule", "webhooks", "email", "mcp", "queue"]
TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
REQUEST_LINE: Final = re.compile(rb"[A-Z]+ /[\x21-\x7e]* HTTP/1\.1")


# --- Raw requests ---


def head(*lines: bytes, start: bytes = b"POST / HTTP/1.1", host: bytes | None = b"db.do") -> bytes:
    """A request head: ``start``, a Host line (unless ``host`` is None), ``lines``, blank line."""
    parts = [start, *([b"Host: " + host] if host is not None else []), *lines]
    return b"\r\n".join(parts) + b"\r\n\r\n"


def get(target: bytes = b"/", *lines: bytes, host: bytes | None = b"db.do") -> bytes:
    return head(*lines, start=b"GET " + target + b" HTTP/1.1", host=host)


def chunked(*lines: bytes) -> bytes:
    """A chunked POST head; the body (chunks) follows."""
    return head(b"Transfer-Encoding: chunked", *lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def headers_of(count: int, size: int) -> list[bytes]:
    """``count`` header lines whose value is ``size`` bytes."""
    return [b"X-H%d: %b" % (n, b"v" * size) for n in range(count)]


# --- Cases ---


@dataclass(frozen=True, slots=True)
class Case:
    """One row of a checklist table."""

    raw: bytes
    status: tuple[int, ...]
    seen: Seen
    target: bytes | None = None
    body: bytes | None = None
    worker: WorkerName = "db"
    headers: tuple[tuple[str, str | None], ...] = ()
    """Upstream header values the case expects (``None``: the header must be absent)."""

    @property
    def method(self) -> str:
        return self.raw.split(b" ", 1)[0].decode("latin-1")


def case(
    name: str,
    raw: bytes,
    *status: int,
    seen: Seen = "nothing",
    target: bytes | None = None,
    body: bytes | None = None,
    worker: WorkerName = "db",
    headers: Sequence[tuple[str, str | None]] = (),
    bug: str | None = None,
) -> ParameterSet:
    """A table row whose id is ``name`` (``NN-...``, NN the checklist item); ``bug`` marks it
    as a strict xfail: the dispatcher does not do this yet."""
    marks = [pytest.mark.xfail(strict=True, reason="bug: " + bug)] if bug else []
    row = Case(raw, status, seen, target, body, worker, tuple(headers))
    return pytest.param(row, id=name, marks=marks)


# --- The dispatcher under test ---


@dataclass(frozen=True, slots=True)
class Stack:
    """A running dispatcher and its two upstreams."""

    gateway: Gateway
    db: RecordingUpstream
    other: RecordingUpstream
    """``gateway`` and ``auth`` (``gateway.do``, ``auth.do``, ``do``, ``/api/auth``)."""

    def upstream(self, worker: WorkerName) -> RecordingUpstream:
        return self.db if worker == "db" else self.other


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    handler: Handler | None = None,
    *,
    limits: Mapping[str, object] = LIMITS,
    proxy: Mapping[str, object] | None = None,
) -> AsyncIterator[Stack]:
    """A dispatcher whose ``db`` worker answers with ``handler`` (echo by default)."""
    async with (
        RecordingUpstream.start(handler) as db,
        RecordingUpstream.start() as other,
        serve(
            tmp_path,
            {"db": db.url, "gateway": other.url, "auth": other.url},
            limits=limits,
            proxy=proxy,
        ) as gateway,
    ):
        yield Stack(gateway, db, other)


async def send_raw(gateway: Gateway, raw: bytes, method: str = "GET") -> tuple[Client, Response]:
    """Write ``raw`` on a new connection and read the first response."""
    client = await gateway.connect()
    client.send(raw)
    return client, await client.response(method=method)


async def assert_closed_after(client: Client, response: Response) -> None:
    """A refusal says it closes, then the connection ends with nothing more written."""
    assert response.header("connection") == "close", response.raw_head
    assert await client.read_until_closed(timeout=3) == b""


def assert_well_framed(request: UpstreamRequest) -> None:
    """The head the upstream read is unambiguous: one request line, clean field lines, one
    Host, at most one framing header, a decimal length or a lone ``chunked``."""
    line, *lines = request.raw_head[:-4].split(b"\r\n")
    assert REQUEST_LINE.fullmatch(line), line
    names = []
    for field_line in lines:
        name, colon, value = field_line.partition(b":")
        assert colon and TOKEN.fullmatch(name), field_line
        assert FIELD_VALUE.fullmatch(value), field_line
        names.append(name.lower())
    assert names.count(b"host") == 1, names
    framing = [n for n in names if n in (b"content-length", b"transfer-encoding")]
    assert len(framing) <= 1, names
    length = request.header("content-length")
    if length is not None:
        assert re.fullmatch(rb"0|[1-9][0-9]*", length), length
    encoding = request.header("transfer-encoding")
    assert encoding in (None, b"chunked"), encoding


async def assert_upstream_saw(stack: Stack, row: Case) -> None:
    upstream = stack.upstream(row.worker)
    bystander = stack.other if row.worker == "db" else stack.db
    if row.seen == "nothing":
        assert upstream.accepted == 0, upstream.requests
    elif row.seen == "cut":
        # A streamed body that went bad: the upstream exchange is aborted, never completed.
        await upstream.wait_for(lambda: all(c.closed_at is not None for c in upstream.connections))
        assert len(upstream.requests) <= 1, upstream.requests
        for request in upstream.requests:
            assert_well_framed(request)
            assert not request.is_complete, request
    else:
        await upstream.wait_requests(1)
        assert len(upstream.requests) == 1, upstream.requests
        request = upstream.requests[0]
        assert_well_framed(request)
        assert request.is_complete
        assert request.method == row.method
        if row.target is not None:
            assert request.target == row.target
        if row.body is not None:
            assert request.body == row.body
        for name, value in row.headers:
            expected = [] if value is None else [value.encode("latin-1")]
            assert request.values(name) == expected, (name, request.headers)
    assert bystander.accepted == 0, bystander.requests


async def assert_serves_next(stack: Stack) -> None:
    """A new connection is served, and nothing left over from the case reached a worker."""
    before = len(stack.db.requests)
    response = await stack.gateway.request("/next")
    assert response.status == 200, response.body
    await stack.db.wait_requests(before + 1)
    assert [r.target for r in stack.db.requests[before:]] == [b"/next"]
    every = stack.db.requests + stack.other.requests
    assert not [r for r in every if b"smuggled" in r.target], every


async def check(tmp_path: Path, row: Case) -> None:
    """Run one table row: the status (and the close), what the upstream saw, the next request."""
    async with running_stack(tmp_path) as stack:
        client, response = await send_raw(stack.gateway, row.raw, row.method)
        assert response.status in row.status, response.raw_head + response.body
        if response.status in CLOSING:
            await assert_closed_after(client, response)
        await client.aclose()
        await assert_upstream_saw(stack, row)
        await assert_serves_next(stack)


# --- Upstream and in-process workers ---


def delayed(handler: Handler, seconds: float) -> Handler:
    """``handler``, ``seconds`` late: a slow first answer shows that responses keep order."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        await asyncio.sleep(seconds)
        await handler(request, peer)

    return handle


async def run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@asynccontextmanager
async def app_gateway(tmp_path: Path, app: ASGIApp) -> AsyncIterator[tuple[Gateway, Stack]]:
    """A dispatcher whose ``auth`` worker is ``app`` (in-process) and ``db`` an upstream."""
    async with RecordingUpstream.start() as db, RecordingUpstream.start() as other:
        config = write_config(
            tmp_path, {"db": db.url, "gateway": other.url}, limits={"drain_timeout": 2.0}
        )
        async with run_dispatcher(config, environ={}, workers={"auth": app}) as running:
            gateway = Gateway(running)
            try:
                yield gateway, Stack(gateway, db, other)
            finally:
                for client in gateway.clients:
                    await client.aclose()


# --- Waiting, memory, a stalled upstream ---


async def wait_upstream_closed(upstream: RecordingUpstream, timeout: float = 2.0) -> None:
    await upstream.wait_for(
        lambda: (
            bool(upstream.connections)
            and all(c.closed_at is not None for c in upstream.connections)
        ),
        timeout,
    )


MIB: Final = 1024 * 1024
LARGE: Final = 64 * MIB
FLIGHT_BOUND: Final = 24 * MIB
"""The bytes of a 64 MiB upload that may be in memory or socket buffers at once (measured:
about 9 MiB, of which 4 MiB is the recording upstream's copy)."""


def resident_bytes() -> int:
    """This process's resident memory (the dispatcher, the upstream and the client)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


ESTABLISHED: Final = 1
"""``tcpi_state`` of a connection that is up (linux/tcp_states.h)."""


@dataclass(slots=True)
class StalledUpstream:
    """A server that accepts and never reads, with small receive buffers so that the
    kernel's share of the bytes in flight stays small."""

    url: str = ""
    held: list[asyncio.StreamWriter] = field(default_factory=list)

    def states(self) -> list[int]:
        """The TCP state of each accepted connection, seen from the upstream's side."""
        return [
            w.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            for w in self.held
        ]

    def release(self) -> None:
        """Reset every accepted connection (so the dispatcher's stop has nothing to wait on)."""
        for writer in self.held:
            writer.transport.abort()


@asynccontextmanager
async def stalled_upstream() -> AsyncIterator[StalledUpstream]:
    upstream = StalledUpstream()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        cast(asyncio.Transport, writer.transport).pause_reading()
        upstream.held.append(writer)

    server = await asyncio.start_server(accept, sock=sock)
    upstream.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield upstream
    finally:
        upstream.release()
        server.close()
        await server.wait_closed()


async def push_until_blocked(client: Client) -> int:
    """Send a ``LARGE`` upload until the connection stops taking bytes; what it took."""
    client.send(head(b"Content-Length: %d" % LARGE))
    accepted = 0
    for block in body_blocks(LARGE):
        client.send(block)
        try:
            await asyncio.wait_for(client.writer.drain(), 0.5)
        except TimeoutError:
            return accepted
        accepted += len(block)
    return accepted


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# --- The dispatcher command as a process ---

SOURCE: Final = str(Path(__file__).resolve().parents[2] / "src")
CLEAN_ENV: Final = frozenset(
    {"ENVIRONMENT", "DISPATCHER_STORE", "DISPATCHER_ADMIN_TOKEN", "DISPATCHER_ADMIN_TOKENS_FILE"}
)
"""Variables of the test's own environment that must not reach a started dispatcher."""


def command_env(**environ: str) -> dict[str, str]:
    """This process's environment without ``CLEAN_ENV``, plus ``environ``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(PYTHONPATH=SOURCE, **environ)
    return env


def run_command(*args: str, cwd: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """``dispatcher <args>`` as a process, to its exit. A process rather than click's runner:
    a ``serve`` that wrongly starts is killed by the timeout instead of serving forever."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=command_env(**environ),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_not_listening(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@dataclass
class Node:
    """One ``dispatcher serve`` process; its stderr is kept to explain a failure."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: list[bytes] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def describe(self) -> str:
        return b"".join(self.log[-40:]).decode(errors="replace")


def start_node(
    cwd: Path, store: Path, config: Path | None = None, prelude: str = "", **environ: str
) -> Node:
    """``dispatcher serve`` on free ports, after ``prelude`` (Python run first in the process).

    ``environ`` adds variables (``DISPATCHER_ADMIN_TOKEN`` among them, or the process
    generates its own token). Its output goes to a pipe drained by a thread, never to a
    file: a file-size limit put on the process must not stop it from logging."""
    port, admin_port = free_port(), free_port()
    code = f"{prelude}\nfrom dispatcher.cli import main\nmain()\n"
    argv = [sys.executable, "-c", code, "serve", "--port", str(port)]
    argv += ["--admin-port", str(admin_port), *(["--config", str(config)] if config else [])]
    process = subprocess.Popen(
        argv,
        env=command_env(DISPATCHER_STORE=str(store), **environ),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    node = Node(process, port, admin_port)
    node.reader = threading.Thread(target=_drain, args=(process, node.log), daemon=True)
    node.reader.start()
    return node


def _drain(process: subprocess.Popen[bytes], log: list[bytes]) -> None:
    """Keep the process's stderr until it ends (so a full pipe never blocks it)."""
    assert process.stderr is not None
    with process.stderr:
        for line in process.stderr:
            log.append(line)


async def wait_ready(node: Node, within: float = 20.0) -> None:
    """Until the node's admin listener answers ``/health``."""
    deadline = time.monotonic() + within
    while True:
        assert node.process.poll() is None, f"serve exited: {node.describe()}"
        with suppress(OSError):
            answer = await asyncio.to_thread(send, node.admin_url, "GET", "/health", token=None)
            if answer.status == 200:
                return
        assert time.monotonic() < deadline, f"serve not ready in {within} s: {node.describe()}"
        await asyncio.sleep(0.05)


def stop(node: Node) -> None:
    """SIGTERM (SIGKILL if it lingers), then the end of its output."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
    if node.reader is not None:
        node.reader.join(timeout=5)


@asynccontextmanager
async def serving(
    cwd: Path, store: Path, config: Path | None = None, **environ: str
) -> AsyncIterator[Node]:
    """A ready ``dispatcher serve`` process for the block (see ``start_node``)."""
    node = start_node(cwd, store, config, **environ)
    try:
        await wait_ready(node)
        yield node
    finally:
        stop(node)
