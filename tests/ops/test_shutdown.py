"""Graceful stop: connections the kernel accepted but the server had not yet taken are
answered, not reset by the close of the listening socket."""

from __future__ import annotations

import asyncio
import socket

from dispatcher.testing import run_dispatcher
from dispatcher.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        chunks.append(b"<reset>")
    finally:
        sock.close()
    return b"".join(chunks)


async def test_connections_waiting_in_the_accept_queue_at_stop_are_answered() -> None:
    async with run_dispatcher(workers={"db": app}, environ={}) as running:
        port = running.listener.port
        waiting = []
        for _ in range(8):
            # The event loop does not run between these: the kernel completes each handshake
            # and keeps the connection, with its request, in the listening socket's queue.
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: db.do\r\n\r\n")
            waiting.append(sock)
        stopping = asyncio.ensure_future(running.listener.stop(5.0))
        answers = await asyncio.gather(*(asyncio.to_thread(read_all, s) for s in waiting))
        await stopping
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert b"\r\nconnection: close\r\n" in answer
        assert answer.endswith(b"served")


async def test_a_connection_that_has_not_sent_its_request_yet_gets_a_moment_for_it() -> None:
    async with run_dispatcher(workers={"db": app}, environ={}) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.listener.port)
        await asyncio.sleep(0.05)  # accepted: the server has it, with nothing to read yet
        stopping = asyncio.ensure_future(running.listener.stop(5.0))
        await asyncio.sleep(0.2)
        writer.write(b"GET / HTTP/1.1\r\nHost: db.do\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await stopping
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert b"\r\nconnection: close\r\n" in answer


async def test_an_idle_keep_alive_connection_is_closed_at_once() -> None:
    async with run_dispatcher(workers={"db": app}, environ={}) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: db.do\r\n\r\n")
        first = await reader.readuntil(b"served")
        stopping = asyncio.ensure_future(running.listener.stop(5.0))
        rest = await asyncio.wait_for(reader.read(), 0.9)  # closed, not kept for the 1 s grace
        writer.close()
        await stopping
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b""
