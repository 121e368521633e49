"""``HttpProtocol``: one client connection, parsed by httptools and framed by us.

It enforces the limits and deadlines of ``Limits`` (request line, header line, header block
and count, header deadline, body idle timeout, keep-alive idle, body size), answers pipelined
requests in order, streams request bodies with flow control in both directions, handles
``Expect: 100-continue``, honours ``Connection: close``, and closes a connection whose client
may still be sending with a lingering close (so a 413 is not lost to a reset). It also holds
workers to the framing they declare: a body shorter or longer than its content-length cuts
the connection.

What to do with a request is the ``RequestHandler``'s business (the ``Dispatcher``): the
protocol hands it a ``RequestHead``, a ``RequestBody`` and the ``Exchange`` that writes the
response.

Deadlines are checked by the listener's once-per-tick sweep against a coarse clock
(``ServerState.now``), so arming one costs an attribute store, not a timer per request. They
are armed from the end of the current tick (``ServerState.tick_end``), not from its start: the
coarse clock is up to a tick old, and a deadline armed from it would fire up to a tick early.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter
from typing import Any, Final, Protocol, cast

import httptools

from dispatcher import outcomes
from dispatcher.errors import (
    BadRequest,
    ExpectationFailed,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NotImplementedCoding,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    UriTooLong,
    VersionNotSupported,
)
from dispatcher.http import (
    BodySink,
    ClientDisconnected,
    Producer,
    RequestHead,
    ResponseBodyError,
    ResponseHeaderError,
    TunnelPeer,
)
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.server.writes import WriteBatch
from dispatcher.settings import Limits
from dispatcher.types import Header

logger = logging.getLogger("dispatcher.server")

TICK_SECONDS: Final = 0.5
"""How often a listener advances its coarse clock and checks its connections' deadlines."""

_STATUS_LINES: Final = {
    int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
# RFC 9110 §5.6.2 tchar: translate(None, _TOKEN_CHARS) leaves only the bytes that are not.
_TOKEN_CHARS: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_HOST_CACHE_SIZE: Final = 1024
_HEX_PAIRS: Final = tuple(b"%02x" % byte for byte in range(256))
_GONE_EVENTS: Final = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)
_LATER_VERSION = re.compile(rb" HTTP/[2-9]\.[0-9]\r?\n")
_TE_LINE = re.compile(rb"\ntransfer-encoding:[ \t]*([^\r\n]*?)[ \t]*(?=\r?\n)", re.IGNORECASE)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}
_HEADER_LINE_CACHE_SIZE: Final = 1024

# What on_header remembers besides storing the line (one dict lookup per header).
_HOST, _EXPECT, _CONTENT_LENGTH, _CONNECTION, _TRANSFER_ENCODING, _UPGRADE = 1, 2, 3, 4, 5, 6
_REQUEST_ID_HEADER: Final = 7
_SPECIAL_HEADERS: Final = {
    b"host": _HOST,
    b"expect": _EXPECT,
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"upgrade": _UPGRADE,
    b"x-request-id": _REQUEST_ID_HEADER,
}
REQUEST_ID: Final = b"x-request-id"
# A client's id is kept when it is 1 to 200 visible ASCII characters: it goes into every log
# line and back into a header, so nothing that could split either is taken.
_VALID_REQUEST_ID: Final = re.compile(rb"[!-~]{1,200}")
_TOO_MANY_CONNECTIONS: Final = Overloaded("too many connections").body()
_OVER_CONNECTION_LIMIT: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%b"
    % (len(_TOO_MANY_CONNECTIONS), _TOO_MANY_CONNECTIONS)
)

# Deadline kinds: what happens when ``_deadline`` passes.
_NO_DEADLINE, _IDLE, _HEAD, _BODY, _DRAIN, _LINGER = 0, 1, 2, 3, 4, 5

FIRST_REQUEST_GRACE: Final = 1.0
"""At a graceful stop, how long a connection that has sent nothing yet may still send."""
LINGER_SECONDS: Final = 2.0
"""How long a refused client may go on sending before the socket is closed under it."""


class RequestHandler(Protocol):
    """What the connection hands a parsed request to (the ``Dispatcher``)."""

    def handle(
        self, head: RequestHead, body: RequestBody, exchange: Exchange
    ) -> Coroutine[Any, Any, None] | None:
        """Answer at once and return ``None``, or return the coroutine that will answer."""
        ...

    def handle_error(self, error: RequestError, exchange: Exchange) -> None:
        """Answer a request that failed before it could be handled (bad head, timeout)."""
        ...

    def refuse(self, head: RequestHead, exchange: Exchange) -> None:
        """Answer at once a request over the in-flight limit (a 503, or a health check)."""
        ...


class ExchangeObserver(Protocol):
    """Told of every exchange once it is over (metrics, access log)."""

    def exchange_done(self, exchange: Exchange) -> None: ...


