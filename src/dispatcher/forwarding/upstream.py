"""Upstream workers: a reverse proxy at the protocol level.

``UpstreamHub`` owns one keep-alive pool of ``UpstreamConnection`` protocols per upstream
URL (httptools parses the responses), the passive health of each upstream and the sweep
that enforces connect, response-header, stream-idle and pool-idle timeouts.
``UpstreamForwarder`` serves one worker: it rewrites the request head once (hop-by-hop
headers out, ``X-Forwarded-*`` in), picks an upstream round-robin, and streams both bodies.

A body-less request on a pooled connection runs entirely in callbacks (no task); anything
that must wait (a new connection, a request body to stream) runs as one coroutine.

Failures answer like the seed's errors: refused or unreachable → 502 "Bad gateway",
timeouts → 504 "Gateway timeout"; a response cut after it started aborts the client
connection, so a truncated body never looks complete.

Example::

    async with UpstreamHub(ProxySettings()) as hub:
        target = parse_target({"url": "http://127.0.0.1:9000"})
        forwarder = hub.forwarder_for(target)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import struct
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import httptools

from dispatcher import outcomes
from dispatcher._compiled import PURE_PYTHON_VARIABLE
from dispatcher.errors import RequestError
from dispatcher.http import (
    BodyStream,
    ClientDisconnected,
    RequestHead,
    ResponseWriter,
    TunnelPeer,
)
from dispatcher.server.protocol import Exchange
from dispatcher.server.writes import WriteBatch
from dispatcher.settings import ProxySettings
from dispatcher.workers import UpstreamTarget, UpstreamURL

if TYPE_CHECKING:
    from dispatcher.namespaces import Worker

logger = logging.getLogger("dispatcher.upstream")

SWEEP_SECONDS: Final = 0.5
MAX_RESPONSE_HEAD: Final = 65536
"""Bytes an upstream's response head may take; beyond it the answer is a 502."""
MAX_RESPONSE_HEADERS: Final = 200
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# Request headers the proxy rewrites (RFC 9110 §7.6.1 hop-by-hop, framing, forwarding).
_DROP, _CONNECTION, _TE, _HOST, _XFF, _FORWARDED = 1, 2, 3, 4, 5, 6
_REQUEST_ACTIONS: Final = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _TE,
    b"trailer": _DROP,
    b"transfer-encoding": _DROP,
    b"upgrade": _DROP,
    b"content-length": _DROP,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _FORWARDED,
    b"x-forwarded-host": _FORWARDED,
    b"forwarded": _FORWARDED,
    b"x-real-ip": _FORWARDED,
    b"http2-settings": _DROP,
}
# Names a client may list in Connection without removing them: the proxy owns these.
_PROXY_OWNED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"connection",
        b"close",
        b"keep-alive",
        b"upgrade",
    }
)
_NOTHING: Final[frozenset[bytes]] = frozenset()
_SWITCH_HEADERS: Final = b"connection: upgrade\r\nupgrade: websocket\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_TRUST_CACHE_SIZE: Final = 4096  # client addresses whose trusted-proxy answer is kept
# A hop-by-hop line of the lower-cased head (or an X-Request-Id line, which is kept): the LF
# before it (the search jumps from one line start to the next), its name, its value, and its
# CR (its LF starts the next line).
# Greedy and without white-space classes: sre's lazy and optional parts cost 1 µs a head.
_HOP_LINE: Final = re.compile(
    rb"(\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
    rb"|content-length|x-request-id):([^\n]*)\r)(?=\n)"
)


class UpstreamFailure(RequestError):
    """The upstream could not give an answer; rendered like the seed's errors."""

    status = 502
    title = "Bad gateway"
    code = "bad_gateway"
    outcome = outcomes.BAD_GATEWAY


class UpstreamTimeout(UpstreamFailure):
    status = 504
    title = "Gateway timeout"
    code = "gateway_timeout"
    outcome = outcomes.GATEWAY_TIMEOUT


class UpstreamOverloaded(UpstreamFailure):
    status = 503
    title = "Service unavailable"
    code = "upstream_overloaded"
    outcome = outcomes.OVERLOADED
    headers: ClassVar[list[tuple[bytes, bytes]]] = [(b"retry-after", b"1")]


