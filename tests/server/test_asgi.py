"""In-process ASGI workers over real sockets: app failures before and after the response
starts, bad headers and lengths, the lifespan protocol, scope contents and disconnects."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Final

import pytest

from dispatcher.types import Receive, Scope, Send

from .conftest import App, Server, describe_scope, request_bytes, send_json, serve

ERROR_ID: Final = re.compile(r"Unexpected error while dispatching \(error id ([0-9a-f]{12})\)")


# --- App failures ---


@pytest.mark.parametrize("path", ["/raise-before", "/raise-after-start", "/return-none"])
async def test_app_failing_before_any_byte_is_500_with_an_error_id(
    server: Server, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await server.connect()
    response = await client.request(path)
    assert response.status == 500
    body = response.json()
    assert (body["error"], body["code"]) == ("Internal server error", "internal_error")
    match = ERROR_ID.fullmatch(body["message"])
    assert match is not None, body["message"]
    assert f"Dispatch error {match.group(1)}" in caplog.text
    # The same connection and the other routes keep working.
    assert (await client.request("/after", host="gateway.do")).status == 200
    await server.assert_serves()


@pytest.mark.parametrize(
    ("path", "framing"),
    [("/raise-mid-body", "transfer-encoding"), ("/raise-mid-body/length", "content-length")],
)
async def test_app_raising_mid_body_aborts_the_connection(
    server: Server, path: str, framing: str
) -> None:
    client = await server.connect()
    client.send(request_bytes("GET", path))
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await client.response()
    await server.assert_serves()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/wrong-length/5", id="shorter"),
        pytest.param("/wrong-length/15", id="longer"),
    ],
)
async def test_body_not_matching_its_content_length_aborts(server: Server, path: str) -> None:
    """Regression: a short body ended 'cleanly' on a kept-alive connection, so the client
    read the next response as the rest of this one; a long one overran the framing."""
    client = await server.connect()
    client.send(request_bytes("GET", path) + request_bytes("GET", "/next"))
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert b"content-length: 10\r\n" in head
    rest = await client.read_until_closed()
    assert len(rest) < 10
    assert b"HTTP/1.1" not in rest
    await server.assert_serves()


async def test_app_raising_after_its_response_keeps_the_connection(server: Server) -> None:
    """Regression: the abort meant for unfinished responses cut the kept-alive connection,
    and with it the pipelined request behind."""
    client = await server.connect()
    client.send(request_bytes("GET", "/raise-after-end") + request_bytes("GET", "/next"))
    first = await client.response()
    assert (first.status, first.body) == (200, b"done")
    assert (await client.response()).json()["path"] == "/next"


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("crlf", "header b'x-ok' has CR, LF or NUL in its value"),
        ("lf", "header b'x-ok' has CR, LF or NUL in its value"),
        ("nul", "header b'x-ok' has CR, LF or NUL in its value"),
        ("name", "invalid header name b'x bad'"),
        ("length", "invalid content-length b'abc'"),
    ],
)
async def test_bad_response_header_is_500_and_never_sent(
    server: Server, variant: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await server.connect()
    client.send(request_bytes("GET", f"/bad-header/{variant}"))
    response = await client.response()
    assert response.status == 500
    assert ERROR_ID.fullmatch(response.json()["message"])
    assert b"x-injected" not in response.raw_head + response.body
    assert b"x-ok" not in response.raw_head
    assert message in caplog.text
    await server.assert_serves()


# --- Lifespan ---


async def test_lifespan_runs_once_for_an_app_behind_two_workers(tmp_path: Path) -> None:
    """Regression: each worker name got its own lifespan, so startup ran twice."""
    app = App()
    async with serve(tmp_path, app, workers={"gateway": app, "db": app}) as server:
        assert app.lifespan == ["lifespan.startup"]
        assert (await server.exchange(request_bytes("GET", "/", host="gateway.do"))).status == 200
        assert (await server.exchange(request_bytes("GET", "/", host="db.do"))).status == 200
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]


async def test_lifespan_state_reaches_every_request(tmp_path: Path) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["pool"] = "ready"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scope["state"]["scribble"] = True  # a copy per request
        await send_json(send, sorted(scope["state"].items()))

    async with serve(tmp_path, workers={"gateway": app, "db": app}) as server:
        for host in ("gateway.do", "db.do", "db.do"):
            response = await server.exchange(request_bytes("GET", "/", host=host))
            assert response.json() == [["pool", "ready"], ["scribble", True]]
            assert (await server.exchange(request_bytes("GET", "/", host=host))).status == 200


async def test_app_without_lifespan_support_still_serves(tmp_path: Path) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("only http here")
        await send_json(send, {"path": scope["path"]})

    async with serve(tmp_path, workers={"db": app}) as server:
        response = await server.exchange(request_bytes("GET", "/plain"))
        assert (response.status, response.json()) == (200, {"path": "/plain"})


async def test_failed_startup_leaves_the_worker_broken_and_the_others_serving(
    tmp_path: Path,
) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        await receive()  # would wait forever for a shutdown: the host cancels it

    async with serve(tmp_path, workers={"db": failing, "gateway": App()}) as server:
        broken = await server.exchange(request_bytes("GET", "/", host="db.do"))
        assert broken.status == 500
        assert broken.json() == {
            "error": "Internal server error",
            "message": 'Worker "db" cannot be served: worker app dispatcher.testing:worker_db: '
            "startup failed: no database",
            "code": "internal_error",
        }
        assert (await server.exchange(request_bytes("GET", "/", host="gateway.do"))).status == 200


# --- Scope ---


async def test_scope_describes_the_request(server: Server) -> None:
    client = await server.connect()
    client.send(
        b"POST /api/db/a%20b/%C3%A9/%7Euser?q=1&q=%2F HTTP/1.1\r\n"
        b"Host: API.do\r\n"
        b"X-Dup: 1\r\n"
        b"X-Case: MiXeD\r\n"
        b"x-dup: 2\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
        b"abc"
    )
    response = await client.response()
    answer = response.json()
    local = client.writer.get_extra_info("sockname")
    assert answer == {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/db/a b/é/~user",
        "raw_path": "/api/db/a%20b/%C3%A9/~user",
        "query_string": "q=1&q=%2F",
        "root_path": "",
        "headers": [
            ["host", "API.do"],
            ["x-dup", "1"],
            ["x-case", "MiXeD"],
            ["x-dup", "2"],
            ["content-length", "3"],
            ["x-request-id", response.header("x-request-id")],
        ],
        "client": [local[0], local[1]],
        "server": ["127.0.0.1", server.port],
        "extensions": {
            "dispatcher": {
                "service": "db",
                "worker": "db",
                "environment": "development",
                "namespace": "dotdo-development",
            }
        },
        "complete": True,
        "length": 3,
        "chunks": 1,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }


async def test_scope_names_the_versioned_worker(tmp_path: Path) -> None:
    app = App()
    async with serve(tmp_path, app, workers={"gateway-v2": app}) as server:
        answer = (await server.exchange(request_bytes("GET", "/", host="v2.gateway.do"))).json()
    assert answer["extensions"]["dispatcher"] == {
        "service": "gateway",
        "worker": "gateway-v2",
        "environment": "development",
        "namespace": "dotdo-development",
    }


def test_describe_scope_matches_the_asgi_keys() -> None:
    """The helper the tests compare against reads the keys ASGI 3 defines, no more."""
    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": None,
        "server": None,
        "extensions": {},
    }
    assert set(describe_scope(scope)) == set(scope)


# --- Disconnects ---


async def test_disconnect_reaches_an_app_waiting_on_receive(server: Server) -> None:
    """Regression: with the body already read, a client that left was never reported."""
    client = await server.connect()
    client.send(request_bytes("GET", "/wait-disconnect"))
    await asyncio.wait_for(server.app.started.wait(), 5)
    await asyncio.sleep(0.05)
    await client.aclose()
    await asyncio.wait_for(server.app.disconnected.wait(), 2)
    assert server.app.received == ["http.request", "http.disconnect"]
    await server.assert_serves()


async def test_disconnect_mid_body_reaches_the_app(server: Server) -> None:
    client = await server.connect()
    client.send(request_bytes("POST", "/wait-disconnect", headers=[("Content-Length", "10")]))
    client.send(b"12345")
    await asyncio.wait_for(server.app.started.wait(), 5)
    await asyncio.sleep(0.05)
    await client.aclose()
    await asyncio.wait_for(server.app.disconnected.wait(), 2)
    assert server.app.received == ["http.request", "http.disconnect", "http.disconnect"]
    await server.assert_serves()


async def test_a_client_gone_is_not_logged_as_an_app_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An app that returns without answering after ``http.disconnect`` did nothing wrong."""
    client = await server.connect()
    client.send(request_bytes("GET", "/wait-disconnect"))
    await asyncio.wait_for(server.app.started.wait(), 5)
    await client.aclose()
    await asyncio.wait_for(server.app.disconnected.wait(), 2)
    await asyncio.sleep(0.05)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
