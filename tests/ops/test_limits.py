"""Limits that protect the process: in-flight requests and connections over their bound get
a fast 503 with Retry-After (health checks keep answering), and a client that stops reading
is cut at the send timeout, releasing what fed it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.forwarding.conftest import error_fields, request_bytes, serve
from tests.forwarding.upstreams import (
    Peer,
    RecordingUpstream,
    UpstreamRequest,
    echo,
    response_head,
    stall,
)

from .conftest import scrape, value, wait_until


async def test_a_request_over_the_in_flight_limit_is_a_fast_503(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(stall()) as slow,
        serve(tmp_path, {"db": slow.url}, limits={"max_in_flight": 2}) as gateway,
    ):
        holders = [await gateway.connect() for _ in range(2)]
        for holder in holders:
            holder.send(request_bytes("GET", "/", host="db.do"))
        await slow.wait_requests(2)

        refused = await gateway.request("/", host="db.do")
        health = await gateway.request("/health", host="localhost")
        samples = await scrape(gateway.running)

        for holder in holders:
            holder.reset()
        await wait_until(lambda: gateway.running.listener.in_flight == 0)
        assert len(slow.requests) == 2  # the refused request never reached the upstream
    assert refused.status == 503
    assert refused.header("retry-after") == "1"
    assert error_fields(refused) == {
        "error": "Service unavailable",
        "message": "too many requests in flight; retry shortly",
        "code": "overloaded",
    }
    assert health.status == 200
    overloaded = value(
        samples, "dispatcher_requests_total", environment="development", service="db",
        worker="db", outcome="overloaded", status_class="5xx",
    )  # fmt: skip
    assert overloaded == 1


async def test_a_connection_over_the_limit_is_answered_503_and_closed(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url}, limits={"max_connections": 2}) as gateway,
    ):
        kept = [await gateway.connect() for _ in range(2)]
        await wait_until(lambda: gateway.running.listener.connection_count == 2)
        extra = await gateway.connect()
        answer = await extra.read_until_closed()
        # The connections already open keep being served.
        kept[0].send(request_bytes("GET", "/", host="db.do"))
        assert (await kept[0].response()).status == 200
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nretry-after: 1\r\n" in answer
    assert answer.endswith(b'"message": "too many connections", "code": "overloaded"}')


async def test_a_client_that_stops_reading_is_cut_at_the_send_timeout(tmp_path: Path) -> None:
    sent = asyncio.Event()

    async def endless(request: UpstreamRequest, peer: Peer) -> None:
        peer.write(response_head(200, [("Transfer-Encoding", "chunked")]))
        block = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
        try:
            while True:
                await peer.send(block)  # waits while the dispatcher stops reading us
                sent.set()
        except (ConnectionError, OSError):
            return

    async with (
        RecordingUpstream.start(endless) as up,
        serve(tmp_path, {"db": up.url}, limits={"send_timeout": 1.0}) as gateway,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(request_bytes("GET", "/", host="db.do"))
        await sent.wait()
        # We never read: the dispatcher's buffer fills, it stops the upstream, then gives up.
        await wait_until(lambda: gateway.running.listener.connection_count == 0, timeout=10)
        await up.wait_for(lambda: up.open_connections == 0, timeout=10)
        writer.transport.abort()


async def test_a_body_trickled_below_the_minimum_rate_is_a_408(tmp_path: Path) -> None:
    """1 byte every 0.2 s never trips the 2 s idle timeout; the minimum rate stops it."""
    limits = {"body_min_rate": 100, "body_rate_grace": 0.5, "body_idle_timeout": 2.0}
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url}, limits=limits) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("POST", "/", host="db.do", headers=[("Content-Length", "100")]))
        answer = asyncio.ensure_future(client.response())
        for _ in range(40):
            if answer.done():
                break
            client.send(b"x")
            await asyncio.sleep(0.2)
        response = await answer
    assert response.status == 408
    assert error_fields(response)["message"] == "request body arrives slower than 100 bytes/s"


async def test_a_steady_body_above_the_minimum_rate_passes(tmp_path: Path) -> None:
    limits = {"body_min_rate": 100, "body_rate_grace": 0.5}
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url}, limits=limits) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("POST", "/", host="db.do", headers=[("Content-Length", "400")]))
        for _ in range(10):
            client.send(b"y" * 40)
            await asyncio.sleep(0.1)
        response = await client.response()
    assert response.status == 200


async def test_pipelined_requests_over_the_limit_are_refused_after_the_others(
    tmp_path: Path,
) -> None:
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url}, limits={"max_pipelined": 3}) as gateway,
    ):
        client = await gateway.connect()
        client.send(b"".join(request_bytes("GET", f"/{n}", host="db.do") for n in range(10)))
        statuses = [(await client.response()).status for _ in range(5)]
        rest = await client.read_until_closed()
    # One answered at once, three waiting their turn, then the refusal, then the close.
    assert statuses == [200, 200, 200, 200, 503]
    assert rest == b""
    assert [r.target for r in db.requests] == [b"/0", b"/1", b"/2", b"/3"]