class ServerState:
    """Shared by the connections of one listener: coarse clock, Date line, live connections."""

    __slots__ = (
        "loop",
        "limits",
        "handler",
        "now",
        "tick_end",
        "date_line",
        "connections",
        "is_closing",
        "hosts",
        "header_lines",
        "observer",
        "in_flight",
        "_id_prefix",
        "_id_count",
        "_id_block",
        "writes",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limits: Limits, handler: RequestHandler
    ) -> None:
        self.loop = loop
        self.limits = limits
        self.handler = handler
        self.now = self.tick_end = loop.time()
        self.date_line = b""
        self.connections: set[HttpProtocol] = set()
        self.is_closing = False
        # Raw Host value -> canonical host: most traffic repeats a few hosts, and validating
        # one costs more than the rest of routing. Bounded; only valid hosts are kept.
        self.hosts: dict[bytes, str] = {}
        # (name, value) -> serialized line for response headers already validated: workers
        # repeat the same few headers. Bounded; framing headers are never kept.
        self.header_lines: dict[tuple[bytes, bytes], bytes] = {}
        self.observer: ExchangeObserver | None = None
        self.in_flight = 0  # exchanges handed to the handler and not yet over
        # Request ids: random per process, then a counter: unique without a syscall each.
        # The counter's hex digits but the last two change once in 256 ids: kept formatted.
        self._id_prefix = os.urandom(5).hex().encode("ascii")
        self._id_count = 0
        self._id_block = self._id_prefix + b"00000000"
        self.writes = WriteBatch(loop)  # every connection's writes, made at the turn's end
        self.tick()

    def new_request_id(self) -> bytes:
        """The prefix, then the count in ten or more hex digits: ``b"%s%010x" % (prefix,
        count)``, without formatting a number per request (a third of a microsecond)."""
        count = self._id_count = self._id_count + 1
        low = count & 0xFF
        if low == 0:
            self._id_block = b"%s%08x" % (self._id_prefix, count >> 8)
        return self._id_block + _HEX_PAIRS[low]

    def tick(self) -> None:
        """Advance the coarse clock and the Date header, then expire overdue connections."""
        self.now = self.loop.time()
        # No moment before the next tick is later than this: deadlines armed from it are
        # never early, and fire at most one tick late.
        self.tick_end = self.now + TICK_SECONDS
        self.date_line = b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"
        for connection in list(self.connections):
            try:
                connection.check_deadline(self.now)
            except Exception:
                # One broken connection must not stop the sweep: the deadlines of all the
                # others (slowloris protection) depend on it.
                logger.exception("deadline check failed; aborting the connection")
                connection.abort()


