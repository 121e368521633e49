"""Upstream faults through a real dispatcher: refused, slow and black-holed upstreams, answers
cut or malformed, bodies over the limit, clients that go away, retries and passive health,
stale pooled connections, and the file descriptors all of that must give back.

Each error asserts the status and the whole JSON body, and that the next request to the same
upstream succeeds (a failure never poisons the pool).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from .conftest import (
    Client,
    Gateway,
    Response,
    error_fields,
    read_head,
    request_bytes,
    serve,
)
from .upstreams import (
    Handler,
    Peer,
    RecordingUpstream,
    Then,
    UpstreamRequest,
    by_path,
    chunk,
    close_without_answer,
    echo,
    echo_response,
    raw,
    refusing_socket,
    response_head,
    stall,
    trickle_until_closed,
)

SWEEP: Final = 0.5
"""The hub checks upstream deadlines every 0.5 s against a clock up to 0.5 s stale."""


def bad_gateway(message: str) -> dict[str, Any]:
    return {"error": "Bad gateway", "message": message, "code": "bad_gateway"}


def gateway_timeout(message: str) -> dict[str, Any]:
    return {"error": "Gateway timeout", "message": message, "code": "gateway_timeout"}


@contextmanager
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: every connect is refused."""
    sock = refusing_socket()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def full_backlog() -> Iterator[str]:
    """A listening socket whose accept queue is full: new connects hang (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    held = []
    try:
        for _ in range(3):
            client = socket.socket()
            client.setblocking(False)
            try:
                client.connect(address)
            except BlockingIOError:
                pass
            held.append(client)
        time.sleep(0.05)
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for client in held:
            client.close()
        server.close()


async def assert_next_request_succeeds(gateway: Gateway, up: RecordingUpstream) -> None:
    """The worker still answers: a failure did not poison the pool."""
    response = await gateway.request("/next", method="POST", body=b"after")
    assert response.status == 200, response.body
    assert response.json()["target"] == "/next"
    assert up.requests[-1].body == b"after"


# --- Refused, unreachable, timeouts ---


async def test_a_refused_upstream_is_a_502_at_once(tmp_path: Path) -> None:
    with refused_url() as url:
        async with serve(tmp_path, {"db": url}) as gateway:
            started = time.monotonic()
            response = await gateway.request("/refused")
            elapsed = time.monotonic() - started
    assert response.status == 502
    assert error_fields(response) == bad_gateway(
        f"upstream {url} is unreachable: Connection refused"
    )
    assert elapsed < 1.0


async def test_a_missing_unix_socket_is_a_502(tmp_path: Path) -> None:
    url = "http+unix://%2Ftmp%2Fno-such-dir-for-dispatcher%2Fup.sock"
    async with serve(tmp_path, {"db": url}) as gateway:
        response = await gateway.request("/unix")
    assert response.status == 502
    assert error_fields(response) == bad_gateway(
        f"upstream {url} is unreachable: No such file or directory"
    )


async def test_an_upstream_that_never_answers_is_a_504_at_the_header_timeout(
    tmp_path: Path,
) -> None:
    async with (
        RecordingUpstream.start(by_path({"stall": stall()})) as up,
        serve(tmp_path, {"db": up.url}, proxy={"response_header_timeout": 1.0}) as gateway,
    ):
        started = time.monotonic()
        response = await gateway.request("/stall")
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert error_fields(response) == gateway_timeout(
            f"upstream {up.url} did not answer within 1 s"
        )
        assert 1.0 - 0.05 <= elapsed < 1.0 + 2 * SWEEP + 0.2
        # That connection is closed, not pooled.
        await up.wait_for(lambda: up.connections[0].closed_at is not None, timeout=1)
        assert up.connections[0].saw_eof
        await assert_next_request_succeeds(gateway, up)
    assert up.accepted == 2


async def test_an_upstream_deadline_is_never_early_whatever_the_phase_of_the_sweep(
    tmp_path: Path,
) -> None:
    """Regression: the header timeout was armed from the sweep's clock, up to a sweep old, so
    a request sent late in a sweep got its 504 up to half a second early. Requests sent 0.1 s
    apart cover every phase of the 0.5 s sweep; each waits the whole timeout."""
    async with (
        RecordingUpstream.start(by_path({"stall": stall()})) as up,
        serve(tmp_path, {"db": up.url}, proxy={"response_header_timeout": 1.0}) as gateway,
    ):

        async def stalled_request() -> float:
            started = time.monotonic()
            response = await gateway.request("/stall")
            assert response.status == 504
            return time.monotonic() - started

        requests = []
        for _ in range(6):
            requests.append(asyncio.create_task(stalled_request()))
            await asyncio.sleep(0.1)
        for elapsed in await asyncio.gather(*requests):
            assert 1.0 - 0.05 <= elapsed < 1.0 + 2 * SWEEP + 0.2, elapsed


async def test_a_black_holed_connect_is_a_504_at_the_connect_timeout(tmp_path: Path) -> None:
    with full_backlog() as url:
        async with serve(tmp_path, {"db": url}, proxy={"connect_timeout": 0.5}) as gateway:
            started = time.monotonic()
            response = await gateway.request("/syn")
            elapsed = time.monotonic() - started
    assert response.status == 504
    assert error_fields(response) == gateway_timeout(
        f"upstream {url} did not accept a connection within 0.5 s"
    )
    assert 0.45 <= elapsed < 1.5


async def test_an_upstream_stalling_mid_body_is_cut_at_the_stream_idle_timeout(
    tmp_path: Path,
) -> None:
    head = response_head(200, [("Content-Length", "100")])
    async with (
        RecordingUpstream.start(by_path({"slow": raw(head + b"x" * 10, then="stall")})) as up,
        serve(tmp_path, {"db": up.url}, proxy={"stream_idle_timeout": 1.0}) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("GET", "/slow"))
        started = time.monotonic()
        received = await client.read_until_closed(timeout=5)
        elapsed = time.monotonic() - started
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert received.endswith(b"\r\n\r\n" + b"x" * 10)  # 10 of 100 bytes, then the cut
        assert 1.0 - 0.05 <= elapsed < 1.0 + 2 * SWEEP + 0.2
        await up.wait_for(lambda: up.connections[0].closed_at is not None, timeout=1)
        await assert_next_request_succeeds(gateway, up)


async def test_max_connections_busy_is_a_503_after_the_connect_timeout(tmp_path: Path) -> None:
    proxy = {"max_connections": 1, "connect_timeout": 0.5, "response_header_timeout": 5.0}
    async with (
        RecordingUpstream.start(by_path({"stall": stall()})) as up,
        serve(tmp_path, {"db": up.url}, proxy=proxy) as gateway,
    ):
        holder = await gateway.connect()
        holder.send(request_bytes("GET", "/stall"))
        await up.wait_requests(1)
        started = time.monotonic()
        response = await gateway.request("/waits")
        elapsed = time.monotonic() - started
        holder.reset()
        await up.wait_for(lambda: up.open_connections == 0, timeout=2)
        await assert_next_request_succeeds(gateway, up)
    assert response.status == 503
    assert error_fields(response) == {
        "error": "Service unavailable",
        "message": f"upstream {up.url} has 1 connections busy",
        "code": "upstream_overloaded",
    }
    assert 0.45 <= elapsed < 1.5


# --- Answers cut short ---


def assert_cut(head: Response, body: bytes) -> None:
    """The body after ``head`` ended with the connection and is visibly incomplete."""
    length = head.header("content-length")
    if length is not None:
        assert len(body) < int(length)
    else:
        assert head.header("transfer-encoding") == "chunked", head.raw_head
        assert not body.endswith(b"0\r\n\r\n")  # never the last chunk of a complete body


CUTS: Final = [
    pytest.param(
        response_head(200, [("Content-Length", "100")]) + b"x" * 10, "close", id="length-fin"
    ),
    pytest.param(
        response_head(200, [("Content-Length", "100")]) + b"x" * 10, "reset", id="length-rst"
    ),
    pytest.param(
        response_head(200, [("Transfer-Encoding", "chunked")]) + chunk(b"partial"),
        "close",
        id="chunked-fin",
    ),
    pytest.param(
        response_head(200, [("Transfer-Encoding", "chunked")]) + chunk(b"partial"),
        "reset",
        id="chunked-rst",
    ),
    pytest.param(
        response_head(200, [("Transfer-Encoding", "chunked")]) + b"10\r\nonly-half",
        "close",
        id="chunked-mid-chunk",
    ),
]


@pytest.mark.parametrize(("answer", "then"), CUTS)
async def test_an_upstream_closing_mid_response_aborts_the_client_connection(
    tmp_path: Path, answer: bytes, then: Then
) -> None:
    async with (
        RecordingUpstream.start(by_path({"cut": raw(answer, then=then)})) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("GET", "/cut"))
        head = await read_head(client.reader)
        assert head.status == 200
        assert_cut(head, await client.read_until_closed())
        await assert_next_request_succeeds(gateway, up)


# --- Malformed answers ---


MALFORMED: Final = [
    pytest.param(b"garbage\r\n\r\n", id="garbage-status-line"),
    pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok", id="non-numeric-status"),
    pytest.param(b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\nok", id="bad-version"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-No-Colon\r\nContent-Length: 2\r\n\r\nok", id="header-without-colon"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 2\r\n\r\nok", id="bare-cr-in-value"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok", id="nul-in-value"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", id="obs-fold"
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok", id="length-not-digits"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        id="two-lengths",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        id="length-and-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        id="bad-chunk-size",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        id="chunk-without-crlf",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", id="length-lies-then-stays"
    ),
]


@pytest.mark.parametrize("answer", MALFORMED)
async def test_a_malformed_answer_is_a_502_or_an_abort_and_the_pool_stays_clean(
    tmp_path: Path, answer: bytes
) -> None:
    async with (
        RecordingUpstream.start(by_path({"bad": raw(answer, then="keep")})) as up,
        serve(
            tmp_path,
            {"db": up.url},
            proxy={"response_header_timeout": 1.0, "stream_idle_timeout": 1.0},
        ) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("GET", "/bad"))
        try:
            head = await read_head(client.reader)
        except asyncio.IncompleteReadError as cut:
            assert cut.partial == b""  # aborted before the head went out: nothing at all
        else:
            if head.status == 502:
                body = await client.reader.readexactly(int(head.header("content-length") or 0))
                fields = json.loads(body)
                assert fields["error"] == "Bad gateway"
                assert fields["code"] == "bad_gateway"
                assert fields["message"].startswith(f"upstream {up.url} sent a malformed response")
            else:  # the head had gone out: the body is cut
                assert head.status == 200, head.raw_head
                assert_cut(head, await client.read_until_closed())
        # The upstream connection that carried it is closed, never pooled.
        await up.wait_for(lambda: up.connections[0].closed_at is not None, timeout=2)
        await assert_next_request_succeeds(gateway, up)
    assert up.requests[-1].connection != 0


MALFORMED_502: Final = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (256 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok",
        id="oversized-header",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: v\r\n" % n for n in range(2000))
        + b"Content-Length: 2\r\n\r\nok",
        id="too-many-headers",
    ),
    pytest.param(
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
        id="chunked-204",
    ),
]


@pytest.mark.parametrize("answer", MALFORMED_502)
async def test_an_unacceptable_head_is_a_502(tmp_path: Path, answer: bytes) -> None:
    async with (
        RecordingUpstream.start(by_path({"bad": raw(answer, then="keep")})) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/bad")
        assert response.status == 502, response.raw_head[:200]
        assert error_fields(response)["error"] == "Bad gateway"
        await assert_next_request_succeeds(gateway, up)


def then_unsolicited(extra: bytes, delay: float) -> Handler:
    """Answer with an echo, then send ``extra``, an answer nobody asked for: ``delay`` later,
    or at once in the same write (so it arrives in the same read as the answer)."""

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        if not delay:
            await peer.send(echo_response(request) + extra)
            return
        await peer.send(echo_response(request))
        await asyncio.sleep(delay)
        await peer.send(extra)

    return handle


UNSOLICITED: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("extra", "delay"),
    [
        pytest.param(UNSOLICITED, 0.1, id="whole-answer-later"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", 0.1, id="head-later"),
        pytest.param(b"garbage", 0.1, id="garbage-later"),
        pytest.param(
            UNSOLICITED,
            0,
            id="whole-answer-with-the-response",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n",
            0,
            id="head-with-the-response",
        ),
    ],
)
async def test_bytes_from_an_idle_pooled_connection_never_answer_the_next_request(
    tmp_path: Path, extra: bytes, delay: float
) -> None:
    handler = by_path({"first": then_unsolicited(extra, delay)})
    async with (
        RecordingUpstream.start(handler) as up,
        serve(tmp_path, {"db": up.url}, proxy={"response_header_timeout": 1.0}) as gateway,
    ):
        first = await gateway.request("/first")
        assert first.status == 200
        assert first.json()["target"] == "/first"
        await asyncio.sleep(0.3)
        await assert_next_request_succeeds(gateway, up)
        assert up.connections[0].closed_at is not None  # the connection was dropped
    assert up.requests[-1].connection == 1


# --- Bodies over the limit ---


LIMIT: Final = {"max_body_bytes": 1024}
TOO_LARGE: Final = {
    "error": "Payload too large",
    "message": "request body is larger than 1024 bytes",
    "code": "payload_too_large",
}


@pytest.mark.parametrize("headers", [[], [("Expect", "100-continue")]], ids=["plain", "expect-100"])
async def test_a_body_over_the_limit_is_a_413_before_any_byte_goes_upstream(
    tmp_path: Path, headers: list[tuple[str, str]]
) -> None:
    async with (
        RecordingUpstream.start() as up,
        serve(tmp_path, {"db": up.url}, limits=LIMIT) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("POST", "/big", headers=[*headers, ("Content-Length", "2048")]))
        if not headers:
            client.send(b"x" * 2048)
        response = await client.response()
        assert response.status == 413
        assert error_fields(response) == TOO_LARGE
        assert not response.raw_head.startswith(b"HTTP/1.1 100")
        await asyncio.sleep(0.1)
        assert up.accepted == 0
        assert up.requests == []


async def test_a_chunked_body_of_exactly_the_limit_passes(tmp_path: Path) -> None:
    body = b"".join(chunk(b"y" * 512) for _ in range(2)) + b"0\r\n\r\n"
    async with (
        RecordingUpstream.start() as up,
        serve(tmp_path, {"db": up.url}, limits=LIMIT) as gateway,
    ):
        client = await gateway.connect()
        client.send(
            request_bytes("POST", "/exact", headers=[("Transfer-Encoding", "chunked")]) + body
        )
        response = await client.response()
    assert response.status == 200
    assert up.requests[0].body == b"y" * 1024


async def test_a_chunked_body_passing_the_limit_never_completes_upstream(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start() as up,
        serve(tmp_path, {"db": up.url}, limits=LIMIT) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("POST", "/over", headers=[("Transfer-Encoding", "chunked")]))
        client.send(chunk(b"z" * 512) + chunk(b"z" * 512))
        await asyncio.sleep(0.2)
        client.send(chunk(b"z") + b"0\r\n\r\n")
        received = await client.read_until_closed()
        assert received == b"" or received.startswith(b"HTTP/1.1 413 "), received[:100]
        # The upstream saw no complete request, and its connection is not left hanging.
        await up.wait_for(lambda: up.open_connections == 0, timeout=1.0)
        assert all(not r.is_complete for r in up.requests)
        await assert_next_request_succeeds(gateway, up)


# --- Clients that go away ---


@pytest.mark.parametrize(
    ("phase", "how"),
    [
        ("waiting-for-head", "close"),
        ("waiting-for-head", "reset"),
        ("mid-body", "close"),
        ("mid-body", "reset"),
    ],
)
async def test_a_client_that_disconnects_cancels_the_upstream_request(
    tmp_path: Path, phase: str, how: str
) -> None:
    handler = by_path({"stall": stall(), "stream": trickle_until_closed(0.05)})
    async with (
        RecordingUpstream.start(handler) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        if phase == "waiting-for-head":
            client.send(request_bytes("GET", "/stall"))
            await up.wait_requests(1)
        else:
            client.send(request_bytes("GET", "/stream"))
            head = await read_head(client.reader)
            assert head.status == 200
            await client.reader.readuntil(b"tick\n")
        left_at = time.monotonic()
        if how == "reset":
            client.reset()
        else:
            await client.aclose()
        await up.wait_for(lambda: up.connections[0].closed_at is not None, timeout=2)
        closed_at = up.connections[0].closed_at
        assert closed_at is not None
        assert closed_at - left_at < 1.0
        await assert_next_request_succeeds(gateway, up)


# --- Retries and passive health ---


@pytest.mark.parametrize(("method", "body"), [("POST", b"once only"), ("GET", b"")])
async def test_nothing_is_retried_once_the_request_was_sent(
    tmp_path: Path, method: str, body: bytes
) -> None:
    async with (
        RecordingUpstream.start(close_without_answer()) as closing,
        RecordingUpstream.start() as other,
        serve(tmp_path, {"db": [closing.url, other.url]}) as gateway,
    ):
        response = await gateway.request("/once", method=method, body=body)
    assert response.status == 502
    assert error_fields(response) == bad_gateway(
        f"upstream {closing.url} closed the connection before answering"
    )
    assert [r.body for r in closing.requests] == [body]
    assert other.requests == []
    assert other.accepted == 0


def stale_on_reuse() -> Handler:
    """Answer the first request of each connection; a second one finds it closed, as when
    the upstream's keep-alive timer fires just as the proxy reuses the connection."""
    inner = echo()

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        if peer.record.requests > 1:
            peer.close()
            return
        await inner(request, peer)

    return handle