class UpstreamConnection:
    """One keep-alive connection to an upstream; carries one exchange at a time.

    An ``asyncio.Protocol`` by its methods, not by inheritance (see ``HttpProtocol``).
    """

    __slots__ = (
        "pool",
        "transport",
        "_parser",
        "_exchange",
        "_on_done",
        "_head",
        "_is_head",
        "_got_bytes",
        "_is_started",
        "_deadline",
        "_waiting_head",
        "_is_reused",
        "_must_close",
        "idle_since",
        "_finished",
        "_is_upgrade",
        "_switch_block",
        "_tunnel",
        "_retry",
        "_is_close_delimited",
        "_is_poisoned",
        "_body",
        "_is_body_chunked",
        "_pending_head",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        # Typed as the server's Exchange, not the ResponseWriter protocol: compiled, the calls
        # on it are direct (the dispatcher hands upstream forwarders nothing else).
        self._exchange: Exchange | None = None
        self._on_done: asyncio.Future[None] | None = None
        self._head = b""  # the raw bytes of the response head being received
        self._is_head = False
        self._got_bytes = False
        self._is_started = False
        self._deadline = 0.0
        self._waiting_head = False
        self._is_reused = False
        self._must_close = False
        self._finished = False
        self.idle_since = 0.0
        self._is_upgrade = False
        self._switch_block: bytes | None = None
        self._tunnel: TunnelPeer | None = None
        # Callback path only: what to retry on a fresh connection if this pooled one died.
        self._retry: tuple[UpstreamForwarder, RequestHead, BodyStream] | None = None
        self._is_close_delimited = False  # the body ends when the upstream closes
        self._is_poisoned = False  # bytes of another answer followed the one we asked for
        # A request body being piped from the client (callback path); None once all sent.
        self._body: BodyStream | None = None
        self._is_body_chunked = False
        self._pending_head: bytes | None = None  # a request head held for its first body bytes

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.close()
            return
        if self._exchange is not None and not self._finished:
            if self._is_close_delimited and exc is None:
                self._finish()  # RFC 9112 §6.3: this body is delimited by the close
                return
            if not self._got_bytes:
                self._fail(
                    UpstreamFailure(
                        f"upstream {self.pool.url.url} closed the connection before answering"
                    ),
                    retryable=True,
                )
            else:
                self._fail(
                    UpstreamFailure(
                        f"upstream {self.pool.url.url} closed the connection "
                        "in the middle of the response"
                    )
                )

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self._exchange is None:
            # Bytes nobody asked for: a response to a request never sent. Never reuse.
            self._close()
            return
        self._got_bytes = True
        hub = self.pool.hub
        self._deadline = hub.tick_end + hub.stream_idle_timeout
        if self._waiting_head:
            head = self._head = data if not self._head else self._head + data
            # A read may carry the head and the first body bytes together: only a head
            # whose end is not within the limit is too large.
            if (
                len(head) > MAX_RESPONSE_HEAD
                and head.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD + 4) < 0
            ):
                self._fail(
                    UpstreamFailure(
                        f"upstream {self.pool.url.url} sent a response head larger than "
                        f"{MAX_RESPONSE_HEAD} bytes"
                    )
                )
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._begin_tunnel(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _MalformedAnswer):
                self._fail(UpstreamFailure(f"upstream {self.pool.url.url} sent {exc.__context__}"))
                return
            self._fail(
                UpstreamFailure(f"upstream {self.pool.url.url} sent a malformed response: {exc}")
            )
        if self._is_poisoned:
            # The buffer held the start of another answer: whatever comes next on this
            # connection can never be matched to a request. Never reuse it.
            self._close()

    def pause_writing(self) -> None:
        if self._body is not None:
            self._body.hold()

    def resume_writing(self) -> None:
        if self._body is not None:
            self._body.release()

    # -- httptools callbacks ------------------------------------------------------------

    # No on_header: the head's lines are taken from the raw bytes, which llhttp validated
    # (one slice instead of a Python callback per header).

    def on_message_begin(self) -> None:
        if self._finished:
            self._is_poisoned = True

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        status = self._parser.get_status_code()
        raw = self._head
        status_end = raw.find(b"\r\n")
        head_end = raw.find(b"\r\n\r\n", status_end)
        # The header lines, each ending in CRLF, after the LF that ends the status line.
        lines = raw[status_end + 1 : head_end + 2]
        self._head = raw[head_end + 4 :]  # an interim 1xx may be followed by the real head
        if status == 101 and self._is_upgrade and exchange is not None:
            self._switch_block = _response_block(lines)[0] + _SWITCH_HEADERS
            return  # the parser stops right after this head: _begin_tunnel takes over
        if status < 200 or exchange is None:
            return  # 1xx interim answers are not relayed (100 Continue is ours to send)
        self._waiting_head = False
        self._head = b""
        if lines.count(b"\r\n") > MAX_RESPONSE_HEADERS:
            raise _MalformedAnswer(f"more than {MAX_RESPONSE_HEADERS} response headers")
        block, length, must_close, is_chunked, has_request_id = _response_block(lines)
        if is_chunked and (status in (204, 304) or 100 <= status < 200):
            raise _MalformedAnswer(f"Transfer-Encoding on a {status} response")
        self._is_close_delimited = (
            length is None and not is_chunked and not self._is_head and status not in (204, 304)
        )
        if must_close:
            self._must_close = True
        if self._is_head and (length or length is None):
            # A HEAD answer announces a body that never comes: the parser cannot be told,
            # so this connection is not reused.
            self._must_close = True
        exchange.start_head(status, block, content_length=length, has_request_id=has_request_id)
        self._is_started = True
        exchange.producer = self
        if self._is_head:
            self._finish()

    def on_body(self, chunk: bytes) -> None:
        exchange = self._exchange
        if exchange is not None and not self._finished:
            exchange.write(chunk)

    def on_message_complete(self) -> None:
        if self._waiting_head:
            return  # end of an interim 1xx answer
        if not self._finished:
            self._finish()

    def _begin_tunnel(self, leftover: bytes) -> None:
        """The upstream answered 101: pipe raw bytes between it and the client from now on."""
        exchange, self._exchange = self._exchange, None
        block, self._switch_block = self._switch_block, None
        if exchange is None or block is None:
            self._exchange = exchange
            self._fail(
                UpstreamFailure(
                    f"upstream {self.pool.url.url} switched protocols without being asked"
                )
            )
            return
        self._finished = True
        self.pool.forget(self)  # a tunnel never returns to the pool
        exchange.producer = None
        self._tunnel = exchange.start_tunnel(block, self)
        if leftover:
            self._tunnel.write(leftover)
        self._resolve()

    # TunnelPeer, for the client side of a tunnel.
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self._tunnel = None
        if self.transport is not None:
            self.transport.close()

    # -- exchange lifecycle -------------------------------------------------------------

    def send(self, request: bytes, exchange: Exchange, head: RequestHead) -> asyncio.Future[None]:
        """Write the request head; the returned future resolves when the exchange is over."""
        self._on_done = done = self.pool.hub.loop.create_future()
        self._start(request, exchange, head)
        return done

    def send_and_forget(
        self,
        request: bytes,
        exchange: Exchange,
        head: RequestHead,
        retry: tuple[UpstreamForwarder, RequestHead, BodyStream],
    ) -> None:
        """The callback path: no future; a stale connection hands ``retry`` back to its
        forwarder instead."""
        self._on_done = None
        self._retry = retry
        self._start(request, exchange, head)

    def _start(self, request: bytes, exchange: Exchange, head: RequestHead) -> None:
        hub = self.pool.hub
        self._exchange = exchange
        self._is_head = head.method == "HEAD"
        self._is_upgrade = head.upgrade is not None
        self._got_bytes = False
        self._is_started = False
        self._finished = False
        self._waiting_head = True
        self._body = None
        self._is_body_chunked = False
        self._pending_head = None
        self._deadline = hub.tick_end + hub.response_header_timeout
        exchange.producer = self
        assert self.transport is not None
        if head.body_length != 0:
            # Sent with the first body bytes, in one write: a small body usually arrives in
            # the same read as the head (pipe_body makes sure the head never waits for it).
            self._pending_head = request
        else:
            # At the end of the loop's turn, with the other requests and answers of this turn
            # (server/writes.py). Nothing else is written here before the answer comes back:
            # a request with a body takes the path above, a tunnel begins after the answer.
            hub.writes.write(self.transport, request)
        exchange.handed_off = perf_counter()

    def pipe_body(self, body: BodyStream, *, chunked: bool) -> None:
        """Callback path: the client's body chunks are written here as they arrive."""
        self._body = body
        self._is_body_chunked = chunked
        body.pipe(self)
        if self._pending_head is not None:
            # No body byte yet: the head goes at the end of this turn of the loop (the
            # client's body may be on its way, or may wait for the upstream's answer).
            self.pool.hub.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head, self._pending_head = self._pending_head, None
        if head is not None and self.transport is not None:
            self.transport.write(head)

    # BodySink, for a piped request body.
    def write_body(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        head, self._pending_head = self._pending_head, None
        # writelines is one writev: the head, the chunk framing and the chunk are not copied
        # into one buffer first.
        if self._is_body_chunked:
            size = b"%x\r\n" % len(data)
            transport.writelines((head, size, data, b"\r\n") if head else (size, data, b"\r\n"))
        elif head is not None:
            transport.writelines((head, data))
        else:
            transport.write(data)

    def end_body(self) -> None:
        self._body = None
        if self._is_body_chunked and self.transport is not None and not self._finished:
            head, self._pending_head = self._pending_head, None
            self.transport.write(head + _LAST_CHUNK if head else _LAST_CHUNK)

    def abort_body(self) -> None:
        if self._body is not None:
            self._body = None
            self.cancel()  # a half-sent body: this connection is done for

    def _finish(self) -> None:
        exchange, self._exchange = self._exchange, None
        self._finished = True
        if exchange is not None:
            exchange.producer = None
            exchange.end()
        if (
            self._must_close
            or not self._parser.should_keep_alive()
            or self._is_head
            or self._body is not None  # answered before the whole body was sent
        ):
            self._body = None
            self._close()
        else:
            self.pool.release(self)
        self._resolve()

    def _fail(self, error: UpstreamFailure, *, retryable: bool = False) -> None:
        exchange, self._exchange = self._exchange, None
        self._finished = True
        self._close()
        if exchange is not None:
            exchange.producer = None
            if retryable and self._is_reused:
                retry, self._retry = self._retry, None
                if retry is not None:
                    retry[0].retry(retry[1], retry[2], exchange, error)
                    return
                if self._on_done is not None:
                    self._reject(_StaleConnection(error))
                    return
            self.pool.hub.count(error.code)
            if self._is_started and exchange.is_started:
                logger.warning("upstream response cut: %s", error.message)
            exchange.fail(error)
        self._resolve()

    def _resolve(self) -> None:
        self._retry = None
        done = self._on_done
        if done is not None:
            self._on_done = None
            if not done.done():
                done.set_result(None)

    def _reject(self, error: BaseException) -> None:
        done, self._on_done = self._on_done, None
        if done is not None and not done.done():
            done.set_exception(error)

    def check_deadline(self, now: float) -> None:
        """Swept by the hub: a response that does not come or stalls is a 504 or an abort."""
        if self._exchange is None or now < self._deadline:
            return
        if self._waiting_head:
            self._fail(
                UpstreamTimeout(
                    f"upstream {self.pool.url.url} did not answer within "
                    f"{self.pool.hub.settings.response_header_timeout:g} s"
                )
            )
        else:
            self._fail(UpstreamTimeout(f"upstream {self.pool.url.url} stalled mid-response"))

    # -- producer (called by the client side) ----------------------------------------------

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def cancel(self) -> None:
        """The client went away: this exchange can never complete, so the socket goes, at
        once (``close`` would wait to flush request bytes an upstream may never read)."""
        self._exchange = None
        self._finished = True
        self.pool.forget(self)
        transport, self.transport = self.transport, None
        if transport is not None:
            _reset(transport)
        self._resolve()

    def _close(self) -> None:
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


def _reset(transport: asyncio.Transport) -> None:
    """Close with a reset: a plain close would leave request bytes the upstream never read
    queued before the FIN, and the upstream's side open."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _MalformedAnswer(Exception):
    """Raised from a parser callback: the answer is well-formed HTTP but not acceptable."""


class _StaleConnection(Exception):
    """A reused connection died before answering; safe to retry an idempotent request."""

    def __init__(self, error: UpstreamFailure) -> None:
        super().__init__(error.message)
        self.error = error


ResponseBlock = tuple[bytes, int | None, bool, bool, bool]
"""What ``_response_block`` makes of a response head's header lines: the end-to-end lines
(each ending in CRLF), the Content-Length if any, whether the upstream said ``Connection:
close``, whether the body is chunked, and whether an ``X-Request-Id`` line was kept. A plain
tuple, not a ``NamedTuple``: compiled, it is a C struct, where a ``NamedTuple``'s
``__new__`` is interpreted."""


def _load_fast_filter() -> Callable[[bytes], ResponseBlock | None] | None:
    """The C filter (``_hopbyhop.c``), unless the source is asked for or it was not built."""
    if os.environ.get(PURE_PYTHON_VARIABLE):
        return None  # all of the request path interpreted, as ``dispatcher._compiled`` says
    try:
        from dispatcher.forwarding import _hopbyhop
    except ImportError:  # installed without a C compiler
        return None
    return _hopbyhop.response_block


_FAST_FILTER: Final = _load_fast_filter()


def _response_block(lines: bytes) -> ResponseBlock:
    """The end-to-end part of a response head's header lines, with what the proxy needs to
    know of the lines it removed, and whether it kept an ``X-Request-Id``.

    The C filter answers the common case (a few hop-by-hop lines, ``Connection:
    keep-alive``) in about 2,000 instructions; the regex filter below takes about 14,000 a
    head (callgrind) and answers every case, the same way."""
    fast = _FAST_FILTER
    if fast is not None:
        found = fast(lines)
        if found is not None:
            return found
    return _response_block_slowly(lines)


def _response_block_slowly(lines: bytes) -> ResponseBlock:
    """``_response_block`` with a regex: every case, and the reference for the C filter.

    ``lines`` starts with the LF that ends the status line, and each line ends in CRLF; the
    block returned has no leading LF. Hop-by-hop lines (RFC 9110 §7.6.1) and the
    Content-Length line (the client side frames the body itself) are removed. llhttp
    validated the lines: one ``split`` of a lower-cased copy by ``_HOP_LINE`` finds them
    (no match object, no method call per line), and the original bytes are cut at the
    same offsets. Removing the LF before a hop-by-hop line and its own CR leaves the CRLF
    structure intact."""
    parts = _HOP_LINE.split(lines.lower())
    if len(parts) == 1:
        return lines[1:], None, False, False, False
    kept = []
    at = 0
    length: int | None = None
    connection: bytes | None = None
    is_chunked = False
    has_request_id = False
    for index in range(0, len(parts) - 1, 4):
        # parts: kept text, then (whole line, name, value) per hop-by-hop line.
        end = at + len(parts[index])
        kept.append(lines[at:end])
        at = end + len(parts[index + 1])
        name = parts[index + 2]
        if name == b"x-request-id":
            has_request_id = True  # found by the same pass, and kept
            kept.append(lines[end:at])
        elif name == b"content-length":
            length = int(parts[index + 3])  # llhttp refused conflicting values already
        elif name == b"connection":
            value = parts[index + 3].strip(b" \t")
            connection = value if connection is None else connection + b"," + value
        elif name == b"transfer-encoding":
            is_chunked = True  # llhttp accepts no coding but a final "chunked"
    kept.append(lines[at:])
    block = b"".join(kept)[1:]  # it starts with an LF: the leading one, or one left behind
    if connection is None or connection == b"keep-alive":
        return block, length, False, is_chunked, has_request_id
    tokens = _tokens(connection)
    named = tokens - _PROXY_OWNED
    if named:
        block = b"".join(
            line + b"\r\n"
            for line in block.split(b"\r\n")
            if line and line.partition(b":")[0].lower() not in named
        )
        if b"x-request-id" in named:
            has_request_id = False  # named hop-by-hop, so removed: the client side adds ours
    return block, length, b"close" in tokens, is_chunked, has_request_id


def _tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


class UpstreamPool:
    """Keep-alive connections to one upstream URL, with its passive health."""

    __slots__ = ("url", "hub", "idle", "connections", "down_until", "_waiters")

    def __init__(self, url: UpstreamURL, hub: UpstreamHub) -> None:
        self.url = url
        self.hub = hub
        self.idle: list[UpstreamConnection] = []
        self.connections: set[UpstreamConnection] = set()
        self.down_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.url.url} idle={len(self.idle)} open={len(self.connections)}>"

    @property
    def is_down(self) -> bool:
        return self.down_until > self.hub.now

    def take_idle(self) -> UpstreamConnection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None:
                connection._is_reused = True
                return connection
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, or a new one within the connect timeout."""
        connection = self.take_idle()
        if connection is not None:
            return connection
        while len(self.connections) >= self.hub.settings.max_connections:
            waiter = self.hub.loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.hub.settings.connect_timeout)
            except TimeoutError as exc:
                raise UpstreamOverloaded(
                    f"upstream {self.url.url} has {self.hub.settings.max_connections} "
                    "connections busy"
                ) from exc
            connection = self.take_idle()
            if connection is not None:
                return connection
        return await self._connect()

    async def _connect(self) -> UpstreamConnection:
        hub = self.hub
        url = self.url
        try:
            if url.unix_path is not None:
                opening = hub.loop.create_unix_connection(self._new_connection, url.unix_path)
            else:
                opening = hub.loop.create_connection(
                    self._new_connection,
                    url.host,
                    url.port,
                    ssl=hub.tls if url.is_tls else None,
                )
            _, opened = await asyncio.wait_for(opening, hub.settings.connect_timeout)
        except TimeoutError as exc:
            self.mark_down()
            raise UpstreamTimeout(
                f"upstream {url.url} did not accept a connection within "
                f"{hub.settings.connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            self.mark_down()
            raise _ConnectRefused(
                UpstreamFailure(f"upstream {url.url} is unreachable: {exc.strerror or exc}")
            ) from exc
        protocol = cast(UpstreamConnection, opened)
        self.connections.add(protocol)
        return protocol

    def _new_connection(self) -> asyncio.Protocol:
        # The cast is for the type checker: the loop needs the methods, not the base class.
        return cast(asyncio.Protocol, UpstreamConnection(self))

    def mark_down(self) -> None:
        self.down_until = self.hub.now + self.hub.settings.fail_timeout

    def release(self, connection: UpstreamConnection) -> None:
        if len(self.idle) >= self.hub.pool_max_idle or self.hub.is_closing:
            connection._close()
            return
        connection.idle_since = self.hub.now
        self.idle.append(connection)
        self._wake_one()

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._wake_one()
        if connection in self.idle:
            self.idle.remove(connection)

    def expire_idle(self, now: float) -> None:
        timeout = self.hub.settings.pool_idle_timeout
        while self.idle and now - self.idle[0].idle_since > timeout:
            self.idle[0]._close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _ConnectRefused(Exception):
    """The connection could not be made: nothing was sent, any method may be retried."""

    def __init__(self, error: UpstreamFailure) -> None:
        super().__init__(error.message)
        self.error = error


class UpstreamForwarder:
    """Forwards one worker's requests to its upstream URL(s), round-robin."""

    __slots__ = ("target", "_hub", "_pools", "_next")

    def __init__(self, target: UpstreamTarget, hub: UpstreamHub) -> None:
        self.target = target
        self._hub = hub
        self._pools = tuple(hub.pool_for(url) for url in target.urls)
        self._next = 0

    def __repr__(self) -> str:
        return f"<UpstreamForwarder {self.target.describe()}>"

    def forward(
        self, worker: Worker, head: RequestHead, body: BodyStream, response: ResponseWriter
    ) -> Coroutine[Any, Any, None] | None:
        pool = self._pick()
        request = self._request_head(head, pool.url)
        connection = pool.take_idle()
        if connection is not None:
            # The callback path: no task. A body is piped straight from the client's reads.
            connection.send_and_forget(request, cast(Exchange, response), head, (self, head, body))
            if head.body_length != 0:
                connection.pipe_body(body, chunked=head.body_length < 0)
            return None
        return self._forward(pool, request, head, body, response)

    def retry(
        self, head: RequestHead, body: BodyStream, response: ResponseWriter, error: UpstreamFailure
    ) -> None:
        """A pooled connection died before answering a callback-path request: retry it once
        on a fresh connection (only body-less requests take the callback path) when the
        method is idempotent; anything else gets the 502, never a silent duplicate."""
        if head.method in _IDEMPOTENT and head.body_length == 0:
            self._hub.spawn(self._forward(self._pick(), None, head, body, response, retried=True))
        else:
            self._hub.count(error.code)
            response.fail(error)

    async def _forward(
        self,
        pool: UpstreamPool,
        request: bytes | None,
        head: RequestHead,
        body: BodyStream,
        response: ResponseWriter,
        *,
        retried: bool = False,
    ) -> None:
        try:
            await self._exchange(pool, request, head, body, response, retried)
        except UpstreamFailure as error:
            self._hub.count(error.code)
            if response.is_started or not response.is_disconnected:
                response.fail(error)
        except (ClientDisconnected, RequestError):
            # The client side failed (gone, body over the limit or too slow) and has been
            # answered there; the upstream exchange was cancelled with it.
            pass

    async def _exchange(
        self,
        pool: UpstreamPool,
        request: bytes | None,
        head: RequestHead,
        body: BodyStream,
        response: ResponseWriter,
        retried: bool,
    ) -> None:
        is_idempotent = head.method in _IDEMPOTENT and head.body_length == 0
        while True:
            try:
                connection = await pool.acquire()
            except _ConnectRefused as refused:
                if retried or len(self._pools) < 2:
                    raise refused.error from None
                retried = True
                pool = self._pick(avoid=pool)
                continue
            payload = request if request is not None else self._request_head(head, pool.url)
            done = connection.send(payload, cast(Exchange, response), head)
            if head.body_length != 0:
                connection.pipe_body(body, chunked=head.body_length < 0)
            try:
                await done
                return
            except _StaleConnection as stale:
                if retried or not is_idempotent:
                    raise stale.error from None
                retried = True
                request = None
                if response.is_disconnected:
                    return

    def _pick(self, avoid: UpstreamPool | None = None) -> UpstreamPool:
        pools = self._pools
        count = len(pools)
        for _ in range(count):
            pool = pools[self._next % count]
            self._next += 1
            if pool is not avoid and not pool.is_down:
                return pool
        for pool in pools:  # all marked down: try one anyway rather than refuse outright
            if pool is not avoid:
                return pool
        return pools[0]

    def _request_head(self, head: RequestHead, url: UpstreamURL) -> bytes:
        """The request head as the upstream sees it, rewritten in one pass."""
        client_ip = head.client[0] if head.client is not None else ""
        keeps_forwarded = self._hub.keeps_forwarded(client_ip)
        named = _tokens(head.connection) - _PROXY_OWNED if head.connection else _NOTHING
        lines = [head.method.encode("ascii"), b" ", _forwarded_target(head), b" HTTP/1.1\r\n"]
        forwarded_for: bytes | None = None
        has_proto = has_forwarded_host = False
        host: bytes | None = None
        for name, value in head.headers:
            action = _REQUEST_ACTIONS.get(name)
            if action is None:
                if not named or name not in named:
                    lines += (name, b": ", value, b"\r\n")
            elif action == _HOST:
                host = value
            elif action == _TE:
                if value.strip().lower() == b"trailers":
                    lines.append(b"te: trailers\r\n")
            elif keeps_forwarded:
                if action == _XFF:
                    forwarded_for = (
                        value if forwarded_for is None else forwarded_for + b", " + value
                    )
                elif action == _FORWARDED:
                    has_proto = has_proto or name == b"x-forwarded-proto"
                    has_forwarded_host = has_forwarded_host or name == b"x-forwarded-host"
                    lines += (name, b": ", value, b"\r\n")
        if head.upgrade is not None:
            lines += (b"connection: upgrade\r\nupgrade: ", head.upgrade, b"\r\n")
        if self.target.preserve_host and host is not None:
            lines += (b"host: ", host, b"\r\n")
        else:
            lines += (b"host: ", url.authority.encode("ascii"), b"\r\n")
        if self._hub.adds_forwarded:
            client = client_ip.encode("ascii")
            xff = client if forwarded_for is None else forwarded_for + b", " + client
            lines += (b"x-forwarded-for: ", xff, b"\r\n")
            if not has_proto:
                lines += (b"x-forwarded-proto: ", head.scheme.encode("ascii"), b"\r\n")
            if host is not None and not has_forwarded_host:
                lines += (b"x-forwarded-host: ", host, b"\r\n")
        elif forwarded_for is not None:
            lines += (b"x-forwarded-for: ", forwarded_for, b"\r\n")
        if head.body_length > 0:
            lines.append(b"content-length: %d\r\n\r\n" % head.body_length)
        elif head.body_length < 0:
            lines.append(b"transfer-encoding: chunked\r\n\r\n")
        else:
            lines.append(b"\r\n")
        return b"".join(lines)


def _forwarded_target(head: RequestHead) -> bytes:
    """The raw target when it was already canonical, else the canonical path plus query."""
    if head.raw_path_is_canonical:
        return head.target
    path = head.path.encode("ascii")
    return path + b"?" + head.query if head.target.find(b"?") >= 0 else path


class UpstreamHub:
    """Owns every upstream pool, the TLS context and the timeout sweep; an async context."""

    __slots__ = (
        "settings",
        "stream_idle_timeout",
        "response_header_timeout",
        "pool_max_idle",
        "adds_forwarded",
        "trusts_proxies",
        "loop",
        "tls",
        "now",
        "tick_end",
        "is_closing",
        "outcomes",
        "_pools",
        "_forwarders",
        "_sweeper",
        "_tasks",
        "_trust",
        "writes",
    )

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        # What every request reads, as the hub's own (C) attributes: ProxySettings is an
        # interpreted dataclass, where each read is a generic attribute lookup.
        self.stream_idle_timeout = settings.stream_idle_timeout
        self.response_header_timeout = settings.response_header_timeout
        self.pool_max_idle = settings.pool_max_idle
        self.adds_forwarded = settings.forwarded_headers
        self.trusts_proxies = bool(settings.trusted_proxies)
        self.loop = asyncio.get_running_loop()
        self.tls = ssl.create_default_context()
        self.now = self.tick_end = 0.0
        self._advance_clock()
        self.is_closing = False
        self.outcomes: Counter[str] = Counter()
        self._pools: dict[UpstreamURL, UpstreamPool] = {}
        self._forwarders: dict[UpstreamTarget, UpstreamForwarder] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Client address -> whether it is a trusted proxy: parsing the address and testing
        # the networks costs more than building the rest of the head. Bounded.
        self._trust: dict[str, bool] = {}
        self.writes = WriteBatch(self.loop)  # request heads, sent at the end of the turn

    def keeps_forwarded(self, client_ip: str) -> bool:
        """Whether a client's own ``X-Forwarded-*`` are kept (and appended to): always when
        the dispatcher adds none, else only from a trusted proxy."""
        if not self.adds_forwarded:
            return True
        if not self.trusts_proxies:
            return False
        trust = self._trust
        trusted = trust.get(client_ip)
        if trusted is None:
            if len(trust) >= _TRUST_CACHE_SIZE:
                trust.clear()
            trusted = trust[client_ip] = self.settings.is_trusted(client_ip)
        return trusted

    def _advance_clock(self) -> float:
        """Set the coarse clock, and the latest moment before the next sweep: deadlines are
        armed from the latter, so none fires early (the clock is up to a sweep old)."""
        self.now = now = self.loop.time()
        self.tick_end = now + SWEEP_SECONDS
        return now

    async def __aenter__(self) -> UpstreamHub:
        self._advance_clock()  # the first sweep is one from now
        self._sweeper = self.loop.create_task(self._sweep())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.is_closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._pools.values():
            for connection in list(pool.connections):
                connection._close()

    def forwarder_for(self, target: UpstreamTarget) -> UpstreamForwarder:
        """One forwarder per target, so a redeploy of the same URLs keeps its pools warm."""
        forwarder = self._forwarders.get(target)
        if forwarder is None:
            forwarder = self._forwarders[target] = UpstreamForwarder(target, self)
        return forwarder

    def pool_for(self, url: UpstreamURL) -> UpstreamPool:
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = UpstreamPool(url, self)
        return pool

    @property
    def pools(self) -> tuple[UpstreamPool, ...]:
        return tuple(self._pools.values())

    def count(self, outcome: str) -> None:
        """Count an upstream failure apart from the dispatcher's own errors."""
        self.outcomes[outcome] += 1

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = self._advance_clock()
            for pool in self._pools.values():
                for connection in list(pool.connections):
                    connection.check_deadline(now)
            for pool in self._pools.values():
                pool.expire_idle(now)
