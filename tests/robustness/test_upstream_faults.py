"""Upstream faults (``shared/ROBUSTNESS.md`` items 40, 41, 43, 44 and 49) against a real
dispatcher, for what ``tests/forwarding/test_upstream_faults.py`` does not already prove (the
index, ``test_index.py``, names those tests).

* 40: a refused connect is answered without waiting on any timer; it is retried at most once,
  on another URL, for any method (nothing was sent); once a PATCH has gone upstream it is
  never sent again.
* 41: a black-holed connect is a 504 at the connect timeout, within 10 % (5 s by default).
* 43: a garbage status line, an invalid header, or an upstream that closes (or resets)
  before or in the middle of its head is exactly a 502, never an abort; that connection is
  discarded and the next request goes on a new one.
* 44: an upstream that closes mid-body after its 200 went out aborts the client connection
  and is logged as a cut response.
* 49: a client that disconnects while the upstream is slow has its upstream request
  cancelled within 1 s, and is logged (access log) and counted (metrics) as a 499.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest

from dispatcher.settings import Settings
from tests.forwarding.conftest import error_fields, read_head, request_bytes, serve
from tests.forwarding.test_upstream_faults import full_backlog
from tests.forwarding.upstreams import (
    RecordingUpstream,
    Then,
    by_path,
    close_without_answer,
    raw,
    refusing_socket,
    response_head,
    stall,
)
from tests.ops.conftest import scrape, value

from .conftest import assert_serves_next, running_stack, send_raw, wait_until

NO_TIMERS: Final = {"connect_timeout": 5.0, "response_header_timeout": 30.0}
"""Timeouts far longer than any answer below: none of them may be what answers."""
PROMPT: Final = 0.1
"""The checklist's bound for a 502 on a refused connect."""
SCHEDULING: Final = 0.25
"""What a loaded machine may add to a timed answer beyond the timer itself."""


