"""WebSocket for in-process ASGI workers: the ``websocket`` scope over the client connection.

The handshake is checked here (RFC 6455 §4.2.1); once the app accepts, the client
connection becomes a tunnel (``ResponseWriter.start_tunnel``) whose bytes are framed and
unframed by wsproto. The ASGI rules apply: closing before accepting answers 403, an app
that fails before accepting answers 500, and a client that goes away is
``websocket.disconnect`` with code 1006.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import Any, Final
from urllib.parse import unquote

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from dispatcher.errors import BadRequest
from dispatcher.http import RequestHead, ResponseWriter, TunnelPeer
from dispatcher.types import ASGIApp, Scope
from dispatcher.types import Message as AsgiMessage

logger = logging.getLogger("dispatcher.websocket")

_ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ABNORMAL_CLOSURE: Final = 1006
_QUEUE_HIGH_WATER: Final = 64


def websocket_scope(head: RequestHead, extensions: dict[str, Any], state: dict[str, Any]) -> Scope:
    """The ASGI ``websocket`` scope of an upgrade request."""
    path = head.path
    subprotocols = [
        p.strip().decode("latin-1")
        for name, value in head.headers
        if name == b"sec-websocket-protocol"
        for p in value.split(b",")
        if p.strip()
    ]
    return {
        "type": "websocket",
        "asgi": _ASGI,
        "http_version": head.http_version,
        "scheme": "ws",
        "path": unquote(path) if "%" in path else path,
        "raw_path": path.encode("ascii"),
        "query_string": head.query,
        "root_path": "",
        "headers": head.headers,
        "client": head.client,
        "server": head.server,
        "subprotocols": subprotocols,
        "state": state,
        "extensions": extensions,
    }


def accept_key(head: RequestHead) -> bytes:
    """``Sec-WebSocket-Accept`` for the request; ``BadRequest`` if it is no valid handshake."""
    key: bytes | None = None
    version: bytes | None = None
    for name, value in head.headers:
        if name == b"sec-websocket-key":
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
    if head.method != "GET" or key is None or len(base64.b64decode(key + b"==")[:16]) != 16:
        raise BadRequest("invalid WebSocket handshake (GET with Sec-WebSocket-Key expected)")
    if version != b"13":
        raise BadRequest("unsupported WebSocket version (13 expected)")
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455


class WebSocketSession:
    """One ASGI websocket connection: the app's receive/send over wsproto framing."""

    __slots__ = (
        "_response",
        "_accept",
        "_connection",
        "_inbox",
        "_client",
        "_is_accepted",
        "_is_closed",
        "_text",
        "_bytes",
        "_is_paused",
    )

    def __init__(self, response: ResponseWriter, accept: bytes) -> None:
        self._response = response
        self._accept = accept
        self._connection = Connection(ConnectionType.SERVER)
        self._inbox: asyncio.Queue[AsgiMessage] = asyncio.Queue()
        self._inbox.put_nowait({"type": "websocket.connect"})
        self._client: TunnelPeer | None = None
        self._is_accepted = False
        self._is_closed = False
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._is_paused = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        """Run the app; answer the handshake as the ASGI rules say if it never accepted."""
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            if not self._is_accepted and not self._response.is_started:
                raise
            logger.exception("websocket app failed after accepting")
            self._close_with(1011)
            return
        if not self._is_accepted and not self._response.is_started:
            self._deny()
        elif not self._is_closed:
            self._close_with(1000)

    async def receive(self) -> AsgiMessage:
        message = await self._inbox.get()
        if self._is_paused and self._inbox.qsize() < _QUEUE_HIGH_WATER // 2:
            self._is_paused = False
            if self._client is not None:
                self._client.resume_reading()
        return message

    async def send(self, message: AsgiMessage) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._do_accept(message)
        elif kind == "websocket.send":
            self._do_send(message)
        elif kind == "websocket.close":
            if not self._is_accepted:
                self._deny()
            else:
                self._close_with(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"ASGI app sent an unexpected message type {kind!r}")

    def _do_accept(self, message: AsgiMessage) -> None:
        if self._is_accepted:
            raise RuntimeError("ASGI app sent 'websocket.accept' twice")
        lines = [
            b"upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ",
            self._accept,
            b"\r\n",
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines += (b"sec-websocket-protocol: ", subprotocol.encode("latin-1"), b"\r\n")
        for name, value in message.get("headers", ()):
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise RuntimeError(f"header {name!r} has CR or LF")
            lines += (name, b": ", value, b"\r\n")
        self._is_accepted = True
        self._client = self._response.start_tunnel(b"".join(lines), _AppSide(self))

    def _do_send(self, message: AsgiMessage) -> None:
        if not self._is_accepted:
            raise RuntimeError("ASGI app sent 'websocket.send' before 'websocket.accept'")
        if self._is_closed or self._client is None:
            return
        text = message.get("text")
        event: Message[Any] = (
            TextMessage(data=text)
            if text is not None
            else BytesMessage(data=message.get("bytes") or b"")
        )
        self._client.write(self._connection.send(event))

    def _deny(self) -> None:
        """Closing before accepting is an HTTP 403 (ASGI websocket spec)."""
        self._is_closed = True
        body = b'{"error": "Forbidden", "message": "the worker refused the WebSocket connection"}'
        self._response.send_error(403, body)

    def _close_with(self, code: int, reason: str = "") -> None:
        if self._is_closed:
            return
        self._is_closed = True
        client = self._client
        if client is None:
            return
        if self._connection.state is ConnectionState.OPEN:
            client.write(self._connection.send(CloseConnection(code=code, reason=reason)))
        client.close()

    # -- bytes from the client (through _AppSide) -----------------------------------------

    def feed(self, data: bytes) -> None:
        try:
            self._connection.receive_data(data)
            for event in self._connection.events():
                self._on_event(event)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            logger.info("websocket protocol error from client: %s", exc)
            self._disconnect(1002)
            self._close_with(1002)
        if not self._is_paused and self._inbox.qsize() >= _QUEUE_HIGH_WATER:
            self._is_paused = True
            if self._client is not None:
                self._client.pause_reading()

    def _on_event(self, event: object) -> None:
        client = self._client
        if isinstance(event, TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                self._inbox.put_nowait({"type": "websocket.receive", "text": "".join(self._text)})
                self._text.clear()
        elif isinstance(event, BytesMessage):
            self._bytes.append(bytes(event.data))
            if event.message_finished:
                self._inbox.put_nowait(
                    {"type": "websocket.receive", "bytes": b"".join(self._bytes)}
                )
                self._bytes.clear()
        elif isinstance(event, Ping) and client is not None:
            client.write(self._connection.send(event.response()))
        elif isinstance(event, CloseConnection):
            if client is not None and self._connection.state is not ConnectionState.CLOSED:
                client.write(self._connection.send(event.response()))
            self._disconnect(event.code)
            self._is_closed = True
            if client is not None:
                client.close()

    def _disconnect(self, code: int) -> None:
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": int(code)})

    def lost(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": _ABNORMAL_CLOSURE})


class _AppSide:
    """The app's end of the tunnel, as the client connection sees it."""

    __slots__ = ("_session",)

    def __init__(self, session: WebSocketSession) -> None:
        self._session = session

    def write(self, data: bytes) -> None:
        self._session.feed(data)

    def close(self) -> None:
        self._session.lost()

    def pause_reading(self) -> None:
        return None  # the app is in-process: it cannot be told to slow down its sends

    def resume_reading(self) -> None:
        return None


async def serve_websocket(
    app: ASGIApp,
    head: RequestHead,
    response: ResponseWriter,
    extensions: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Run an ASGI app on a WebSocket upgrade request."""
    try:
        accept = accept_key(head)
    except BadRequest as error:
        response.fail(error)
        return
    session = WebSocketSession(response, accept)
    await session.run(app, websocket_scope(head, extensions, state))
