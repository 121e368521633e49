"""Upstream workers through a real dispatcher: what the upstream receives and what the client
gets back (fidelity, hop-by-hop, forwarded headers, bodiless answers), streaming both ways,
WebSocket passthrough, keep-alive pools, round-robin over several URLs, Unix sockets, nginx
as a real upstream, and worker URLs refused by the configuration.

Failures (refused, timeouts, malformed answers, retries, leaks) are in
``test_upstream_faults.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from dispatcher.cli import main
from dispatcher.errors import ConfigError
from dispatcher.settings import Settings
from dispatcher.testing import run_dispatcher

from .conftest import (
    Gateway,
    error_fields,
    read_chunks,
    read_head,
    request_bytes,
    require_nginx,
    serve,
    write_config,
)
from .upstreams import (
    Framing,
    NginxUpstream,
    Peer,
    RecordingUpstream,
    UpstreamRequest,
    body_blocks,
    body_digest,
    echo,
    generated,
    paced,
    raw,
    refusing_socket,
    reply,
    response_head,
    run_nginx,
    run_websocket_upstream,
    short_socket_dir,
)

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
PROXY_SET: Final = frozenset(
    {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
)
"""Request headers the dispatcher writes itself; the rest must pass as the client sent them."""


def end_to_end(request: UpstreamRequest) -> list[tuple[bytes, bytes]]:
    """The request's header lines minus those the proxy sets, names lower-cased."""
    return [(n.lower(), v) for n, v in request.headers if n.lower() not in PROXY_SET]


def request_line(request: UpstreamRequest) -> bytes:
    return request.raw_head.split(b"\r\n", 1)[0]


# --- Fidelity: the request ---


@pytest.mark.parametrize(
    "target",
    [
        "/a%20b/c?x=%2F&y=1;z",
        "/search?q=a+b&empty=&list=1&list=2&%7Etilde=~&caf%C3%A9=%E2%82%AC",
        "/path;matrix=1/x?",
        "/UPPER/Case/%C3%A9/%E2%82%AC",
        "/",
    ],
)
async def test_method_path_and_query_reach_the_upstream_byte_for_byte(
    tmp_path: Path, target: str
) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request(target)
    assert response.status == 200
    [seen] = up.requests
    assert request_line(seen) == f"GET {target} HTTP/1.1".encode()


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", b""),
        ("DELETE", b""),
        ("OPTIONS", b""),
        ("POST", b'{"name": "value"}'),
        ("PUT", b"\x00\x01binary\xff" * 100),
        ("PATCH", b"patch"),
        ("DELETE", b"delete with a body"),
    ],
)
async def test_methods_and_bodies_reach_the_upstream(
    tmp_path: Path, method: str, body: bytes
) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/m", method=method, body=body)
    assert response.status == 200
    [seen] = up.requests
    assert request_line(seen) == f"{method} /m HTTP/1.1".encode()
    assert seen.body == body
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
    if body:
        assert seen.values("content-length") == [str(len(body)).encode()]
    else:
        assert seen.values("content-length") == []
        assert seen.values("transfer-encoding") == []


async def test_end_to_end_headers_reach_the_upstream_in_order_with_repeats(tmp_path: Path) -> None:
    headers = [
        ("Cookie", "a=1"),
        ("X-Custom", "one"),
        ("Accept", "*/*"),
        ("Cookie", "b=2; c=3"),
        ("X-Custom", "two"),
        ("Authorization", "Bearer abc.def"),
        ("X-Empty", ""),
        ("Cookie", "d=4"),
        ("User-Agent", "test/1.0 (x; y)"),
        ("X-Latin", "caf\xe9"),
    ]
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/h", headers=headers)
    assert response.status == 200
    [seen] = up.requests
    expected = [(n.lower().encode(), v.encode("latin-1")) for n, v in headers]
    assert end_to_end(seen) == expected


async def test_a_chunked_request_body_is_streamed_to_the_upstream_intact(tmp_path: Path) -> None:
    parts = [b"first ", b"second " * 1000, b"third"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        client = await gateway.connect()
        client.send(
            request_bytes("POST", "/chunked", headers=[("Transfer-Encoding", "chunked")]) + body
        )
        response = await client.response()
    assert response.status == 200
    [seen] = up.requests
    assert seen.body == b"".join(parts)
    assert seen.values("transfer-encoding") == [b"chunked"]
    assert seen.values("content-length") == []


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/api/db/../db/x", b"/api/db/x"),
        ("/api/db/../db/x?q=%2F&r=1", b"/api/db/x?q=%2F&r=1"),
        ("/api/db/./x/./y", b"/api/db/x/y"),
        ("/api/other/../db/z", b"/api/db/z"),
        ("/api//db///x", b"/api/db/x"),
        ("/api/%64b/%7e%41?x=%7e", b"/api/db/~A?x=%7e"),
        ("/api/db/caf%c3%a9", b"/api/db/caf%C3%A9"),
    ],
)
async def test_a_non_canonical_path_reaches_the_upstream_canonical(
    tmp_path: Path, target: str, forwarded: bytes
) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request(target, host="api.do")
    assert response.status == 200
    [seen] = up.requests
    assert seen.target == forwarded