class RequestBody:
    """The request body as a stream of chunks, with flow control towards the client."""

    __slots__ = (
        "_protocol",
        "_exchange",
        "_chunks",
        "_buffered",
        "_received",
        "_limit",
        "_is_complete",
        "_error",
        "_waiter",
        "_is_discarding",
        "_is_answered",
        "_sink",
    )

    def __init__(self, protocol: HttpProtocol, limit: int) -> None:
        self._protocol = protocol
        self._exchange: Exchange | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received = 0
        self._limit = limit
        self._is_complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._is_discarding = False
        self._is_answered = False
        self._sink: BodySink | None = None

    @property
    def is_complete(self) -> bool:
        return self._is_complete

    @property
    def is_exhausted(self) -> bool:
        """True once every chunk has been received and read."""
        return self._is_complete and not self._chunks

    async def wait_disconnect(self) -> None:
        """Wait until the client goes away or the response has been sent (ASGI semantics)."""
        protocol = self._protocol
        while not (self._error is not None or protocol.is_client_gone or self._is_answered):
            self._waiter = protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def wake(self) -> None:
        """Wake a reader waiting on this body (the client left)."""
        self._wake()

    def answered(self) -> None:
        """The response has been sent: forget the exchange (no reference cycle per request
        for the garbage collector to find) and wake a reader waiting for the end."""
        self._is_answered = True
        self._exchange = None
        self._wake()

    async def read(self) -> bytes:
        """The next chunk, ``b""`` at the end; raises ``ClientDisconnected`` or the limit error."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= self._protocol.low_water:
                    self._protocol.release_body_pressure()
                return chunk
            if self._error is not None:
                raise self._error
            if self._is_complete:
                return b""
            exchange = self._exchange
            if exchange is not None:
                exchange.send_continue()
            self._waiter = self._protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def pipe(self, sink: BodySink) -> None:
        self._sink = sink
        chunks = self._chunks
        while chunks:
            sink.write_body(chunks.popleft())
        self._buffered = 0
        self._protocol.release_body_pressure()
        if self._error is not None:
            sink.abort_body()
        elif self._is_complete:
            sink.end_body()
        else:
            exchange = self._exchange
            if exchange is not None:
                exchange.send_continue()  # the body now has somewhere to go

    def hold(self) -> None:
        self._protocol.apply_body_pressure()

    def release(self) -> None:
        self._protocol.release_body_pressure()

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._limit and self._received > self._limit:
            raise PayloadTooLarge(f"request body is larger than {self._limit} bytes")
        if self._is_discarding:
            return
        sink = self._sink
        if sink is not None:
            sink.write_body(chunk)
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._protocol.high_water:
            self._protocol.apply_body_pressure()
        self._wake()

    def finish(self) -> None:
        self._is_complete = True
        sink = self._sink  # None once discarded
        if sink is not None:
            sink.end_body()
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self._is_complete:
            self._error = error
            sink = self._sink
            if sink is not None:
                sink.abort_body()
        self._wake()

    def discard(self) -> None:
        """Drop what remains: the response is done and the body only has to be drained."""
        self._is_discarding = True
        self._sink = None
        self._chunks.clear()
        self._buffered = 0
        self._protocol.release_body_pressure()  # else the drain never gets its bytes

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Exchange:
    """One request/response exchange; implements ``ResponseWriter`` for the worker."""

    __slots__ = (
        "_protocol",
        "head",
        "body",
        "error",
        "_keep_alive",
        "_is_head_request",
        "_expects_continue",
        "_continue_sent",
        "_is_started",
        "_is_ended",
        "_is_chunked",
        "_has_no_body",
        "_must_close",
        "_pending",
        "_remaining",
        "status",
        "task",
        "producer",
        "outcome",
        "started",
        "handed_off",
        "failure",
        "_is_running",
    )

    def __init__(
        self,
        protocol: HttpProtocol,
        head: RequestHead | None,
        body: RequestBody | None,
        *,
        keep_alive: bool = True,
        expects_continue: bool = False,
        error: RequestError | None = None,
        is_head_request: bool = False,
    ) -> None:
        self._protocol = protocol
        self.head = head
        self.body = body
        self.error = error
        self._keep_alive = keep_alive and error is None
        self._is_head_request = is_head_request or (head is not None and head.method == "HEAD")
        self._expects_continue = expects_continue
        self._continue_sent = False
        self._is_started = False
        self._is_ended = False
        self._is_chunked = False
        self._has_no_body = False
        self._must_close = False
        self._pending = b""
        self._remaining = -1  # body bytes still owed when the length was declared
        self.status = 0
        self.task: asyncio.Task[None] | None = None
        self.producer: Producer | None = None
        self.outcome = outcomes.ROUTED if error is None else error.outcome
        self.started = perf_counter()
        self.handed_off = 0.0
        self.failure: str | None = None  # why the dispatcher answered an error (for the log)
        self._is_running = False  # counted in ServerState.in_flight until _report
        if body is not None:
            body._exchange = self

    @property
    def is_started(self) -> bool:
        return self._is_started

    @property
    def is_disconnected(self) -> bool:
        return self._protocol.transport is None

    @property
    def is_ended(self) -> bool:
        return self._is_ended

    def send_continue(self) -> None:
        """Send ``100 Continue`` the first time the worker waits for a body it was promised."""
        if self._expects_continue and not self._continue_sent and not self._is_started:
            self._continue_sent = True
            self._protocol.write(_CONTINUE)

    def start(
        self, status: int, headers: list[Header], *, content_length: int | None = None
    ) -> None:
        if self._is_ended:
            return  # the exchange was already answered for the worker (timeout, limit)
        if self._is_started:
            raise RuntimeError("response already started")
        parts = [_STATUS_LINES.get(status) or _status_line(status)]
        length = content_length
        lines = self._protocol.state.header_lines
        has_request_id = False
        for name, value in headers:
            line = lines.get((name, value))
            if line is not None:
                parts.append(line)
                continue
            if not name or name.translate(None, _TOKEN_CHARS):
                raise ResponseHeaderError(f"invalid header name {name!r}")
            if value.find(b"\r") >= 0 or value.find(b"\n") >= 0 or value.find(b"\x00") >= 0:
                raise ResponseHeaderError(f"header {name!r} has CR, LF or NUL in its value")
            lname = name.lower()
            if lname in _FRAMING:
                if lname == b"content-length":
                    if length is None:
                        length = _declared_length(value)
                elif lname == b"connection" and value.lower().find(b"close") >= 0:
                    self._must_close = True
                continue
            line = name + b": " + value + b"\r\n"
            if lname == REQUEST_ID:
                has_request_id = True  # the worker's own; one per request: never cached
                parts.append(line)
                continue
            if len(lines) >= _HEADER_LINE_CACHE_SIZE:
                lines.clear()
            lines[(name, value)] = line
            parts.append(line)
        self._frame(status, length, parts, has_request_id=has_request_id)
        self._is_started = True
        self.status = status
        self._pending = b"".join(parts)

    def start_head(
        self,
        status: int,
        header_block: bytes,
        *,
        content_length: int | None,
        has_request_id: bool,
    ) -> None:
        """Commit a proxied head whose lines the upstream parser already validated (the
        forwarder found any ``X-Request-Id`` line while it filtered them)."""
        if self._is_ended:
            return
        if self._is_started:
            raise RuntimeError("response already started")
        parts = [_STATUS_LINES.get(status) or _status_line(status), header_block]
        self._frame(status, content_length, parts, date=False, has_request_id=has_request_id)
        self._is_started = True
        self.status = status
        self._pending = b"".join(parts)

    def start_tunnel(self, header_block: bytes, peer: TunnelPeer) -> TunnelPeer:
        """``101 Switching Protocols``, then raw bytes both ways (``HttpProtocol.tunnel``)."""
        self._is_started = self._is_ended = True
        self.status = 101
        self._protocol.write(_STATUS_LINES[101] + header_block + b"\r\n")
        if self.body is not None:
            self.body.answered()
        self._report()
        return self._protocol.tunnel(self, peer)

    def _frame(
        self,
        status: int,
        length: int | None,
        parts: list[bytes],
        *,
        date: bool = True,
        has_request_id: bool = False,
    ) -> None:
        """Decide how the body is delimited and add the framing headers (RFC 9112 §6)."""
        self._has_no_body = self._is_head_request or status < 200 or status in (204, 304)
        if length is not None and (status >= 200 and status != 204):
            # 1xx and 204 never carry a Content-Length (RFC 9110 §8.6); HEAD and 304 may.
            parts.append(b"content-length: %d\r\n" % length)
            if not self._has_no_body:
                self._remaining = length
        elif not self._has_no_body:
            if self.head is not None and self.head.http_version == "1.1":
                self._is_chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self._must_close = True
        if self.request_is_unread and self.body is not None and not self.body.is_complete:
            self._must_close = True  # the unread body is never wanted: on_exchange_end closes
        if self._must_close or not self._keep_alive or self._protocol.state.is_closing:
            self._must_close = True
            parts.append(b"connection: close\r\n")
        head = self.head
        if head is not None and not has_request_id:
            parts += (b"x-request-id: ", head.request_id, b"\r\n")
        if date:
            parts.append(self._protocol.state.date_line)
        parts.append(b"\r\n")

    def write(self, data: bytes) -> None:
        if self._has_no_body or self._is_ended or not data:
            return
        if self._remaining >= 0:
            if len(data) > self._remaining:
                self.abort()
                raise ResponseBodyError(
                    f"response body is longer than its content-length "
                    f"({len(data) - self._remaining} bytes too many)"
                )
            self._remaining -= len(data)
        elif self._is_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self._pending:
            data = self._pending + data
            self._pending = b""
        self._protocol.write(data)

    async def drain(self) -> None:
        await self._protocol.drain()

    def end(self) -> None:
        if self._is_ended:
            return
        if self._remaining > 0:
            # A short body must not end cleanly: the client would wait for the missing bytes
            # or, on a reused connection, read the next response as this one's body.
            self.abort()
            raise ResponseBodyError(
                f"response body is shorter than its content-length ({self._remaining} bytes "
                "missing)"
            )
        tail = _LAST_CHUNK if self._is_chunked else b""
        if self._pending or tail:
            self._protocol.write(self._pending + tail)
            self._pending = b""
        self._is_ended = True
        if self.body is not None:
            self.body.answered()
        self._report()
        self._protocol.on_exchange_end(self)

    def abort(self) -> None:
        """Cut the connection under an unfinished response; a finished one is left alone, as
        the connection may already carry the next exchange or a buffered error answer."""
        if self._is_ended:
            return
        self._is_ended = True
        self._must_close = True
        self._protocol.abort()
        self._report()

    def lost(self) -> None:
        """The client left before the response was over (nginx's 499)."""
        if self._is_running and not self._is_ended:
            if self.outcome == outcomes.ROUTED:
                self.outcome = outcomes.CLIENT_CLOSED
            if not self._is_started:
                self.status = outcomes.CLIENT_CLOSED_STATUS
            self._report()

    def run(self) -> None:
        """The exchange is handed to the handler: it counts as in flight until reported."""
        self._is_running = True
        self._protocol.state.in_flight += 1

    def _report(self) -> None:
        if self._is_running:
            self._is_running = False
            state = self._protocol.state
            state.in_flight -= 1
            observer = state.observer
            if observer is not None:
                observer.exchange_done(self)

    def retract(self) -> bool:
        if not self._is_started or self._is_ended or not self._pending:
            return not self._is_started
        self._is_started = self._is_chunked = self._has_no_body = self._must_close = False
        self._pending = b""
        self._remaining = -1
        self.status = 0
        return True

    def send_error(self, status: int, body: bytes, *, headers: list[Header] | None = None) -> None:
        if self._is_started:
            self.abort()
            return
        extra = _JSON_HEADERS if not headers else _JSON_HEADERS + headers
        self.start(status, extra, content_length=len(body))
        self.write(body)
        self.end()

    def fail(self, error: RequestError) -> None:
        self.outcome = error.outcome
        self.failure = error.message
        if not self.retract():
            self.abort()
            return
        # The body keeps the seed's shape; the request id travels in the X-Request-Id header.
        self.send_error(error.status, error.body(), headers=error.headers)

    @property
    def must_close(self) -> bool:
        return self._must_close or not self._keep_alive

    def close_after(self) -> None:
        """Close the connection once this response has been sent."""
        self._keep_alive = False

    @property
    def request_is_unread(self) -> bool:
        """True when the client was promised nothing and still holds back its body."""
        return self._expects_continue and not self._continue_sent

    def on_task_done(self, task: asyncio.Task[None]) -> None:
        """A handler task ended: a response it left unfinished must not look complete."""
        if not task.cancelled() and task.exception() is not None:
            self.outcome = outcomes.INTERNAL_ERROR
            logger.error(
                "handler failed",
                exc_info=task.exception(),
                extra={"request_id": self.head.request_id.decode() if self.head else None},
            )
        if not self._is_ended:
            if self._is_started or self.is_disconnected:
                if self.is_disconnected:
                    self.lost()
                self.abort()
            else:
                self.fail(InternalError("worker returned without a response"))


def _declared_length(value: bytes) -> int:
    if not value.isdigit():
        raise ResponseHeaderError(f"invalid content-length {value!r}")
    return int(value)


def _status_line(status: int) -> bytes:
    if not 100 <= status <= 999:
        raise ResponseHeaderError(f"invalid status code {status}")
    return b"HTTP/1.1 %d \r\n" % status


class HttpProtocol:
    """One client connection: parse with httptools, frame, route through the handler, write.

    An ``asyncio.Protocol`` by its methods, not by inheritance: compiled by mypyc, a class
    with no interpreted base keeps its attributes in a C struct (the event loop only calls
    the methods).
    """

    __slots__ = (
        "state",
        "loop",
        "transport",
        "_parser",
        "_limits",
        "high_water",
        "low_water",
        "_client",
        "_server",
        "_url",
        "_headers",
        "_header_bytes",
        "_head_bytes",
        "_host",
        "_host_count",
        "_expect",
        "_content_length",
        "_connection",
        "_parsing",
        "_active",
        "_queue",
        "_deadline",
        "_deadline_kind",
        "_is_reading_paused",
        "_body_pressure",
        "_is_write_paused",
        "_drain_waiters",
        "_is_parser_dead",
        "_is_advancing",
        "_lingering",
        "_is_chunked",
        "_transfer_encoding",
        "_in_trailers",
        "_upgrade",
        "_tunnel",
        "_upgrade_buffer",
        "_request_id",
        "_write_paused_at",
        "_body_since",
        "_body_bytes",
        "_has_begun",
        "is_client_gone",
        "_writes",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        limits = state.limits
        self._limits = limits
        self.high_water = limits.write_high_water
        self.low_water = limits.write_high_water // 4
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[Header] = []
        self._header_bytes = 0
        self._head_bytes = 0
        self._host: bytes | None = None
        self._host_count = 0
        self._expect: bytes | None = None
        self._content_length: bytes | None = None
        self._connection: bytes | None = None
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._deadline = 0.0
        self._deadline_kind = _NO_DEADLINE
        self._is_reading_paused = False
        self._body_pressure = False
        self._is_write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._is_parser_dead = False
        self._is_advancing = False
        self._lingering: asyncio.Transport | None = None
        self._is_chunked = False
        self._transfer_encoding: bytes | None = None
        self._in_trailers = False
        self._upgrade: bytes | None = None
        self._tunnel: TunnelPeer | None = None
        self._upgrade_buffer = b""
        self._request_id: bytes | None = None
        self._write_paused_at = 0.0
        self._body_since = 0.0  # when the body's rate window began (0: no body byte yet)
        self._body_bytes = 0
        self._has_begun = False  # a first request has started on this connection
        self.is_client_gone = False  # the client closed its side (EOF) or the connection
        self._writes = state.writes

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        connections = self.state.connections
        if len(connections) >= self._limits.max_connections:
            # Over the limit: a fast, clear refusal; the accept loop and the connections
            # already open are not slowed down by one more.
            self._is_parser_dead = True
            self.transport = None
            transport.write(_OVER_CONNECTION_LIMIT)
            transport.close()
            return
        self._client = _address(transport.get_extra_info("peername"))
        self._server = _address(transport.get_extra_info("sockname"))
        connections.add(self)
        self._arm(_IDLE, self._limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lingering = None
        self.is_client_gone = True
        self.state.connections.discard(self)
        lost = ClientDisconnected("client disconnected")
        for exchange in (self._active, self._parsing, *self._queue):
            if exchange is not None and exchange.body is not None:
                exchange.body.fail(lost)
        active = self._active
        if active is not None:
            active.lost()
        if active is not None and active.producer is not None:
            active.producer.cancel()  # an upstream response nobody will read
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.close()
        self._release_drain_waiters()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self._is_parser_dead:
            return
        if self._deadline_kind == _IDLE:
            # The head's deadline runs from its first byte, even a CRLF the parser skips
            # without beginning a message.
            self._arm(_HEAD, self._limits.header_timeout)
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._on_upgrade(data[offset:])
        except httptools.HttpParserError as error:
            self._fail(self._parser_error(error, data))
        else:
            if self._deadline_kind == _HEAD and self._head_bytes > self._head_limit():
                self._fail(HeadersTooLarge("request head is larger than the configured limit"))

    def _parser_error(self, error: httptools.HttpParserError, data: bytes) -> RequestError:
        """llhttp's refusals, with the status the checklist names where llhttp says 400: a
        well-formed later HTTP version is a 505, a list of codings llhttp will not take
        (``chunked, identity``) a 501."""
        if error.__context__ is None:
            if _LATER_VERSION.search(data) is not None:
                return VersionNotSupported("only HTTP/1.1 and HTTP/1.0 are supported")
            if str(error) == "Invalid `Transfer-Encoding` header value":
                # llhttp refuses the value before our on_header sees it: read it from the
                # bytes. One list of known-shaped codings is a 501; a repeat is a 400.
                values = _TE_LINE.findall(data)
                codings = [c.strip() for value in values for c in value.split(b",")]
                if (
                    len(values) == 1
                    and codings.count(b"chunked") <= 1
                    and all(_TOKEN.fullmatch(c) for c in codings)
                ):
                    return NotImplementedCoding(
                        f"Transfer-Encoding {values[0].decode('latin-1')!r} is not supported "
                        "(only chunked)"
                    )
        return _request_error(error)

    def eof_received(self) -> bool | None:
        # A half-closed client may still read our answers: the requests it completed are
        # answered, then the connection closes. A worker waiting for the client to go away
        # (ASGI http.disconnect) is told now, as nginx does (499): EOF and a full close look
        # the same until we write.
        self.is_client_gone = True
        active = self._active
        if active is not None and active.producer is not None:
            # Like nginx (499): a client that closed its side no longer waits for the answer;
            # the upstream request is cancelled rather than left to run to its timeout.
            active.lost()
            active.producer.cancel()
            active.abort()
            return False
        if self._lingering is not None or (self._active is None and not self._queue):
            return False
        self._is_parser_dead = True
        self._deadline_kind = _NO_DEADLINE
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            if parsing.body is not None:
                parsing.body.fail(ClientDisconnected("client closed the connection mid-body"))
            if parsing in self._queue:
                self._queue.remove(parsing)  # it can never be complete: nobody answers it
        last = self._queue[-1] if self._queue else self._active
        if last is not None:
            last.close_after()
        for exchange in (self._active, *self._queue):
            if exchange is not None and exchange.body is not None:
                exchange.body.wake()
        return True

    def pause_writing(self) -> None:
        self._is_write_paused = True
        self._write_paused_at = self.state.tick_end
        producer = self._producer()
        if producer is not None:
            producer.pause_reading()

    def resume_writing(self) -> None:
        self._is_write_paused = False
        producer = self._producer()
        if producer is not None:
            producer.resume_reading()
        self._release_drain_waiters()

    def _producer(self) -> Producer | TunnelPeer | None:
        if self._tunnel is not None:
            return self._tunnel
        active = self._active
        return active.producer if active is not None else None

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._has_begun = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._host = None
        self._host_count = 0
        self._expect = None
        self._content_length = None
        self._connection = None
        self._is_chunked = False
        self._transfer_encoding = None
        self._in_trailers = False
        self._upgrade = None
        self._request_id = None
        if self._deadline_kind != _HEAD:  # armed by data_received on the first byte
            self._arm(_HEAD, self._limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise UriTooLong(f"request target is longer than {self._limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        size = len(name) + len(value)
        self._header_bytes += size + 4
        if size > limits.max_header_line:
            raise HeadersTooLarge(f"a header line is longer than {limits.max_header_line} bytes")
        if self._header_bytes > limits.max_header_bytes:
            raise HeadersTooLarge(
                f"request headers are larger than {limits.max_header_bytes} bytes"
            )
        if len(self._headers) >= limits.max_headers:
            raise HeadersTooLarge(f"more than {limits.max_headers} request headers")
        # bytes.find, not ``in``: ``x in b`` first tries x as an integer and builds the
        # TypeError it catches (about 0.3 µs), on every header.
        if self._in_trailers or name.find(b"_") >= 0:
            # Trailers are never merged into the head (aiohttp CVE-2025-53643 class), and a
            # name with '_' is dropped as nginx does: a CGI-style upstream would read
            # X_Forwarded_For as X-Forwarded-For.
            return
        name = name.lower()
        self._headers.append((name, value))
        special = _SPECIAL_HEADERS.get(name)
        if special is not None:
            self._remember(special, value)

    def _remember(self, special: int, value: bytes) -> None:
        # llhttp keeps white space after a value; RFC 9112 §5: it is not part of it.
        value = value.rstrip(b" \t")
        if special == _HOST:
            self._host = value
            self._host_count += 1
        elif special == _EXPECT:
            self._expect = value
        elif special == _CONTENT_LENGTH:
            self._content_length = value
        elif special == _CONNECTION:
            previous = self._connection
            self._connection = value if previous is None else previous + b", " + value
        elif special == _TRANSFER_ENCODING:
            # Checked in _check_framing once the head is complete: llhttp would only refuse
            # a bad coding when the body starts, after the request was dispatched.
            self._is_chunked = True
            previous = self._transfer_encoding
            self._transfer_encoding = value if previous is None else previous + b"," + value
        elif special == _UPGRADE:
            self._upgrade = value
        elif self._request_id is None and _VALID_REQUEST_ID.fullmatch(value) is not None:
            self._request_id = value
        else:
            self._headers.pop()  # a second id, or one unfit for logs: ours replaces it

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        self._in_trailers = True
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            _refuse_version(version)
        if self._transfer_encoding is not None:
            self._check_framing(version)
        keep_alive = version == "1.1" and parser.should_keep_alive()
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        head = self._build_head(method, version)
        limits = self._limits
        body = RequestBody(self, limits.max_body_bytes)
        expects_continue = (
            self._check_body_announcement(version)
            if self._content_length is not None or self._expect is not None
            else False
        )
        exchange = Exchange(
            self, head, body, keep_alive=keep_alive, expects_continue=expects_continue
        )
        self._parsing = exchange
        self._arm(_BODY, limits.body_idle_timeout)
        self._body_since = 0.0
        self._enqueue(exchange)

    def on_body(self, chunk: bytes) -> None:
        exchange = self._parsing
        if exchange is not None and exchange.body is not None:
            exchange.body.feed(chunk)
            now = self.state.tick_end
            self._deadline = now + self._limits.body_idle_timeout
            if self._body_since:
                self._body_bytes += len(chunk)
            else:
                self._body_since, self._body_bytes = now, len(chunk)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None and exchange.body is not None:
            exchange.body.finish()
        if self._deadline_kind in (_BODY, _DRAIN, _HEAD):
            self._deadline_kind = _NO_DEADLINE
        if self._active is None and not self._queue:
            self._arm(_IDLE, self._limits.keepalive_timeout)

    # -- request head -------------------------------------------------------------------

    def _build_head(self, method: str, version: str) -> RequestHead:
        if method == "CONNECT":
            raise MethodNotAllowed("CONNECT is not supported by this server")
        target = self._url
        if target[:1] != b"/":
            raise BadRequest("request target must be in origin-form (a path starting with '/')")
        question = target.find(b"?")
        raw_path = (target if question < 0 else target[:question]).decode("latin-1")
        query = b"" if question < 0 else target[question + 1 :]
        if query.find(b"#") >= 0:  # not ``in``: see on_header
            raise BadRequest("a request target never carries a #fragment")
        path = normalize_path(raw_path)
        if self._is_chunked:
            body_length = -1
        else:
            body_length = int(self._content_length) if self._content_length else 0
        upgrade = self._upgrade
        if upgrade is not None and (
            upgrade.lower() != b"websocket" or not self._parser.should_upgrade()
        ):
            upgrade = None  # only WebSocket is switched to; h2c and the rest are plain HTTP
        request_id = self._request_id
        if request_id is None:
            request_id = self.state.new_request_id()
            self._headers.append((REQUEST_ID, request_id))
        return RequestHead(
            method,
            target,
            path,
            query,
            self._headers,
            self._canonical_host(version),
            version,
            self._client,
            self._server,
            "http",
            body_length,
            self._connection,
            upgrade,
            path == raw_path,
            request_id,
        )

    def _canonical_host(self, version: str) -> str:
        if self._host_count > 1:
            raise BadRequest("more than one Host header")
        if self._host is None:
            if version == "1.1":
                raise BadRequest("missing Host header")
            return ""
        hosts = self.state.hosts
        host = hosts.get(self._host)
        if host is None:
            host = normalize_host(self._host.decode("latin-1"))
            if len(hosts) >= _HOST_CACHE_SIZE:
                hosts.clear()
            hosts[self._host] = host
        return host

    def _check_body_announcement(self, version: str) -> bool:
        """Reject an oversized Content-Length before any body byte is read; note Expect."""
        limit = self._limits.max_body_bytes
        if limit and self._content_length is not None and int(self._content_length) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        if self._expect is None:
            return False
        if self._expect.lower() != b"100-continue":
            raise ExpectationFailed("only 'Expect: 100-continue' is supported")
        return version == "1.1"

    def _check_framing(self, version: str) -> None:
        """RFC 9112 §6.1: the only coding we take is a lone, final ``chunked``."""
        value = self._transfer_encoding or b""
        codings = [c.strip().lower() for c in value.split(b",")]
        if version == "1.0":
            raise BadRequest("Transfer-Encoding on an HTTP/1.0 request")
        if codings == [b"chunked"]:
            return
        if all(_TOKEN.fullmatch(c) for c in codings):
            raise NotImplementedCoding(
                f"Transfer-Encoding {value.decode('latin-1')!r} is not supported (only chunked)"
            )
        raise BadRequest("invalid Transfer-Encoding")

    def _head_limit(self) -> int:
        return self._limits.max_request_line + self._limits.max_header_bytes + 1024

    # -- exchanges, in order ------------------------------------------------------------

    def _enqueue(self, exchange: Exchange) -> None:
        if self._active is None:
            self._start(exchange)
        else:
            if len(self._queue) >= self._limits.max_pipelined and exchange.error is None:
                # One read can hold thousands of tiny requests; each queued one holds memory.
                raise Overloaded(
                    f"more than {self._limits.max_pipelined} pipelined requests waiting"
                )
            self._queue.append(exchange)
            self._pause_reading()

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        state = self.state
        exchange.run()
        if exchange.error is not None:
            state.handler.handle_error(exchange.error, exchange)
            return
        head = exchange.head
        assert head is not None and exchange.body is not None
        if state.in_flight > self._limits.max_in_flight:
            state.handler.refuse(head, exchange)
            return
        coroutine = state.handler.handle(head, exchange.body, exchange)
        if coroutine is not None:
            task = self.loop.create_task(coroutine)
            exchange.task = task
            task.add_done_callback(exchange.on_task_done)

    def on_exchange_end(self, exchange: Exchange) -> None:
        """The response is written: close, or drain the request body and go on."""
        if exchange is not self._active:
            return
        exchange.task = None
        if exchange.must_close or self.transport is None or self.state.is_closing:
            self._close()
            return
        body = exchange.body
        if body is not None and not body.is_complete:
            if exchange.request_is_unread:
                self._close()
                return
            body.discard()
            self._arm(_DRAIN, self._limits.body_idle_timeout)
        self._active = None
        if not self._is_advancing:
            self._advance()

    def _advance(self) -> None:
        """Start the queued exchanges in order. A loop, not recursion: an exchange answered at
        once (404, 400) ends inside ``_start``, and a client may pipeline thousands."""
        self._is_advancing = True
        try:
            while self._active is None and self._queue:
                self._start(self._queue.popleft())
        finally:
            self._is_advancing = False
        if self._queue or self.transport is None:
            return
        if self._active is None and self._parsing is None:
            self._arm(_IDLE, self._limits.keepalive_timeout)
        self._resume_reading()

    def _fail(self, error: RequestError) -> None:
        """Stop parsing; answer ``error`` after the requests already received, then close."""
        self._is_parser_dead = True
        self._pause_reading()
        self._deadline_kind = _NO_DEADLINE
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            if parsing.body is not None:
                parsing.body.fail(error)
            if parsing.is_ended:
                self._close()
                return
            if parsing is self._active:
                parsing.close_after()
                if not parsing.is_started:
                    self.state.handler.handle_error(error, parsing)
                return
            if parsing in self._queue:
                self._queue.remove(parsing)
        # A refused HEAD request still gets no body (RFC 9110 §9.3.2): the client would read
        # one as the start of the next response.
        self._enqueue(
            Exchange(
                self, None, None, keep_alive=False, error=error, is_head_request=self._is_head()
            )
        )

    def _is_head(self) -> bool:
        try:
            return bool(self._parser.get_method() == b"HEAD")
        except httptools.HttpParserError:
            return False  # the request line never got as far as a method

    def _on_upgrade(self, leftover: bytes) -> None:
        """The client asked to switch protocols: no byte after this head is HTTP any more.

        A forwarder that tunnels (an upstream answering 101) takes the connection over
        through ``tunnel``; any other answer is sent as plain HTTP, then the connection
        closes. Bytes that came after the head wait in ``_upgrade_buffer`` meanwhile.
        """
        self._is_parser_dead = True
        self._upgrade_buffer = leftover
        self._pause_reading()
        if self._active is None:  # already answered (a 404, say): nothing left to send
            self._close()
            return
        for exchange in (self._active, *self._queue):
            exchange.close_after()

    def tunnel(self, exchange: Exchange, peer: TunnelPeer) -> TunnelPeer:
        """Switch to piping raw bytes with ``peer``; returns this side for the peer to use."""
        if exchange is self._active:
            self._active = None
        self._deadline_kind = _NO_DEADLINE
        self._tunnel = peer
        buffered, self._upgrade_buffer = self._upgrade_buffer, b""
        if buffered:
            peer.write(buffered)
        transport = self.transport
        if transport is not None:
            self._is_reading_paused = False
            transport.resume_reading()
        return _ClientSide(self)

    # -- deadlines ------------------------------------------------------------------------

    def _arm(self, kind: int, timeout: float) -> None:
        self._deadline_kind = kind
        self._deadline = self.state.tick_end + timeout

    def check_deadline(self, now: float) -> None:
        """Called by the listener's sweep; acts on an overdue head, body or idle wait."""
        if self._is_write_paused and now - self._write_paused_at > self._limits.send_timeout:
            # The client stopped reading (nginx's send_timeout): cut it, which also cancels
            # the upstream exchange or tunnel that was feeding it.
            logger.info("client did not read for %.0f s; closing", self._limits.send_timeout)
            self.is_client_gone = True
            self.abort()
            return
        if (
            self._is_reading_paused
            and self.transport is not None
            and _peer_has_left(self.transport)
        ):
            # While we do not read, the event loop cannot see the client reset or close:
            # ask the socket, so an upstream exchange it was feeding is cancelled promptly.
            self.is_client_gone = True
            self.abort()
            return
        kind = self._deadline_kind
        if kind == _BODY and self._body_since and self._is_body_too_slow(now):
            self._deadline_kind = _NO_DEADLINE
            self._fail(
                RequestTimeout(
                    f"request body arrives slower than {self._limits.body_min_rate} bytes/s"
                )
            )
            return
        if kind == _NO_DEADLINE or now < self._deadline:
            return
        if kind == _LINGER and self._lingering is not None:
            self._deadline_kind = _NO_DEADLINE
            self._lingering.close()
            return
        if self.transport is None:
            return
        if self._is_reading_paused and kind != _IDLE:
            # We stopped reading (a slow worker, pipelined requests waiting their turn): the
            # client cannot be late while we do not listen. The clock restarts from now.
            timeout = (
                self._limits.header_timeout if kind == _HEAD else self._limits.body_idle_timeout
            )
            self._deadline = now + timeout
            return
        self._deadline_kind = _NO_DEADLINE
        if kind == _IDLE or kind == _DRAIN:
            self._close()
        elif kind == _HEAD:
            self._fail(RequestTimeout("request headers were not received in time"))
        else:
            self._fail(RequestTimeout("request body was not received in time"))

    def _is_body_too_slow(self, now: float) -> bool:
        limits = self._limits
        if not limits.body_min_rate:
            return False
        if self._is_reading_paused:
            # We are not reading (back-pressure from the worker): the client is not slow.
            # Judge it afresh once we read again.
            self._body_since, self._body_bytes = now, 0
            return False
        elapsed = now - self._body_since
        return (
            elapsed > limits.body_rate_grace and self._body_bytes < limits.body_min_rate * elapsed
        )

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else once the current response is sent."""
        if self._active is None and self._parsing is None:
            if not self._has_begun and not self._head_bytes and self.transport is not None:
                # Accepted a moment ago: its first request may be on its way. It gets a short
                # grace, then is answered with Connection: close (or closed if still silent).
                self._arm(_IDLE, FIRST_REQUEST_GRACE)
                return
            self._close()
        else:
            for exchange in (self._active, *self._queue):
                if exchange is not None:
                    exchange.close_after()

    # -- transport helpers ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            self._writes.write(transport, data)  # at the end of the loop's turn

    async def drain(self) -> None:
        if self._is_write_paused and self.transport is not None:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.transport is None:
            raise ClientDisconnected("client disconnected")

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def apply_body_pressure(self) -> None:
        self._body_pressure = True
        self._pause_reading()

    def release_body_pressure(self) -> None:
        if self._body_pressure:
            self._body_pressure = False
            if not self._queue:
                self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._is_reading_paused and self.transport is not None:
            self._is_reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._is_reading_paused and not self._body_pressure and not self._is_parser_dead:
            self._is_reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self.transport = None  # forget it at once: a closing transport may raise on write
        self._writes.flush()  # what this connection wrote goes before its FIN
        if (self._is_parser_dead or self._parsing is not None) and not self.is_client_gone:
            self._linger(transport)
        else:
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close a connection whose client may still be sending (a refused or unread body).

        Closing a socket with unread bytes makes the kernel answer with a reset, which can
        destroy the response still in flight. So, as nginx's lingering close does: send FIN
        after the response, discard whatever arrives, and close when the client does or
        after ``LINGER_SECONDS``.
        """
        self._is_parser_dead = True  # data_received now discards
        try:
            transport.write_eof()
            transport.resume_reading()
        except (OSError, RuntimeError):  # the socket is already gone
            transport.abort()
            return
        self._lingering = transport
        self._arm(_LINGER, LINGER_SECONDS)

    def abort(self) -> None:
        transport = self.transport or self._lingering
        self.transport = self._lingering = None
        if transport is not None:
            # What was written goes out before the reset, as it did when writes were made at
            # once: a cut response shows the client its head and the bytes that came.
            self._writes.flush()
            transport.abort()


def protocol_factory(state: ServerState) -> Callable[[], asyncio.Protocol]:
    """What the event loop calls for each accepted connection."""
    # The cast is for the type checker: the loop needs the methods, not the base class.
    return lambda: cast(asyncio.Protocol, HttpProtocol(state))


class _ClientSide:
    """The client connection as a ``TunnelPeer`` for the upstream end of a tunnel."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: HttpProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol.write(data)

    def close(self) -> None:
        protocol = self._protocol
        protocol._tunnel = None
        protocol._close()

    def pause_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.resume_reading()


def _peer_has_left(transport: asyncio.Transport) -> bool:
    """Whether the client reset or closed its side (POLLHUP/POLLERR/POLLRDHUP), without
    reading from the socket."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, _GONE_EVENTS)
    return any(events & _GONE_EVENTS for _, events in poller.poll(0))


def _refuse_version(version: str) -> None:
    """HTTP/1.0 and 1.1 only: a later major version is a 505, anything else a 400."""
    major = version.partition(".")[0]
    if major.isdigit() and int(major) >= 2:
        raise VersionNotSupported(f"HTTP/{version} is not supported (HTTP/1.1 and 1.0 are)")
    raise BadRequest(f"unsupported request line (HTTP/{version})")


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def _request_error(error: Exception) -> RequestError:
    """What to answer for a parser error; httptools keeps a callback's own exception in
    ``__context__`` (our limit and head checks raise ``RequestError`` from the callbacks)."""
    raised = error.__context__
    if isinstance(raised, RequestError):
        return raised
    if raised is not None:
        logger.error("request parser callback failed", exc_info=raised)
        return InternalError("Unexpected error while parsing the request")
    return BadRequest(f"malformed request: {_parser_message(error)}")


def _parser_message(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.removeprefix("HPE_").replace("_", " ").lower() if text.isupper() else text
