"""Request bodies on a warm pool: the callback path pipes them from the client's reads
straight to a pooled upstream connection, with no task and no queue.

Every test first sends a GET so that a keep-alive connection waits in the pool: the request
under test then takes the callback path. What must hold there: the body arrives intact in
either framing; a connection whose request body was not sent whole is never reused (an
upstream that answers early, a client that leaves, a body over the limit); and the next
request reaches the upstream clean, on a fresh connection.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .conftest import Gateway, error_fields, request_bytes, serve
from .upstreams import RecordingUpstream, echo

MIB: Final = 1024 * 1024
EARLY: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly"
OK: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def warm(gateway: Gateway, up: RecordingUpstream | EarlyAnswerUpstream) -> None:
    response = await gateway.request("/warm")
    assert response.status == 200


async def test_a_body_on_a_warm_connection_arrives_whole_in_either_framing(
    tmp_path: Path,
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads, and back-pressure on the way
    parts = [b"first ", b"second " * 5000, b"third"]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    async with RecordingUpstream.start(echo()) as up, serve(tmp_path, {"db": up.url}) as gateway:
        await warm(gateway, up)
        sized = await gateway.request("/sized", method="POST", body=body)
        client = await gateway.connect()
        client.send(
            request_bytes("POST", "/chunked", headers=[("Transfer-Encoding", "chunked")]) + chunked
        )
        streamed = await client.response()
    assert (sized.status, streamed.status) == (200, 200)
    warm_up, first, second = up.requests
    assert first.connection == second.connection == warm_up.connection  # all on one
    assert first.body_sha256 == hashlib.sha256(body).hexdigest()
    assert first.values("content-length") == [str(len(body)).encode()]
    assert second.body == b"".join(parts)
    assert second.values("transfer-encoding") == [b"chunked"]


async def test_a_body_sent_before_its_exchange_starts_is_piped_from_the_queue(
    tmp_path: Path,
) -> None:
    # Two pipelined POSTs in one write: the second's body is received (and queued) while
    # the first is answered, then piped when its turn comes.
    async with RecordingUpstream.start(echo()) as up, serve(tmp_path, {"db": up.url}) as gateway:
        await warm(gateway, up)
        client = await gateway.connect()
        client.send(
            request_bytes("POST", "/one", body=b"a" * 1000)
            + request_bytes("POST", "/two", body=b"b" * 70000)
        )
        one = await client.response()
        two = await client.response()
    assert (one.status, two.status) == (200, 200)
    assert [r.body for r in up.requests[1:]] == [b"a" * 1000, b"b" * 70000]


@dataclass
class EarlyAnswerUpstream:
    """Answers a POST as soon as its head arrives, without reading the body (as an upstream
    refusing an upload does), and keeps the connection open; answers a GET with ``ok``.
    Records, per connection, the request lines it saw at the start of a request."""

    server: asyncio.Server | None = None
    heads: list[list[bytes]] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.heads)
        self.heads.append([])
        self.closed.append(False)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads[index].append(head.split(b"\r\n", 1)[0])
                if head.startswith(b"POST"):
                    writer.write(EARLY)
                    await reader.read()  # the rest is a body nobody reads: wait for EOF
                    return
                writer.write(OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.closed[index] = True
            writer.close()


@asynccontextmanager
async def early_answer_upstream() -> AsyncIterator[EarlyAnswerUpstream]:
    up = EarlyAnswerUpstream()
    up.server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    try:
        yield up
    finally:
        up.server.close()


async def test_an_early_answer_does_not_put_the_half_sent_connection_back(
    tmp_path: Path,
) -> None:
    async with early_answer_upstream() as up, serve(tmp_path, {"db": up.url}) as gateway:
        await warm(gateway, up)
        client = await gateway.connect()
        client.send(request_bytes("POST", "/upload", body=b"x" * MIB)[: -MIB + 1000])
        early = await client.response()
        client.send(b"x" * (MIB - 1000))  # the rest of the body, which nobody wants now
        after = await gateway.request("/after", timeout=5.0)
        for _ in range(100):
            if up.closed[0]:
                break
            await asyncio.sleep(0.01)
    assert early.status == 200 and early.body == b"early"
    assert after.status == 200 and after.body == b"ok"
    # The GET went on a new connection, and the half-sent one was closed, not pooled.
    assert up.heads[0] == [b"GET /warm HTTP/1.1", b"POST /upload HTTP/1.1"]
    assert up.heads[1] == [b"GET /after HTTP/1.1"]
    assert up.closed[0]


async def test_a_client_leaving_mid_body_resets_the_pooled_connection(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as up, serve(tmp_path, {"db": up.url}) as gateway:
        await warm(gateway, up)
        client = await gateway.connect()
        client.send(request_bytes("POST", "/upload", body=b"x" * MIB)[: -MIB + 5000])
        await up.wait_for(lambda: gateway.running.listener.in_flight == 1)  # handed off
        client.reset()
        await up.wait_for(lambda: up.connections[0].closed_at is not None)
        after = await gateway.request("/after")
    assert after.status == 200
    warm_up, cut, last = up.requests
    assert not cut.is_complete  # the upstream never saw a complete request
    assert last.connection != warm_up.connection
    assert last.target == b"/after"


async def test_a_body_over_the_limit_is_413_and_the_connection_is_not_reused(
    tmp_path: Path,
) -> None:
    limits = {"max_body_bytes": 100_000}
    async with (
        RecordingUpstream.start(echo()) as up,
        serve(tmp_path, {"db": up.url}, limits=limits) as gateway,
    ):
        await warm(gateway, up)
        client = await gateway.connect()
        # Chunked, so the limit is found mid-body, after the head went upstream.
        client.send(request_bytes("POST", "/big", headers=[("Transfer-Encoding", "chunked")]))
        client.send(b"%x\r\n%b\r\n" % (60_000, b"y" * 60_000) * 2)
        refused = await client.response()
        await up.wait_for(lambda: up.connections[0].closed_at is not None)
        after = await gateway.request("/after")
    assert refused.status == 413
    assert "100000" in error_fields(refused)["message"]
    assert after.status == 200
    warm_up, cut, last = up.requests
    assert not cut.is_complete
    assert last.connection != warm_up.connection and last.target == b"/after"


async def test_the_head_goes_upstream_before_any_body_byte(tmp_path: Path) -> None:
    # The head is held back to share a write with the first body bytes, but never waits
    # for them: an upstream that answers on the head alone must see it.
    async with early_answer_upstream() as up, serve(tmp_path, {"db": up.url}) as gateway:
        await warm(gateway, up)
        client = await gateway.connect()
        client.send(request_bytes("POST", "/upload", body=b"x" * MIB)[:-MIB])  # head only
        early = await client.response(timeout=5.0)
    assert early.status == 200 and early.body == b"early"
    assert up.heads[0] == [b"GET /warm HTTP/1.1", b"POST /upload HTTP/1.1"]