# --- Fidelity: the response ---


async def test_status_headers_with_repeats_and_body_reach_the_client(tmp_path: Path) -> None:
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Set-Cookie", "session=abc; Path=/; HttpOnly"),
        ("X-Multi", "one"),
        ("Set-Cookie", "theme=dark; Max-Age=3600"),
        ("Cache-Control", "no-store"),
        ("Set-Cookie", "lang=fr"),
        ("X-Multi", "two"),
        ("ETag", '"v1"'),
    ]
    body = b"created \xe2\x9c\x93\n" * 10
    async with (
        RecordingUpstream.start(reply(201, headers, body)) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/create", method="POST", body=b"x")
    assert response.status == 201
    assert response.raw_head.startswith(b"HTTP/1.1 201 Created\r\n")
    assert response.body == body
    own = (b"content-length", b"date", b"x-request-id")
    passed = [(n, v) for n, v in response.headers if n not in own]
    assert passed == [(n.lower().encode(), v.encode()) for n, v in headers]
    assert response.values("set-cookie") == [
        "session=abc; Path=/; HttpOnly",
        "theme=dark; Max-Age=3600",
        "lang=fr",
    ]
    assert response.values("content-length") == [str(len(body))]


async def test_a_close_delimited_response_reaches_the_client_whole(tmp_path: Path) -> None:
    """No Content-Length, no chunking: the body ends with the connection (RFC 9112 §6.3)."""
    body = b"delimited by the close\n" * 100
    answer = response_head(200, [("Content-Type", "text/plain")]) + body
    async with (
        RecordingUpstream.start(raw(answer, then="close")) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/close-delimited")
        assert response.status == 200
        assert response.body == body
        assert response.is_chunked  # re-framed for the client, ended by the last chunk
        assert len(up.requests) == 1


async def test_a_close_delimited_response_cut_by_a_reset_never_looks_complete(
    tmp_path: Path,
) -> None:
    answer = response_head(200, [("Content-Type", "text/plain")]) + b"partial"
    async with (
        RecordingUpstream.start(raw(answer, then="reset")) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("GET", "/reset"))
        received = await client.read_until_closed()
        assert len(up.requests) == 1
    if received.startswith(b"HTTP/1.1 200 "):
        assert b"transfer-encoding: chunked" in received.lower()
        assert not received.endswith(b"0\r\n\r\n")
    else:
        assert received == b"" or received.startswith(b"HTTP/1.1 502 "), received


@pytest.mark.parametrize("status", [200, 202, 299, 404, 418, 451, 500, 503, 599])
async def test_the_upstream_status_reaches_the_client(tmp_path: Path, status: int) -> None:
    async with (
        RecordingUpstream.start(reply(status, body=b"status", reason="Whatever")) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/s")
    assert response.status == status
    assert response.body == b"status"


# --- Hop-by-hop headers ---


@pytest.mark.parametrize(
    ("headers", "absent"),
    [
        (
            [("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("X-Kept", "yes")],
            [b"connection", b"x-secret"],
        ),
        (
            [
                ("Connection", "x-a"),
                ("Connection", "X-B"),
                ("X-A", "1"),
                ("X-B", "2"),
                ("X-Kept", "y"),
            ],
            [b"connection", b"x-a", b"x-b"],
        ),
        ([("Keep-Alive", "timeout=5, max=100"), ("X-Kept", "y")], [b"keep-alive"]),
        ([("Proxy-Connection", "keep-alive"), ("X-Kept", "y")], [b"proxy-connection"]),
        ([("TE", "gzip"), ("X-Kept", "y")], [b"te"]),
        ([("TE", "trailers, deflate"), ("X-Kept", "y")], [b"te"]),
        ([("Trailer", "X-Checksum"), ("X-Kept", "y")], [b"trailer"]),
        ([("Upgrade", "foo/1.0"), ("X-Kept", "y")], [b"upgrade"]),
        ([("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"), ("X-Kept", "y")], [b"http2-settings"]),
    ],
    ids=[
        "connection-named",
        "connection-repeated",
        "keep-alive",
        "proxy-connection",
        "te-gzip",
        "te-list",
        "trailer",
        "upgrade-foo",
        "http2-settings",
    ],
)
async def test_hop_by_hop_request_headers_do_not_reach_the_upstream(
    tmp_path: Path, headers: list[tuple[str, str]], absent: list[bytes]
) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/hop", headers=headers)
    assert response.status == 200
    [seen] = up.requests
    for name in absent:
        assert seen.values(name.decode()) == [], name
    assert seen.values("x-kept") != []


async def test_te_trailers_is_the_one_te_that_reaches_the_upstream(tmp_path: Path) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/te", headers=[("TE", "trailers")])
    assert response.status == 200
    assert up.requests[0].values("te") == [b"trailers"]


async def test_connection_cannot_remove_the_headers_the_proxy_owns(tmp_path: Path) -> None:
    headers = [("Connection", "X-Forwarded-For, Host, Content-Length, X-Forwarded-Proto")]
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/own", method="POST", headers=headers, body=b"hello")
    assert response.status == 200
    [seen] = up.requests
    assert seen.values("host") == [b"db.do"]
    assert seen.values("content-length") == [b"5"]
    assert seen.body == b"hello"
    assert seen.values("x-forwarded-for") == [b"127.0.0.1"]
    assert seen.values("x-forwarded-proto") == [b"http"]
    assert seen.values("connection") == []


async def test_h2c_upgrade_is_served_as_plain_http_and_never_forwarded(tmp_path: Path) -> None:
    headers = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ]
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        response = await gateway.request("/h2c", headers=headers)
    assert response.status == 200
    [seen] = up.requests
    for name in ("upgrade", "http2-settings", "connection"):
        assert seen.values(name) == [], name
    assert request_line(seen) == b"GET /h2c HTTP/1.1"


HOP_RESPONSE_HEADERS: Final = [
    ("Connection", "keep-alive, X-Up-Secret"),
    ("X-Up-Secret", "hidden"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("TE", "trailers"),
    ("X-Kept", "yes"),
]


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_hop_by_hop_response_headers_do_not_reach_the_client(
    tmp_path: Path, framing: Framing
) -> None:
    async with (
        RecordingUpstream.start(reply(200, HOP_RESPONSE_HEADERS, b"body", framing=framing)) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/hop")
    assert response.status == 200
    assert response.body == b"body"
    for name in ("connection", "x-up-secret", "keep-alive", "proxy-connection", "trailer"):
        assert response.values(name) == [], name
    assert response.values("upgrade") == []
    assert response.values("te") == []
    assert response.values("x-kept") == ["yes"]
    # The framing is the dispatcher's own: exactly one of the two, once.
    framing_headers = response.values("content-length") + response.values("transfer-encoding")
    assert framing_headers in (["4"], ["chunked"])


# --- Host and forwarded headers ---


@pytest.mark.parametrize(
    ("preserve_host", "client_host", "expected"),
    [
        (True, "db.do", "db.do"),
        (True, "DB.do:8787", "DB.do:8787"),
        (False, "db.do", "{authority}"),
    ],
)
async def test_host_is_preserved_unless_the_worker_asks_for_its_own(
    tmp_path: Path, preserve_host: bool, client_host: str, expected: str
) -> None:
    async with RecordingUpstream.start() as up:
        spec = {"url": up.url, "preserve_host": preserve_host}
        async with serve(tmp_path, {"db": spec}) as gateway:
            response = await gateway.request("/host", host=client_host)
    assert response.status == 200
    [seen] = up.requests
    host = expected.format(authority=f"127.0.0.1:{up.port}")
    assert seen.values("host") == [host.encode()]
    assert seen.values("x-forwarded-host") == [client_host.encode()]


CLIENT_FORWARDED: Final = [
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-For", "5.6.7.8"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("Forwarded", "for=1.2.3.4;proto=https"),
    ("X-Real-IP", "1.2.3.4"),
]


@pytest.mark.parametrize(
    ("proxy", "client_headers", "expected"),
    [
        pytest.param(
            {},
            [],
            {
                "x-forwarded-for": [b"127.0.0.1"],
                "x-forwarded-proto": [b"http"],
                "x-forwarded-host": [b"db.do"],
                "forwarded": [],
                "x-real-ip": [],
            },
            id="added",
        ),
        pytest.param(
            {},
            CLIENT_FORWARDED,
            {
                "x-forwarded-for": [b"127.0.0.1"],
                "x-forwarded-proto": [b"http"],
                "x-forwarded-host": [b"db.do"],
                "forwarded": [],
                "x-real-ip": [],
            },
            id="untrusted-client-replaced",
        ),
        pytest.param(
            {"trusted_proxies": ["10.0.0.0/8", "::1/128"]},
            CLIENT_FORWARDED,
            {
                "x-forwarded-for": [b"127.0.0.1"],
                "x-forwarded-proto": [b"http"],
                "x-forwarded-host": [b"db.do"],
                "forwarded": [],
                "x-real-ip": [],
            },
            id="other-networks-trusted-replaced",
        ),
        pytest.param(
            {"trusted_proxies": ["127.0.0.0/8"]},
            CLIENT_FORWARDED,
            {
                "x-forwarded-for": [b"1.2.3.4, 5.6.7.8, 127.0.0.1"],
                "x-forwarded-proto": [b"https"],
                "x-forwarded-host": [b"evil.example"],
                "forwarded": [b"for=1.2.3.4;proto=https"],
                "x-real-ip": [b"1.2.3.4"],
            },
            id="trusted-kept-and-appended",
        ),
        pytest.param(
            {"trusted_proxies": ["127.0.0.1"]},
            [],
            {
                "x-forwarded-for": [b"127.0.0.1"],
                "x-forwarded-proto": [b"http"],
                "x-forwarded-host": [b"db.do"],
            },
            id="trusted-without-headers",
        ),
        pytest.param(
            {"forwarded_headers": False},
            [],
            {
                "x-forwarded-for": [],
                "x-forwarded-proto": [],
                "x-forwarded-host": [],
                "forwarded": [],
                "x-real-ip": [],
            },
            id="off-adds-none",
        ),
    ],
)
async def test_forwarded_headers_follow_the_trust_policy(
    tmp_path: Path,
    proxy: dict[str, object],
    client_headers: list[tuple[str, str]],
    expected: dict[str, list[bytes]],
) -> None:
    async with (
        RecordingUpstream.start() as up,
        serve(tmp_path, {"db": up.url}, proxy=proxy) as gateway,
    ):
        response = await gateway.request("/fwd", headers=client_headers)
    assert response.status == 200
    [seen] = up.requests
    assert {name: seen.values(name) for name in expected} == expected


# --- Bodiless answers and streaming ---


@pytest.mark.parametrize(
    ("method", "status", "headers", "framing"),
    [
        ("HEAD", 200, [("Content-Type", "text/plain"), ("Content-Length", "50")], "none"),
        ("HEAD", 200, [("Content-Type", "text/plain")], "none"),
        ("GET", 204, [("X-Deleted", "yes")], "none"),
        ("DELETE", 204, [("X-Deleted", "yes")], "none"),
        ("GET", 304, [("ETag", '"v1"')], "none"),
        ("GET", 304, [("ETag", '"v1"'), ("Content-Length", "50")], "none"),
    ],
    ids=["head-length", "head-no-length", "204", "204-delete", "304", "304-length"],
)
async def test_head_204_and_304_carry_no_body_and_the_connection_goes_on(
    tmp_path: Path, method: str, status: int, headers: list[tuple[str, str]], framing: Framing
) -> None:
    async with (
        RecordingUpstream.start(reply(status, headers, framing=framing)) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        response = await client.request("/nobody", method=method)
        assert response.status == status
        if status == 204:
            assert response.values("content-length") == []
            assert response.values("transfer-encoding") == []
        for name, value in headers:
            assert response.values(name.lower()) == [value]
        # Nothing after the head: the next answer on this connection is read cleanly.
        up.handler = echo()
        following = await client.request("/next")
        assert following.status == 200
        assert following.json()["target"] == "/next"


async def test_sse_events_reach_the_client_as_the_upstream_flushes_them(tmp_path: Path) -> None:
    events = [b"id: %d\ndata: event %d\n\n" % (n, n) for n in range(6)]
    sent_at: list[float] = []
    async with (
        RecordingUpstream.start(paced(events, 0.1, sent_at=sent_at)) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        client = await gateway.connect()
        client.send(request_bytes("GET", "/events", headers=[("Accept", "text/event-stream")]))
        head = await read_head(client.reader)
        assert head.status == 200
        assert head.values("content-type") == ["text/event-stream"]
        assert head.values("transfer-encoding") == ["chunked"]
        received: list[bytes] = []
        arrived_at: list[float] = []
        async with asyncio.timeout(5):
            async for part in read_chunks(client.reader):
                received.append(part)
                arrived_at.append(time.monotonic())
    assert b"".join(received) == b"".join(events)
    assert len(received) == len(events)  # one chunk per flush: nothing was coalesced
    for index in range(len(events) - 1):
        assert arrived_at[index] < sent_at[index + 1], f"event {index} arrived after the next"


# --- WebSocket passthrough ---


@asynccontextmanager
async def websocket_client(gateway: Gateway, path: str) -> AsyncIterator[ClientConnection]:
    """A websockets client talking to the dispatcher with ``Host: db.do``."""
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    async with connect(f"ws://db.do{path}", sock=sock, max_size=4 * MIB) as websocket:
        yield websocket


async def test_websocket_messages_flow_both_ways(tmp_path: Path) -> None:
    binary = os.urandom(MIB)
    async with (
        run_websocket_upstream() as up,
        serve(tmp_path, {"db": up.url}) as gateway,
        websocket_client(gateway, "/chat?room=1") as websocket,
    ):
        await websocket.send("hello")
        assert await asyncio.wait_for(websocket.recv(), 5) == "hello"
        await websocket.send(binary)
        assert await asyncio.wait_for(websocket.recv(), 5) == binary
        pong = await websocket.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        for index in range(20):
            await websocket.send(f"message {index}")
        assert [await asyncio.wait_for(websocket.recv(), 5) for _ in range(20)] == [
            f"message {index}" for index in range(20)
        ]
        await websocket.close(1000, "done")
        await up_closed(up.closed)
    assert up.paths == ["/chat?room=1"]
    [upgrade] = up.requests
    assert upgrade["Upgrade"].lower() == "websocket"
    assert upgrade["Host"] == "db.do"
    assert upgrade["X-Forwarded-For"] == "127.0.0.1"
    assert up.closed == [(1000, "done")]


async def up_closed(closed: list[tuple[int | None, str | None]]) -> None:
    async with asyncio.timeout(5):
        while not closed:
            await asyncio.sleep(0.01)


async def test_a_close_code_from_the_upstream_reaches_the_client(tmp_path: Path) -> None:
    async with (
        run_websocket_upstream() as up,
        serve(tmp_path, {"db": up.url}) as gateway,
        websocket_client(gateway, "/close-4001") as websocket,
    ):
        await websocket.send("please close")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001
    assert closed.value.rcvd.reason == "bye from upstream"


WEBSOCKET_UPGRADE: Final = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


async def test_an_upstream_refusing_the_upgrade_reaches_the_client_as_is(tmp_path: Path) -> None:
    async with run_websocket_upstream() as up, serve(tmp_path, {"db": up.url}) as gateway:
        client = await gateway.connect()
        client.send(request_bytes("GET", "/forbidden", headers=WEBSOCKET_UPGRADE))
        response = await client.response()
        rest = await client.read_until_closed()
    assert response.status == 403
    assert response.body == b"no websocket for you\n"
    assert response.values("upgrade") == []
    assert rest == b""  # the connection closes: no byte after an upgrade request is HTTP


async def test_an_upgrade_answered_without_101_by_a_plain_upstream_is_plain_http(
    tmp_path: Path,
) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        client = await gateway.connect()
        client.send(request_bytes("GET", "/ws", headers=WEBSOCKET_UPGRADE))
        response = await client.response()
    assert response.status == 200
    [seen] = up.requests
    assert seen.values("upgrade") == [b"websocket"]
    assert [v.lower() for v in seen.values("connection")] == [b"upgrade"]
    assert seen.values("sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]


async def test_a_101_the_client_did_not_ask_for_is_a_bad_gateway(tmp_path: Path) -> None:
    switch = response_head(101, [("Connection", "Upgrade"), ("Upgrade", "websocket")])
    async with (
        RecordingUpstream.start(raw(switch, then="stall")) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/no-upgrade-asked")
    assert response.status == 502
    assert error_fields(response) == {
        "error": "Bad gateway",
        "message": f"upstream {up.url} switched protocols without being asked",
        "code": "bad_gateway",
    }
    assert len(up.requests) == 1


# --- Connections: keep-alive pool ---


@pytest.mark.parametrize("same_client", [True, False], ids=["one-client", "new-clients"])
async def test_keep_alive_connections_are_reused(tmp_path: Path, same_client: bool) -> None:
    async with RecordingUpstream.start() as up, serve(tmp_path, {"db": up.url}) as gateway:
        client = await gateway.connect()
        for index in range(10):
            if same_client:
                response = await client.request(f"/n/{index}")
            else:
                response = await gateway.request(f"/n/{index}", method="POST", body=b"b")
            assert response.status == 200
    assert len(up.requests) == 10
    assert up.accepted == 1


async def test_the_idle_pool_is_bounded_by_pool_max_idle(tmp_path: Path) -> None:
    burst = 6
    inner = echo()

    async def held(request: UpstreamRequest, peer: Peer) -> None:
        await up.wait_requests(burst)
        await inner(request, peer)

    async with (
        RecordingUpstream.start(held) as up,
        serve(tmp_path, {"db": up.url}, proxy={"pool_max_idle": 2}) as gateway,
    ):
        responses = await asyncio.gather(*(gateway.request(f"/b/{n}") for n in range(burst)))
        assert [r.status for r in responses] == [200] * burst
        assert up.accepted == burst
        await up.wait_for(lambda: up.open_connections == 2, timeout=2)
        up.handler = inner
        for index in range(4):
            assert (await gateway.request(f"/after/{index}")).status == 200
        assert up.accepted == burst  # the two idle ones served the rest
        assert up.open_connections == 2


async def test_idle_pooled_connections_are_closed_after_pool_idle_timeout(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start() as up,
        serve(tmp_path, {"db": up.url}, proxy={"pool_idle_timeout": 0.5}) as gateway,
    ):
        assert (await gateway.request("/a")).status == 200
        assert up.open_connections == 1
        await up.wait_for(lambda: up.open_connections == 0, timeout=2.5)
        assert up.connections[0].saw_eof
        assert (await gateway.request("/b")).status == 200
        assert up.accepted == 2


# --- Several URLs per worker ---


async def test_requests_go_round_robin_across_the_urls(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start() as first,
        RecordingUpstream.start() as second,
        serve(tmp_path, {"db": [first.url, second.url]}) as gateway,
    ):
        for index in range(20):
            assert (await gateway.request(f"/rr/{index}")).status == 200
    assert len(first.requests) == 10
    assert len(second.requests) == 10
    assert first.accepted == second.accepted == 1


@pytest.mark.parametrize(("method", "body"), [("GET", b""), ("POST", b"payload")])
async def test_a_refusing_url_is_skipped_and_the_request_retried_on_the_other(
    tmp_path: Path, method: str, body: bytes
) -> None:
    refusing = refusing_socket()
    refused_url = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    try:
        async with (
            RecordingUpstream.start() as good,
            serve(
                tmp_path, {"db": [refused_url, good.url]}, proxy={"fail_timeout": 2.0}
            ) as gateway,
        ):
            failed_at = time.monotonic()
            for index in range(6):
                response = await gateway.request(f"/s/{index}", method=method, body=body)
                assert response.status == 200, response.body
            assert [r.body for r in good.requests] == [body] * 6
            # The refusing upstream comes back at once, but stays skipped for fail_timeout.
            async with RecordingUpstream.start(sock=refusing) as revived:
                for index in range(4):
                    assert (await gateway.request(f"/t/{index}")).status == 200
                assert revived.requests == []
                assert time.monotonic() - failed_at < 1.4, "too slow to check the skip"
                await asyncio.sleep(max(0.0, failed_at + 2.6 - time.monotonic()))
                for index in range(4):
                    assert (await gateway.request(f"/u/{index}")).status == 200
                assert 1 <= len(revived.requests) <= 3  # back in the rotation
    finally:
        refusing.close()


# --- Unix sockets ---


@pytest.mark.parametrize(("preserve_host", "host"), [(True, b"db.do"), (False, b"localhost")])
async def test_a_unix_socket_upstream_is_reached(
    tmp_path: Path, preserve_host: bool, host: bytes
) -> None:
    directory = short_socket_dir()
    path = f"{directory}/up.sock"
    try:
        async with RecordingUpstream.start(unix_path=path) as up:
            assert up.url.startswith("http+unix://%2Ftmp%2Fdup-")
            spec = {"url": up.url, "preserve_host": preserve_host}
            async with serve(tmp_path, {"db": spec}) as gateway:
                for index in range(3):
                    response = await gateway.request(
                        f"/unix/{index}?q=1", method="POST", body=b"over unix"
                    )
                    assert response.status == 200
    finally:
        for name in os.listdir(directory):
            os.unlink(f"{directory}/{name}")
        os.rmdir(directory)
    assert [r.target for r in up.requests] == [b"/unix/0?q=1", b"/unix/1?q=1", b"/unix/2?q=1"]
    assert all(r.body == b"over unix" for r in up.requests)
    assert up.requests[0].values("host") == [host]
    assert up.accepted == 1


# --- nginx as the upstream ---


def nginx_fields(body: bytes) -> dict[str, str]:
    return dict(part.split("=", 1) for part in body.decode().split())


async def test_nginx_sees_the_request_as_sent(tmp_path: Path, nginx: NginxUpstream) -> None:
    async with serve(tmp_path, {"db": nginx.url}) as gateway:
        response = await gateway.request(
            "/echo?x=%2F&y=1;z", headers=[("X-Forwarded-For", "6.6.6.6"), ("TE", "trailers")]
        )
    assert response.status == 200, nginx.error_log()
    fields = nginx_fields(response.body)
    assert fields["method"] == "GET"
    assert fields["uri"] == "/echo?x=%2F&y=1;z"
    assert fields["host"] == "db.do"
    assert fields["xff"] == "127.0.0.1"
    assert fields["proto"] == "http"
    assert fields["fhost"] == "db.do"
    assert fields["te"] == "trailers"
    assert response.values("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.values("server")[0].startswith("nginx")


async def test_nginx_keeps_one_connection_for_sequential_requests(
    tmp_path: Path, nginx: NginxUpstream
) -> None:
    async with serve(tmp_path, {"db": nginx.url}) as gateway:
        bodies = [(await gateway.request("/echo")).body for _ in range(5)]
    fields = [nginx_fields(body) for body in bodies]
    assert len({f["conn"] for f in fields}) == 1
    assert [f["req"] for f in fields] == ["1", "2", "3", "4", "5"]


async def test_nginx_static_file_head_and_conditional_get(
    tmp_path: Path, nginx: NginxUpstream
) -> None:
    page = nginx.files["page.html"]
    async with serve(tmp_path, {"db": nginx.url}) as gateway:
        client = await gateway.connect()
        full = await client.request("/static/page.html")
        head = await client.request("/static/page.html", method="HEAD")
        etag = full.header("etag")
        assert etag is not None
        cached = await client.request("/static/page.html", headers=[("If-None-Match", etag)])
        missing = await client.request("/static/missing.html")
        teapot = await client.request("/teapot")
    assert (full.status, full.body, full.header("content-length")) == (200, page, str(len(page)))
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(page)))
    assert (cached.status, cached.body, cached.header("etag")) == (304, b"", etag)
    assert missing.status == 404
    assert b"404 Not Found" in missing.body
    assert teapot.status == 418


async def test_nginx_closing_idle_keep_alive_connections_is_not_an_error(tmp_path: Path) -> None:
    require_nginx()
    root = tmp_path / "nginx"
    root.mkdir()
    async with (
        run_nginx(root, keepalive_timeout="300ms") as nginx,
        serve(tmp_path, {"db": nginx.url}) as gateway,
    ):
        for method in ("GET", "POST", "GET"):
            response = await gateway.request(
                "/echo", method=method, body=b"x" if method == "POST" else b""
            )
            assert response.status == 200, (response.body, nginx.error_log())
            await asyncio.sleep(0.6)  # nginx has closed the pooled connection meanwhile
        last = nginx_fields((await gateway.request("/echo")).body)
    assert last["req"] == "1"  # a fresh connection: the idle one was seen closing


# --- Streaming a gibibyte each way (dispatcher in a subprocess, RSS sampled) ---


class RssSampler:
    """Samples a process's resident set size from /proc/<pid>/status in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.samples += 1
            self._stop.wait(0.02)

    @contextmanager
    def sampling(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@asynccontextmanager
async def dispatcher_process(tmp_path: Path, upstream_url: str) -> AsyncIterator[tuple[int, int]]:
    """``dispatcher serve`` in a subprocess on a port it picks; yields (port, pid)."""
    config = write_config(
        tmp_path,
        {"db": upstream_url},
        limits={"max_body_bytes": 0},
        store=f"sqlite:///{tmp_path}/registry.db",
    )
    executable = Path(sys.executable).parent / "dispatcher"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    log_path = tmp_path / "dispatcher.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            *("serve", "--config", str(config), "--port", "0", "--admin-port", "0"),
            *("--log-level", "warning"),
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            port = await announced_port(process, log_path)
            yield port, process.pid
        finally:
            await stop_process(process)


async def announced_port(process: asyncio.subprocess.Process, log: Path) -> int:
    """The port from ``dispatcher serving ... on http://127.0.0.1:<port>`` (port 0 asked:
    no race with another process for a port picked in advance)."""
    async with asyncio.timeout(15):
        while True:
            match = ANNOUNCED.search(log.read_text(errors="replace"))
            if match is not None:
                return int(match.group(1))
            if process.returncode is not None:
                raise RuntimeError(
                    f"dispatcher exited with {process.returncode}: {log.read_text()[-2000:]}"
                )
            await asyncio.sleep(0.05)


ANNOUNCED: Final = re.compile(r"dispatcher serving .* on http://127\.0\.0\.1:(\d+)")


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()


RSS_GROWTH_LIMIT: Final = 64 * MIB


async def upload(port: int, size: int) -> tuple[str, dict[str, object]]:
    """POST ``size`` generated bytes; returns (sha256 sent, the echo's JSON answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    digest = hashlib.sha256()
    writer.write(request_bytes("POST", "/upload", headers=[("Content-Length", str(size))]))
    for data in body_blocks(size):
        digest.update(data)
        writer.write(data)
        await writer.drain()
    response = await asyncio.wait_for(read_response_json(reader), 60)
    writer.close()
    return digest.hexdigest(), response


async def read_response_json(reader: asyncio.StreamReader) -> dict[str, object]:
    head = await read_head(reader)
    assert head.status == 200, head
    length = head.header("content-length")
    assert length is not None
    answer: dict[str, object] = json.loads(await reader.readexactly(int(length)))
    return answer


async def download(port: int) -> tuple[int, str, int]:
    """GET the generated body; returns (status, sha256 received, length received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
    writer.write(request_bytes("GET", "/download"))
    head = await read_head(reader)
    length = head.header("content-length")
    assert length is not None, head
    remaining = int(length)
    digest = hashlib.sha256()
    received = 0
    async with asyncio.timeout(120):
        while remaining:
            data = await reader.read(min(remaining, 4 * MIB))
            if not data:
                break
            digest.update(data)
            remaining -= len(data)
            received += len(data)
    writer.close()
    return head.status, digest.hexdigest(), received


@pytest.mark.slow
async def test_a_gibibyte_upload_streams_through_with_flat_memory(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start() as up,
        dispatcher_process(tmp_path, up.url) as (port, pid),
    ):
        await upload(port, 8 * MIB)  # warm up: buffers, pools, lazy imports
        sampler = RssSampler(pid)
        baseline = sampler.rss()
        with sampler.sampling():
            sent, answer = await upload(port, GIB)
    assert answer["body_length"] == GIB
    assert answer["sha256"] == sent
    assert up.requests[-1].body_sha256 == sent
    assert sampler.samples > 10
    assert sampler.peak - baseline < RSS_GROWTH_LIMIT, (baseline, sampler.peak)


@pytest.mark.slow
async def test_a_gibibyte_download_streams_through_with_flat_memory(tmp_path: Path) -> None:
    routes = {"warm": generated(8 * MIB), "download": generated(GIB)}

    async def handler(request: UpstreamRequest, peer: Peer) -> None:
        name = "warm" if request.target == b"/warm" else "download"
        await routes[name](request, peer)

    async with (
        RecordingUpstream.start(handler) as up,
        dispatcher_process(tmp_path, up.url) as (port, pid),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("GET", "/warm"))
        head = await read_head(reader)
        await reader.readexactly(int(head.header("content-length") or 0))
        writer.close()
        sampler = RssSampler(pid)
        baseline = sampler.rss()
        with sampler.sampling():
            status, received_digest, received = await download(port)
    assert status == 200
    assert received == GIB
    assert received_digest == body_digest(GIB)
    assert sampler.samples > 10
    assert sampler.peak - baseline < RSS_GROWTH_LIMIT, (baseline, sampler.peak)


# --- Configuration: worker URLs refused ---


BAD_URLS: Final = [
    (
        "ftp://127.0.0.1:9000",
        "scheme must be one of http, https, http+unix (got 'ftp://127.0.0.1:9000')",
    ),
    (
        "ws://127.0.0.1:9000",
        "scheme must be one of http, https, http+unix (got 'ws://127.0.0.1:9000')",
    ),
    (
        "file:///etc/passwd",
        "scheme must be one of http, https, http+unix (got 'file:///etc/passwd')",
    ),
    ("127.0.0.1:9000", "scheme must be one of http, https, http+unix (got '127.0.0.1:9000')"),
    (
        "http://user:secret@127.0.0.1:9000",
        "credentials in an upstream URL are not allowed (http://***@127.0.0.1:9000)",
    ),
    (
        "https://token@api.internal",
        "credentials in an upstream URL are not allowed (https://***@api.internal)",
    ),
    (
        "http://127.0.0.1:9000/api",
        "an upstream URL has no path, query or fragment (got 'http://127.0.0.1:9000/api')",
    ),
    (
        "http://127.0.0.1:9000/?x=1",
        "an upstream URL has no path, query or fragment (got 'http://127.0.0.1:9000/?x=1')",
    ),
    (
        "http://127.0.0.1:9000#top",
        "an upstream URL has no path, query or fragment (got 'http://127.0.0.1:9000#top')",
    ),
    ("http://127.0.0.1:99999", "invalid port in 'http://127.0.0.1:99999'"),
    ("http://", "the URL names no host (got 'http://')"),
    (
        "http+unix://relative.sock",
        "http+unix URLs name an absolute socket path, percent-encoded "
        "(http+unix://%2Frun%2Fapp.sock), got 'http+unix://relative.sock'",
    ),
]


def bad_config(tmp_path: Path, url: str, as_list: bool) -> tuple[Path, str]:
    urls: str | list[str] = ["http://127.0.0.1:9000", url] if as_list else url
    path = write_config(tmp_path, {"db": urls})
    return path, f"{path}: workers.dotdo-development.db.url: "


@pytest.mark.parametrize("as_list", [False, True], ids=["url", "in-list"])
@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_worker_url_is_refused_at_load(
    tmp_path: Path, url: str, problem: str, as_list: bool
) -> None:
    path, key = bad_config(tmp_path, url, as_list)
    with pytest.raises(ConfigError) as error:
        Settings.load(str(path), {})
    assert str(error.value) == key + problem


@pytest.mark.parametrize(("url", "problem"), BAD_URLS[:1] + BAD_URLS[4:5] + BAD_URLS[6:7])
async def test_a_bad_worker_url_stops_the_start(tmp_path: Path, url: str, problem: str) -> None:
    path, key = bad_config(tmp_path, url, False)
    with pytest.raises(ConfigError) as error:
        async with run_dispatcher(path, environ={}):
            pass  # pragma: no cover - never started
    assert str(error.value) == key + problem


@pytest.mark.parametrize("command", ["serve", "check"])
def test_the_cli_refuses_a_bad_worker_url_with_exit_2(tmp_path: Path, command: str) -> None:
    path, key = bad_config(tmp_path, "http://user:secret@127.0.0.1:9000", False)
    result = CliRunner().invoke(main, [command, "--config", str(path)], env={"ENVIRONMENT": ""})
    assert result.exit_code == 2, result.output
    assert "secret" not in result.output
    assert result.output.strip().endswith(
        key + "credentials in an upstream URL are not allowed (http://***@127.0.0.1:9000)"
    )


async def test_a_worker_with_several_urls_rejects_a_duplicate(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"db": ["http://127.0.0.1:9000", "http://127.0.0.1:9000"]})
    with pytest.raises(ConfigError) as error:
        Settings.load(str(path), {})
    assert (
        str(error.value)
        == f"{path}: workers.dotdo-development.db.url lists the same upstream twice"
    )


async def test_a_head_arriving_with_a_large_body_in_one_read_is_not_too_large(
    tmp_path: Path,
) -> None:
    """The head limit is on the head: a body sent in the same write may be any size."""
    body = b"y" * (200 * 1024)
    async with (
        RecordingUpstream.start(
            raw(response_head(200, [("Content-Length", str(len(body)))]) + body)
        ) as up,
        serve(tmp_path, {"db": up.url}) as gateway,
    ):
        response = await gateway.request("/", host="db.do")
    assert response.status == 200
    assert response.body == body