@contextmanager
def refused_urls(count: int) -> Iterator[list[str]]:
    """Loopback URLs whose ports are bound but not listening: connects are refused."""
    sockets = [refusing_socket() for _ in range(count)]
    try:
        yield [f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def unreachable(url: str) -> dict[str, str]:
    return {
        "error": "Bad gateway",
        "message": f"upstream {url} is unreachable: Connection refused",
        "code": "bad_gateway",
    }


# --- 40. Refused connects ------------------------------------------------------------------


async def test_a_refused_connect_is_a_502_without_waiting_on_any_timer(tmp_path: Path) -> None:
    with refused_urls(1) as (url,):
        async with serve(tmp_path, {"db": url}, proxy=NO_TIMERS) as gateway:
            taken = []
            for _ in range(5):
                started = time.monotonic()
                response = await gateway.request("/refused")
                taken.append(time.monotonic() - started)
                assert response.status == 502
                assert error_fields(response) == unreachable(url)
    # The fastest of five shows what the dispatcher itself takes (the others may meet a
    # loaded machine); every one is far below the shortest timer.
    assert min(taken) <= PROMPT, taken
    assert max(taken) < 1.0, taken


@pytest.mark.parametrize(("method", "body"), [("GET", b""), ("POST", b"not sent"), ("PATCH", b"x")])
async def test_a_refused_connect_is_retried_at_most_once(
    tmp_path: Path, method: str, body: bytes
) -> None:
    """Three URLs, the first two refusing: the first request tries the first, retries once on
    the second, and gives up; the third (good) URL is not tried for it."""
    with refused_urls(2) as (first, second):
        async with (
            RecordingUpstream.start() as good,
            serve(
                tmp_path, {"db": [first, second, good.url]}, proxy={"fail_timeout": 30.0}
            ) as gateway,
        ):
            refused = await gateway.request("/once", method=method, body=body)
            assert good.accepted == 0
            # Both refusing URLs are now marked down: the next requests go to the good one.
            served = [await gateway.request(f"/next/{i}", method=method, body=body) for i in (1, 2)]
    assert refused.status == 502
    assert error_fields(refused) == unreachable(second)
    assert [r.status for r in served] == [200, 200]
    assert [(r.method, r.target, r.body) for r in good.requests] == [
        (method, b"/next/1", body),
        (method, b"/next/2", body),
    ]


async def test_a_patch_that_reached_the_upstream_is_never_sent_again(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(close_without_answer()) as closing,
        RecordingUpstream.start() as other,
        serve(tmp_path, {"db": [closing.url, other.url]}) as gateway,
    ):
        response = await gateway.request("/patch", method="PATCH", body=b"once only")
    assert response.status == 502
    assert error_fields(response) == {
        "error": "Bad gateway",
        "message": f"upstream {closing.url} closed the connection before answering",
        "code": "bad_gateway",
    }
    assert [(r.method, r.body) for r in closing.requests] == [("PATCH", b"once only")]
    assert other.accepted == 0


# --- 41. A black-holed connect ------------------------------------------------------------


async def test_a_black_holed_connect_is_a_504_at_the_connect_timeout_within_10_percent(
    tmp_path: Path,
) -> None:
    assert Settings.load(None, {}).proxy.connect_timeout == 5.0  # the checklist's default
    with full_backlog() as url:
        async with serve(tmp_path, {"db": url}, proxy={"connect_timeout": 1.0}) as gateway:
            started = time.monotonic()
            response = await gateway.request("/syn")
            took = time.monotonic() - started
    assert response.status == 504
    assert error_fields(response) == {
        "error": "Gateway timeout",
        "message": f"upstream {url} did not accept a connection within 1 s",
        "code": "gateway_timeout",
    }
    # 1 s ± 10 %, plus what a loaded machine may add to the answer's way back.
    assert 0.9 <= took <= 1.1 + SCHEDULING, took


# --- 43. Garbage, invalid headers, a close before the head ---------------------------------

HEAD_FAULTS: Final = [
    pytest.param(b"garbage\r\n\r\n", "keep", "sent a malformed response", id="garbage-status-line"),
    pytest.param(
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        "sent a malformed response",
        id="status-not-digits",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-No-Colon\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        "sent a malformed response",
        id="header-without-colon",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX Bad: 1\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        "sent a malformed response",
        id="space-in-header-name",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        "sent a malformed response",
        id="nul-in-header-value",
    ),
    pytest.param(b"", "close", "closed the connection before answering", id="fin-before-any-byte"),
    pytest.param(b"", "reset", "closed the connection before answering", id="rst-before-any-byte"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Le",
        "close",
        "closed the connection in the middle of the response",
        id="fin-mid-head",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Le",
        "reset",
        "closed the connection in the middle of the response",
        id="rst-mid-head",
    ),
]


@pytest.mark.parametrize(("answer", "then", "problem"), HEAD_FAULTS)
async def test_an_upstream_head_that_never_comes_whole_is_exactly_a_502(
    tmp_path: Path, answer: bytes, then: Then, problem: str
) -> None:
    async with running_stack(tmp_path, by_path({"bad": raw(answer, then=then)})) as stack:
        _, response = await send_raw(stack.gateway, request_bytes("GET", "/bad"))
        assert response.status == 502, response.raw_head + response.body
        fields = error_fields(response)
        assert (fields["error"], fields["code"]) == ("Bad gateway", "bad_gateway")
        assert fields["message"].startswith(f"upstream {stack.db.url} {problem}"), fields
        db = stack.db
        await db.wait_for(lambda: db.connections[0].closed_at is not None, timeout=2)
        await assert_serves_next(stack)
        assert db.requests[-1].connection != 0  # the next one went on a new connection


# --- 44. A body cut after the 200 ----------------------------------------------------------

CUT_BODY: Final = response_head(200, [("Content-Length", "100")]) + b"x" * 10


@pytest.mark.parametrize("then", ["close", "reset"])
async def test_a_body_cut_after_the_200_aborts_the_client_and_is_logged(
    tmp_path: Path, then: Then, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dispatcher")
    async with running_stack(tmp_path, by_path({"cut": raw(CUT_BODY, then=then)})) as stack:
        client = await stack.gateway.connect()
        client.send(request_bytes("GET", "/cut"))
        head = await read_head(client.reader)
        assert head.status == 200
        rest = await client.read_until_closed()
        assert rest == b"x" * 10  # 10 of the 100 announced bytes, then the connection ends
        await assert_serves_next(stack)
    cut = [r for r in caplog.records if "upstream response cut" in r.getMessage()]
    assert [r.getMessage() for r in cut] == [
        f"upstream response cut: upstream {stack.db.url} closed the connection "
        "in the middle of the response"
    ]
    assert cut[0].levelno == logging.WARNING


# --- 49. A client that leaves while the upstream is slow -----------------------------------


async def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    """The access log's records, once ``count`` are there (it is written in batches)."""

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "dispatcher.access"]

    await wait_until(lambda: len(lines()) >= count, timeout=2.0)
    return lines()


@pytest.mark.parametrize(
    "leaving",
    [
        "close",
        "reset",
    ],
)
async def test_a_client_leaving_a_slow_upstream_cancels_it_and_is_a_499(
    tmp_path: Path, leaving: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.access")
    async with running_stack(tmp_path, by_path({"slow": stall()})) as stack:
        client = await stack.gateway.connect()
        client.send(request_bytes("GET", "/slow"))
        await stack.db.wait_requests(1)
        left_at = time.monotonic()
        if leaving == "reset":
            client.reset()
        else:
            await client.aclose()
        db = stack.db
        await db.wait_for(lambda: db.connections[0].closed_at is not None, timeout=2)
        closed_at = db.connections[0].closed_at
        assert closed_at is not None and closed_at - left_at <= 1.0  # cancelled, not timed out
        (line,) = await access_lines(caplog, 1)
        samples = await scrape(stack.gateway.running)
        await assert_serves_next(stack)
    assert (line.getMessage(), getattr(line, "outcome", None)) == (
        "GET db.do/slow 499",
        "client_closed",
    )
    counted = value(
        samples, "dispatcher_requests_total", environment="development", service="db",
        worker="db", outcome="client_closed", status_class="4xx",
    )  # fmt: skip
    assert counted == 1
