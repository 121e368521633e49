"""What crosses from a connection to a worker: ``RequestHead``, ``BodyStream``, ``ResponseWriter``.

A worker's forwarder receives the parsed head, reads the body as a stream of byte chunks
and answers through the writer; the connection (``server/protocol.py``) owns the framing.

Example::

    async def forward(self, worker, head, body, response):
        while chunk := await body.read():
            ...
        response.start(200, [(b"content-type", b"text/plain")])
        response.write(b"hello")
        response.end()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dispatcher.errors import DispatcherError, RequestError
from dispatcher.types import Header

if TYPE_CHECKING:
    from dispatcher.routing import RouteMatch


class ClientDisconnected(DispatcherError):
    """The client went away before the exchange finished (logged as 499)."""


class ResponseHeaderError(DispatcherError):
    """A worker produced a header that cannot be sent (CR, LF or NUL; a bad name)."""


class ResponseBodyError(DispatcherError):
    """A worker's body does not match the content-length it declared (the response is cut)."""


class RequestHead:
    """The parsed request line and headers, plus the canonical host and path.

    ``headers`` keeps every line in order with repeats; names are lower-cased (as ASGI and
    HTTP/2 require), values are raw bytes. ``path`` is the canonical path (see
    ``normalize``), still percent-encoded; ``target`` is what the client sent.

    A plain class, not a dataclass: compiled by mypyc, a dataclass's ``__init__`` is still
    the interpreted one ``dataclasses`` generates (1 µs of every request).
    """

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "headers",
        "host",
        "http_version",
        "client",
        "server",
        "scheme",
        "body_length",
        "connection",
        "upgrade",
        "raw_path_is_canonical",
        "request_id",
        "route",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        path: str,
        query: bytes,
        headers: list[Header],
        host: str,
        http_version: str,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
        body_length: int = 0,
        connection: bytes | None = None,
        upgrade: bytes | None = None,
        raw_path_is_canonical: bool = True,
        request_id: bytes = b"",
        route: RouteMatch | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.headers = headers
        self.host = host
        self.http_version = http_version
        self.client = client
        self.server = server
        self.scheme = scheme
        self.body_length = body_length
        """0: no body; N: Content-Length N; -1: chunked (length unknown)."""
        self.connection = connection
        """The Connection header's value(s), joined: what a proxy must treat as hop-by-hop."""
        self.upgrade = upgrade
        """``b"websocket"`` when the client asks to switch to WebSocket, else ``None``."""
        self.raw_path_is_canonical = raw_path_is_canonical
        """The path as sent was already canonical: ``target`` may be forwarded byte for byte."""
        self.request_id = request_id
        """The client's ``X-Request-Id`` when it was a valid one, else one made here; it is
        also in ``headers``, so every worker receives it."""
        self.route = route

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.host}{self.path}, id={self.request_id!r})"


class BodyStream(Protocol):
    """The request body as a stream; flow control pauses the client while nobody reads."""

    async def read(self) -> bytes:
        """The next chunk; ``b""`` once the body is complete. Raises ``ClientDisconnected``."""
        ...

    @property
    def is_complete(self) -> bool:
        """True once the last chunk has been received (it may still be unread)."""
        ...

    @property
    def is_exhausted(self) -> bool:
        """True once the last chunk has been received and read."""
        ...

    async def wait_disconnect(self) -> None:
        """Wait until the client goes away or the response has been sent."""
        ...

    def pipe(self, sink: BodySink) -> None:
        """From now on hand each chunk to ``sink`` as it arrives (those already received
        first) instead of queueing it for ``read``; then ``end_body`` or ``abort_body``."""
        ...

    def hold(self) -> None:
        """The sink is full: stop reading the client until ``release``."""
        ...

    def release(self) -> None:
        """The sink has room again."""
        ...


class BodySink(Protocol):
    """Where a piped request body goes: an upstream connection, without a task or a queue."""

    def write_body(self, data: bytes) -> None: ...

    def end_body(self) -> None:
        """The client sent the whole body."""
        ...

    def abort_body(self) -> None:
        """The client side failed mid-body (gone, too large, too slow); it is answered there."""
        ...


class Producer(Protocol):
    """What feeds a response from elsewhere (an upstream connection): the client side pauses
    it while the client is slow to read, and cancels it when the client goes away."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def cancel(self) -> None: ...


class TunnelPeer(Protocol):
    """The other end of a switched protocol (an upstream WebSocket connection)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ResponseWriter(Protocol):
    """Writes one response on the connection, choosing the framing (length, chunked, close)."""

    producer: Producer | None
    """Set by a forwarder that streams from elsewhere, for back-pressure and cancellation."""
    outcome: int
    """What became of the request (``dispatcher.outcomes``); ``ROUTED`` until an error."""
    handed_off: float
    """``time.perf_counter()`` when the request reached its worker (0.0 until then): the
    dispatcher's own overhead is the time before it."""

    @property
    def is_started(self) -> bool:
        """True once the status line has been committed."""
        ...

    @property
    def is_disconnected(self) -> bool:
        """True once the client has gone; further writes are dropped."""
        ...

    def start(
        self, status: int, headers: list[Header], *, content_length: int | None = None
    ) -> None:
        """Commit status and headers; ``content_length`` frames the body when known."""
        ...

    def start_head(
        self,
        status: int,
        header_block: bytes,
        *,
        content_length: int | None,
        has_request_id: bool,
    ) -> None:
        """Commit a proxied head: ``header_block`` is already-serialized end-to-end lines
        (``name: value\\r\\n`` each), hop-by-hop removed; the framing is added here, and the
        request id unless the block has an ``X-Request-Id`` of its own."""
        ...

    def start_tunnel(self, header_block: bytes, peer: TunnelPeer) -> TunnelPeer:
        """Answer ``101 Switching Protocols`` and from then on pipe raw bytes both ways.

        Returns the client side as a peer for the other end to write to."""
        ...

    def write(self, data: bytes) -> None:
        """Send body bytes (chunk-framed when the length is unknown)."""
        ...

    async def drain(self) -> None:
        """Wait while the client is slow to read (transport write buffer over its mark)."""
        ...

    def end(self) -> None:
        """Finish the response; the connection moves on to the next request or closes."""
        ...

    def abort(self) -> None:
        """Close the connection abruptly so a partial body can never look complete."""
        ...

    def retract(self) -> bool:
        """Take back a started response whose head has not been written yet (so an error
        can still be answered instead); False once bytes are on the wire."""
        ...

    def send_error(self, status: int, body: bytes, *, headers: list[Header] | None = None) -> None:
        """Answer a whole JSON error response (``start`` + ``write`` + ``end``)."""
        ...

    def fail(self, error: RequestError) -> None:
        """Answer ``error`` (its status, JSON body with the request id, headers) and count
        its outcome; a response already on the wire is cut instead."""
        ...
