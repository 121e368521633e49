"""X-Request-Id: kept when the client sends a valid one, made otherwise; the worker gets it,
the client gets it back, and W3C ``traceparent`` passes untouched."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from dispatcher.server.protocol import ServerState
from dispatcher.settings import Limits
from dispatcher.testing import run_dispatcher
from dispatcher.types import Receive, Scope, Send
from tests.forwarding.conftest import Gateway, serve
from tests.forwarding.upstreams import RecordingUpstream, echo, reply

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_an_id_is_made_passed_to_the_upstream_and_returned(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        first = await gateway.request("/", host="db.do", headers=[("traceparent", TRACEPARENT)])
        second = await gateway.request("/", host="db.do")
    made = first.header("x-request-id")
    assert made is not None and len(made) == 20
    assert second.header("x-request-id") not in (None, made)
    assert first.values("x-request-id") == [made]
    seen = db.requests[0]
    assert seen.values("x-request-id") == [made.encode()]
    assert seen.values("traceparent") == [TRACEPARENT.encode()]


async def test_made_ids_are_the_prefix_then_the_count_in_hex() -> None:
    """Over blocks of 256 (the last two digits come from a table, the rest are formatted
    once a block): each id is the process's prefix and the count, ten hex digits."""
    state = ServerState(asyncio.get_running_loop(), Limits(), object())  # type: ignore[arg-type]
    made = [state.new_request_id() for _ in range(70_000)]
    prefix = made[0][:10]
    assert re.fullmatch(rb"[0-9a-f]{10}", prefix)
    assert made == [b"%s%010x" % (prefix, count) for count in range(1, 70_001)]


async def test_a_clients_id_is_kept(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        response = await gateway.request(
            "/", host="db.do", headers=[("X-Request-Id", "req-42:abc/DEF=")]
        )
    assert response.header("x-request-id") == "req-42:abc/DEF="
    assert db.requests[0].values("x-request-id") == [b"req-42:abc/DEF="]


@pytest.mark.parametrize(
    "sent",
    [
        "a" * 201,  # too long for a log line
        "two words",
        "caf\xe9",
    ],
    ids=["too-long", "space", "not-ascii"],
)
async def test_an_unfit_id_is_replaced(tmp_path: Path, sent: str) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        response = await gateway.request("/", host="db.do", headers=[("X-Request-Id", sent)])
    made = response.header("x-request-id")
    assert made is not None and made != sent and len(made) == 20
    assert db.requests[0].values("x-request-id") == [made.encode()]


async def test_a_second_id_is_dropped(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        response = await gateway.request(
            "/", host="db.do", headers=[("X-Request-Id", "first"), ("X-Request-Id", "second")]
        )
    assert response.values("x-request-id") == ["first"]
    assert db.requests[0].values("x-request-id") == [b"first"]


async def test_the_dispatchers_own_errors_carry_the_id(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        response = await gateway.request("/", host="x.example", headers=[("X-Request-Id", "r1")])
    assert response.status == 404
    assert response.header("x-request-id") == "r1"


async def test_an_upstreams_own_id_header_is_not_doubled(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(reply(200, [("X-Request-Id", "upstream")], b"ok")) as db,
        serve(tmp_path, {"db": db.url}) as gateway,
    ):
        response = await gateway.request("/", host="db.do")
    assert response.values("x-request-id") == ["upstream"]


async def test_an_in_process_worker_gets_the_id_in_its_scope() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with run_dispatcher(workers={"db": app}, environ={}) as running:
        response = await Gateway(running).request("/", host="db.do")
    made = response.header("x-request-id")
    assert made is not None
    assert (b"x-request-id", made.encode()) in seen[0]