async def test_an_idempotent_request_on_a_stale_connection_is_retried(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(stale_on_reuse()) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        for index in range(3):
            response = await gateway.request(f"/get/{index}")
            assert response.status == 200
            assert response.json()["target"] == f"/get/{index}"
    # Each reuse found the connection dead, and the request went again on a new one.
    assert [r.target for r in up.requests] == [
        b"/get/0",
        b"/get/1",
        b"/get/1",
        b"/get/2",
        b"/get/2",
    ]
    assert up.accepted == 3


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not twice", id="with-body"),
        pytest.param(
            b"",
            id="without-body",
        ),
    ],
)
async def test_a_post_on_a_stale_connection_is_a_502_never_a_duplicate(
    tmp_path: Path, body: bytes
) -> None:
    async with (
        RecordingUpstream.start(stale_on_reuse()) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        assert (await gateway.request("/warm")).status == 200
        response = await gateway.request("/post", method="POST", body=body)
    assert [r.target for r in up.requests] == [b"/warm", b"/post"]
    assert response.status == 502
    assert error_fields(response) == bad_gateway(
        f"upstream {up.url} closed the connection before answering"
    )


def close_after_answer() -> Handler:
    """Answer with keep-alive framing, then close the connection without saying so."""
    inner = echo()

    async def handle(request: UpstreamRequest, peer: Peer) -> None:
        await inner(request, peer)
        await peer.drain()
        peer.close()

    return handle


async def test_an_upstream_closing_after_each_answer_is_never_an_error_for_get(
    tmp_path: Path,
) -> None:
    async with (
        RecordingUpstream.start(close_after_answer()) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        for index in range(20):
            response = await client.request(f"/c/{index}")
            assert response.status == 200
    assert [r.target for r in up.requests][-1] == b"/c/19"
    assert len({r.target for r in up.requests}) == 20


# --- Leaks ---


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle_fds(baseline: int, timeout: float) -> float:
    """Wait until this process's fd count is back to ``baseline``; returns the time taken."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while open_fds() > baseline:
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def abort_mid_response(gateway: Gateway, target: str) -> None:
    client = await gateway.connect()
    client.send(request_bytes("GET", target))
    if target == "/stream":
        await read_head(client.reader)
        await client.reader.readuntil(b"tick\n")
    else:
        await asyncio.sleep(0.05)
    client.reset()
    gateway.clients.remove(client)


async def test_no_socket_leaks_after_errors_and_aborted_requests(tmp_path: Path) -> None:
    handler = by_path(
        {
            "stall": stall(),
            "stream": trickle_until_closed(0.05),
            "garbage": raw(b"garbage\r\n\r\n", then="keep"),
            "cut": raw(response_head(200, [("Content-Length", "9")]) + b"abc", then="reset"),
            "vanish": close_without_answer(),
        }
    )
    proxy = {"response_header_timeout": 1.0, "pool_idle_timeout": 0.5}
    with refused_url() as refused:
        async with (
            RecordingUpstream.start(handler) as up,
            serve(tmp_path, {"db": up.url, "auth": refused}, proxy=proxy) as gateway,
        ):
            assert (await gateway.request("/warm")).status == 200
            await up.wait_for(lambda: up.open_connections == 0, timeout=3)
            baseline = open_fds()
            for _ in range(2):
                outcomes = await asyncio.gather(
                    *(gateway.request("/x", host="auth.do") for _ in range(5)),
                    *(gateway.request(f"/{name}") for name in ("stall", "garbage", "vanish")),
                    *(gateway.request("/ok", method="POST", body=b"b") for _ in range(3)),
                    abort_mid_response(gateway, "/stream"),
                    abort_mid_response(gateway, "/stall"),
                    return_exceptions=True,
                )
                statuses = [getattr(o, "status", None) for o in outcomes]
                assert statuses[:11] == [502] * 5 + [504, 502, 502] + [200] * 3, outcomes
            took = await settle_fds(baseline, timeout=3.0)
            assert took < 1.0 + 2 * SWEEP
            await assert_next_request_succeeds(gateway, up)


async def test_a_cut_response_leaks_no_socket(tmp_path: Path) -> None:
    answer = response_head(200, [("Content-Length", "9")]) + b"abc"
    async with (
        RecordingUpstream.start(by_path({"cut": raw(answer, then="reset")})) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        assert (await gateway.request("/warm")).status == 200
        baseline = open_fds()
        for _ in range(5):
            client: Client = await gateway.connect()
            client.send(request_bytes("GET", "/cut"))
            assert (await client.read_until_closed()).startswith(b"HTTP/1.1 200 OK")
            await client.aclose()
            gateway.clients.remove(client)
        # The warm connection stays pooled (same count as the baseline); the cut ones are gone.
        await settle_fds(baseline, timeout=2.0)
        await assert_next_request_succeeds(gateway, up)
