"""In-process ASGI workers get WebSocket scopes: handshake, messages both ways, close codes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from dispatcher.testing import run_dispatcher
from dispatcher.types import Receive, Scope, Send

DISCONNECTS: list[Any] = []


async def chat(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes messages; closes with 4001 on "bye"; refuses /deny; fails on /boom."""
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/deny":
        await send({"type": "websocket.close"})
        return
    if scope["path"] == "/boom":
        raise RuntimeError("worker failed before accepting")
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    await send({"type": "websocket.send", "text": scope["extensions"]["dispatcher"]["service"]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            DISCONNECTS.append(message)
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4001})
            return
        payload = {k: v for k, v in message.items() if k in ("text", "bytes")}
        await send({"type": "websocket.send", **payload})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with run_dispatcher(workers={"gateway": chat}, environ={}) as dispatcher:
        yield dispatcher.listener.port


def connect(port: int, path: str, **options: Any) -> Any:
    """A client whose Host is gateway.do while the socket goes to the loopback port."""
    sock = socket.create_connection(("127.0.0.1", port))
    return websockets.connect(f"ws://gateway.do:{port}{path}", sock=sock, **options)


async def test_messages_flow_both_ways_and_close_codes_propagate(port: int) -> None:
    async with connect(port, "/chat", subprotocols=["chat.v1"]) as ws:
        client: ClientConnection = ws
        assert client.subprotocol == "chat.v1"
        assert await client.recv() == "gateway"
        await client.send("hello")
        assert await client.recv() == "hello"
        await client.send(b"\x01" * (1 << 20))
        assert await client.recv() == b"\x01" * (1 << 20)
        await (await client.ping())
        await client.send("bye")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_closing_before_accepting_is_a_403(port: int) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(port, "/deny"):
            pass
    assert refused.value.response.status_code == 403


async def test_a_worker_failing_before_accepting_is_a_500_and_the_dispatcher_lives_on(
    port: int,
) -> None:
    with pytest.raises(websockets.InvalidStatus) as failed:
        async with connect(port, "/boom"):
            pass
    assert failed.value.response.status_code == 500
    async with connect(port, "/again") as ws:
        assert await ws.recv() == "gateway"


async def test_the_worker_sees_the_client_close_code(port: int) -> None:
    DISCONNECTS.clear()
    async with connect(port, "/chat") as ws:
        await ws.recv()
        await ws.close(code=4002)
    for _ in range(100):
        if DISCONNECTS:
            break
        await asyncio.sleep(0.01)
    assert DISCONNECTS == [{"type": "websocket.disconnect", "code": 4002}]


async def test_an_invalid_handshake_is_a_400(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /chat HTTP/1.1\r\nHost: gateway.do\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"invalid WebSocket handshake" in answer
