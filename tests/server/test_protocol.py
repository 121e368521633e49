"""``HttpProtocol`` over real sockets: keep-alive, pipelining, bodies and flow control,
``Expect: 100-continue``, limits, deadlines, request-head validation, HEAD/204 framing and
graceful stop. Each error case asserts the status and the whole JSON body, and that the
dispatcher still serves a new connection afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import time
from pathlib import Path
from typing import Any, Final

import pytest
import uvloop

from dispatcher.testing import DispatcherThread

from .conftest import App, Client, Server, chunked, request_bytes, serve

MIB: Final = 1024 * 1024
# Deadlines in tests: 1 s, swept every 0.5 s, armed from the end of the sweep's tick: never
# early (but for the event loop's millisecond clock), at most a tick late.
SHORT: Final = {"header_timeout": 1.0, "body_idle_timeout": 1.0, "keepalive_timeout": 1.0}
SWEEP_SLACK: Final = 1.5
CLOCK_SLACK: Final = 0.05


def error_body(status_title: str, message: str, code: str) -> dict[str, Any]:
    return {"error": status_title, "message": message, "code": code}


def bad_request(message: str) -> dict[str, Any]:
    return error_body("Bad request", message, "bad_request")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_runs_on_uvloop_as_in_production() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


# --- Keep-alive ---


async def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    client = await server.connect()
    ports = set()
    for index in range(3):
        response = await client.request(f"/n/{index}")
        assert response.status == 200
        assert response.header("connection") is None
        assert response.json()["path"] == f"/n/{index}"
        ports.add(response.json()["client"][1])
    assert len(ports) == 1


async def test_connection_close_is_honoured(server: Server) -> None:
    client = await server.connect()
    response = await client.request("/bye", headers=[("Connection", "close")])
    assert response.status == 200
    assert response.header("connection") == "close"
    await client.assert_closed()
    await server.assert_serves()


async def test_http10_request_is_answered_and_closed(server: Server) -> None:
    client = await server.connect()
    client.send(request_bytes("GET", "/old", version="HTTP/1.0"))
    response = await client.response()
    assert response.status == 200
    assert response.header("connection") == "close"
    assert response.json()["http_version"] == "1.0"
    await client.assert_closed()
    await server.assert_serves()


async def test_http10_streamed_response_is_delimited_by_the_close(server: Server) -> None:
    client = await server.connect()
    client.send(request_bytes("GET", "/stream/3", version="HTTP/1.0"))
    response = await client.response()
    assert response.status == 200
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"
    assert response.body == b"chunk-0\nchunk-1\nchunk-2\n"


def test_keep_alive_with_http_client_in_a_thread() -> None:
    app = App()
    with DispatcherThread(workers={"db": app}, environ={}) as running:
        port = running.listener.port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for index in range(3):
                connection.request("GET", f"/sync/{index}", headers={"Host": "db.do"})
                response = connection.getresponse()
                assert response.status == 200
                assert response.getheader("content-type") == "application/json"
                assert b'"path": "/sync/%d"' % index in response.read()
            connection.request(
                "POST", "/upload", body=iter([b"abc", b"defg"]), headers={"Host": "db.do"}
            )
            response = connection.getresponse()
            answer = response.read()
            assert response.status == 200
            assert b'"length": 7' in answer
            assert digest(b"abcdefg").encode() in answer
        finally:
            connection.close()


# --- Pipelining ---


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    client = await server.connect()
    client.send(
        request_bytes("GET", "/sleep/200")
        + request_bytes("GET", "/sleep/0")
        + request_bytes("GET", "/sleep/50")
    )
    bodies = [(await client.response()).body for _ in range(3)]
    assert bodies == [b"slept 200", b"slept 0", b"slept 50"]


async def test_pipelined_garbage_after_a_valid_request(server: Server) -> None:
    client = await server.connect()
    client.send(request_bytes("GET", "/sleep/50") + b"Invalid\r\n\r\n")
    first = await client.response()
    assert (first.status, first.body) == (200, b"slept 50")
    second = await client.response()
    assert second.status == 400
    assert second.header("connection") == "close"
    assert second.json() == bad_request("malformed request: Invalid method encountered")
    await client.assert_closed()
    await server.assert_serves()


async def test_pipelined_chunked_requests_each_get_their_own_body(server: Server) -> None:
    client = await server.connect()
    bodies = [b"first", b"second body", b"3"]
    client.send(
        b"".join(
            request_bytes("POST", f"/p/{i}", headers=[("Transfer-Encoding", "chunked")])
            + chunked(body[:2], body[2:])
            for i, body in enumerate(bodies)
        )
    )
    for index, body in enumerate(bodies):
        answer = (await client.response()).json()
        assert answer["path"] == f"/p/{index}"
        assert (answer["length"], answer["sha256"]) == (len(body), digest(body))


async def test_bytes_after_a_zero_length_request_are_the_next_request(server: Server) -> None:
    client = await server.connect()
    client.send(
        request_bytes("POST", "/empty", content_length=True) + request_bytes("GET", "/next")
    )
    first, second = (await client.response()).json(), (await client.response()).json()
    assert (first["path"], first["length"]) == ("/empty", 0)
    assert second["path"] == "/next"


async def test_half_closed_client_gets_every_pipelined_answer(server: Server) -> None:
    """The client sends three requests and shuts its side (``nc -q``): all three are
    answered in order, then the connection closes."""
    client = await server.connect()
    client.send(
        request_bytes("GET", "/sleep/100")
        + request_bytes("GET", "/sleep/0")
        + request_bytes("POST", "/up", body=b"abc")
    )
    client.writer.write_eof()
    assert (await client.response()).body == b"slept 100"
    assert (await client.response()).body == b"slept 0"
    assert (await client.response()).json()["length"] == 3
    await client.assert_closed()
    await server.assert_serves()


async def test_many_pipelined_answers_given_at_once_after_a_slow_one(tmp_path: Path) -> None:
    """Regression: each immediate answer started the next one recursively (RecursionError).
    More than the recursion limit must wait: the pipelining cap is raised for it."""
    count = 1500
    async with serve(tmp_path, limits={"max_pipelined": 2000}) as server:
        client = await server.connect()
        client.send(
            request_bytes("GET", "/sleep/100") + request_bytes("GET", "/", host="nope.do") * count
        )
        assert (await client.response()).body == b"slept 100"
        for _ in range(count):
            assert (await client.response()).status == 404
        assert (await client.request("/after")).status == 200


# --- Bodies ---


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_body_reaches_the_app_intact(server: Server, framing: str) -> None:
    body = bytes(range(256)) * 300
    client = await server.connect()
    if framing == "chunked":
        parts = [body[:1000], body[1000:50_000], body[50_000:]]
        client.send(
            request_bytes("POST", "/up", headers=[("Transfer-Encoding", "chunked")])
            + chunked(*parts)
        )
    else:
        client.send(request_bytes("POST", "/up", body=body))
    answer = (await client.response()).json()
    assert answer["complete"] is True
    assert (answer["length"], answer["sha256"]) == (len(body), digest(body))


async def test_five_mib_body_is_streamed(server: Server) -> None:
    body = b"0123456789abcdef" * (5 * MIB // 16)
    client = await server.connect()
    client.send(request_bytes("POST", "/big", headers=[("Content-Length", str(len(body)))]))
    for start in range(0, len(body), 256 * 1024):
        client.send(body[start : start + 256 * 1024])
        await client.writer.drain()
    answer = (await client.response()).json()
    assert (answer["length"], answer["sha256"]) == (len(body), digest(body))
    assert answer["chunks"] > 10  # streamed in pieces, never assembled first


async def test_flow_control_holds_the_client_back(tmp_path: Path) -> None:
    """While the app does not read, the server stops reading: most of an 8 MiB body stays
    in the client's own buffer instead of the server's memory."""
    body = b"z" * (8 * MIB)
    async with serve(tmp_path, limits={"max_body_bytes": 0}) as server:
        client = await server.connect(send_buffer=64 * 1024)
        client.send(request_bytes("POST", "/slow-read/1500", body=body))
        await asyncio.sleep(1.0)
        held_by_client = client.writer.transport.get_write_buffer_size()
        answer = (await client.response()).json()
    assert held_by_client > 4 * MIB
    assert (answer["length"], answer["sha256"]) == (len(body), digest(body))
    assert answer["chunks"] > 8


async def test_an_app_that_never_yields_meets_the_clients_flow_control(server: Server) -> None:
    """Writes wait for the end of the loop's turn (server/writes.py), and an app whose sends
    never suspend would not let the loop turn: past 64 KiB waiting they are handed to the
    transport at once, whose flow control then holds the app back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(request_bytes("GET", "/flood/64"))
    await asyncio.sleep(1.0)  # we never read
    flooded = server.app.flooded
    writer.transport.abort()
    assert 0 < flooded < 16 * MIB, flooded
    await server.assert_serves()


@pytest.mark.slow
async def test_a_slow_reader_does_not_trip_the_body_deadline(tmp_path: Path) -> None:
    """Regression: with reading paused by flow control, the body idle deadline fired (408)
    although the client was waiting for us, not the other way round."""
    body = b"q" * MIB
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        client.send(request_bytes("POST", "/slow-read/2200", body=body))
        response = await client.response()
    assert response.status == 200
    assert (response.json()["length"], response.json()["sha256"]) == (len(body), digest(body))


async def test_response_streaming_uses_chunked_encoding(server: Server) -> None:
    client = await server.connect()
    response = await client.request("/stream/200")
    assert response.status == 200
    assert response.is_chunked
    assert response.header("content-length") is None
    assert response.chunk_count == 200
    assert response.body == b"".join(b"chunk-%d\n" % i for i in range(200))
    assert (await client.request("/again")).status == 200


async def test_unread_body_is_drained_and_the_connection_reused(server: Server) -> None:
    """The app answers without reading a 1 MiB body; the rest is drained, then reused."""
    client = await server.connect()
    client.send(request_bytes("POST", "/no-read", body=b"d" * MIB))
    assert (await client.response()).body == b"not read"
    assert (await client.request("/after")).json()["path"] == "/after"


# --- Expect: 100-continue ---


async def test_continue_is_sent_only_when_the_app_reads(server: Server) -> None:
    client = await server.connect()
    client.send(
        request_bytes(
            "POST",
            "/slow-read/300",
            headers=[("Expect", "100-continue"), ("Content-Length", "5")],
        )
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(1), 0.15)
    interim = await client.response()
    assert interim.status == 100
    assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"hello")
    final = await client.response()
    assert final.status == 200
    assert (final.json()["length"], final.json()["sha256"]) == (5, digest(b"hello"))
    assert (await client.request("/after")).status == 200


async def test_app_answering_without_reading_gets_no_continue(server: Server) -> None:
    client = await server.connect()
    client.send(
        request_bytes(
            "POST", "/no-read", headers=[("Expect", "100-continue"), ("Content-Length", "5")]
        )
    )
    response = await client.response()
    assert (response.status, response.body) == (200, b"not read")
    assert response.header("connection") == "close"
    await client.assert_closed()
    await server.assert_serves()


async def test_unknown_expectation_is_417(server: Server) -> None:
    response = await server.exchange(request_bytes("GET", "/", headers=[("Expect", "magic")]))
    assert response.status == 417
    assert response.json() == error_body(
        "Expectation failed", "only 'Expect: 100-continue' is supported", "expectation_failed"
    )
    await server.assert_serves()


async def test_oversized_body_with_expect_is_413_without_continue(tmp_path: Path) -> None:
    async with serve(tmp_path, limits={"max_body_bytes": 1024}) as server:
        client = await server.connect()
        client.send(
            request_bytes(
                "POST", "/up", headers=[("Expect", "100-continue"), ("Content-Length", "2048")]
            )
        )
        data = await client.read_until_closed()
        assert data.startswith(b"HTTP/1.1 413 ")
        assert b"100 Continue" not in data
        assert b'"message": "request body is larger than 1024 bytes"' in data
        assert server.app.requests == []
        await server.assert_serves()


# --- Limits ---


def header_lines(count: int, size: int) -> list[tuple[str, str]]:
    return [(f"X-H{i:03d}", "v" * size) for i in range(count)]


LIMIT_CASES: Final = [
    pytest.param(
        request_bytes("GET", "/" + "a" * 8192),
        414,
        error_body("URI too long", "request target is longer than 8192 bytes", "uri_too_long"),
        id="request-line",
    ),
    pytest.param(
        request_bytes("GET", "/", headers=[("X-Big", "v" * 8200)]),
        431,
        error_body(
            "Request header fields too large",
            "a header line is longer than 8192 bytes",
            "headers_too_large",
        ),
        id="header-line",
    ),
    pytest.param(
        request_bytes("GET", "/", headers=header_lines(5, 7000)),
        431,
        error_body(
            "Request header fields too large",
            "request headers are larger than 32768 bytes",
            "headers_too_large",
        ),
        id="header-block",
    ),
    pytest.param(
        request_bytes("GET", "/", headers=header_lines(100, 1)),
        431,
        error_body(
            "Request header fields too large", "more than 100 request headers", "headers_too_large"
        ),
        id="header-count",
    ),
]


@pytest.mark.parametrize(("raw", "status", "body"), LIMIT_CASES)
async def test_head_limits(server: Server, raw: bytes, status: int, body: dict[str, Any]) -> None:
    client = await server.connect()
    client.send(raw)
    response = await client.response()
    assert response.status == status
    assert response.header("connection") == "close"
    assert response.json() == body
    await client.assert_closed()
    assert server.app.requests == []
    await server.assert_serves()


async def test_limits_are_inclusive(server: Server) -> None:
    client = await server.connect()
    target = "/" + "a" * 8191
    assert (await client.request(target)).status == 200
    assert (await client.request("/", headers=header_lines(99, 1))).status == 200
    assert (await client.request("/", headers=[("X-Big", "v" * (8192 - 5))])).status == 200


async def test_head_dribbled_past_every_limit_is_431(tmp_path: Path) -> None:
    """One endless header line never reaches on_header; the head's byte count stops it."""
    async with serve(tmp_path) as server:
        client = await server.connect()
        client.send(b"GET / HTTP/1.1\r\nHost: db.do\r\nX-Endless: ")
        for _ in range(12):
            client.send(b"v" * 4096)
            await asyncio.sleep(0.005)
        data = await client.read_until_closed()
        assert data.startswith(b"HTTP/1.1 431 ")
        assert b"request head is larger than the configured limit" in data
        await server.assert_serves()


async def test_content_length_over_the_limit_is_413_before_the_body(tmp_path: Path) -> None:
    async with serve(tmp_path, limits={"max_body_bytes": 1024}) as server:
        client = await server.connect()
        client.send(request_bytes("POST", "/up", headers=[("Content-Length", "1025")]))
        response = await client.response()
        assert response.status == 413
        assert response.json() == error_body(
            "Payload too large", "request body is larger than 1024 bytes", "payload_too_large"
        )
        await client.assert_closed()
        assert server.app.requests == []
        assert (await server.exchange(request_bytes("POST", "/up", body=b"k" * 1024))).json()[
            "length"
        ] == 1024
        await server.assert_serves()


async def test_413_reaches_a_client_that_is_still_sending(tmp_path: Path) -> None:
    """Regression: the client sends its body without waiting and reads a moment later; a
    close with unread bytes made the kernel send a reset that destroyed the 413."""
    async with serve(tmp_path, limits={"max_body_bytes": 1024}) as server:
        client = await server.connect()
        client.send(request_bytes("POST", "/up", body=b"s" * (8 * MIB)))
        await asyncio.sleep(0.3)
        response = await client.response()
        assert response.status == 413
        assert response.json()["message"] == "request body is larger than 1024 bytes"


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        pytest.param([b"a" * 512, b"b" * 512], 200, id="exactly-the-limit"),
        pytest.param([b"a" * 512, b"b" * 512, b"c"], 413, id="one-byte-over"),
        pytest.param([b"a" * 2000], 413, id="one-big-chunk"),
    ],
)
async def test_chunked_body_over_the_limit(tmp_path: Path, parts: list[bytes], status: int) -> None:
    async with serve(tmp_path, limits={"max_body_bytes": 1024}) as server:
        client = await server.connect()
        client.send(request_bytes("POST", "/up", headers=[("Transfer-Encoding", "chunked")]))
        await asyncio.sleep(0.05)  # the app is reading when the excess arrives
        client.send(chunked(*parts))
        response = await client.response()
        assert response.status == status
        if status == 413:
            assert response.json() == error_body(
                "Payload too large", "request body is larger than 1024 bytes", "payload_too_large"
            )
            await client.assert_closed()
            # The app saw part of the body, then a disconnect; never a complete body.
            assert [r["complete"] for r in server.app.requests] == [False]
            assert server.app.received[-1] == "http.disconnect"
        else:
            assert response.json()["length"] == 1024
        await server.assert_serves()


# --- Deadlines ---


async def assert_408_within(client: Client, started: float, timeout: float, message: str) -> None:
    response = await client.response(timeout=timeout + SWEEP_SLACK + 1)
    elapsed = time.monotonic() - started
    assert response.status == 408
    assert response.json() == error_body("Request timeout", message, "request_timeout")
    assert response.header("connection") == "close"
    assert timeout - CLOCK_SLACK <= elapsed <= timeout + SWEEP_SLACK
    await client.assert_closed()


@pytest.mark.slow
async def test_stalled_head_is_408(tmp_path: Path) -> None:
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        started = time.monotonic()
        client.send(b"GET /half HTTP/1.1\r\nHost: db")
        await assert_408_within(client, started, 1.0, "request headers were not received in time")
        await server.assert_serves()


@pytest.mark.slow
async def test_stalled_body_is_408(tmp_path: Path) -> None:
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        client.send(request_bytes("POST", "/up", headers=[("Content-Length", "10")]) + b"12345")
        started = time.monotonic()
        await assert_408_within(client, started, 1.0, "request body was not received in time")
        assert server.app.received == ["http.request", "http.disconnect"]
        await server.assert_serves()


@pytest.mark.slow
async def test_a_deadline_is_never_early_whatever_the_phase_of_the_tick(tmp_path: Path) -> None:
    """Regression: deadlines were armed from the coarse clock, up to a tick old, so a head
    started late in a tick was cut up to half a second early. Heads started 0.1 s apart cover
    every phase of the 0.5 s tick; each is cut a full deadline after it started."""
    async with serve(tmp_path, limits=SHORT) as server:

        async def stall_a_head() -> float:
            client = await server.connect()
            started = time.monotonic()
            client.send(b"GET /half HTTP/1.1\r\nHost: db")
            response = await client.response(timeout=1.0 + SWEEP_SLACK + 1)
            assert response.status == 408
            return time.monotonic() - started

        stalls = []
        for _ in range(6):
            stalls.append(asyncio.create_task(stall_a_head()))
            await asyncio.sleep(0.1)
        for elapsed in await asyncio.gather(*stalls):
            assert 1.0 - CLOCK_SLACK <= elapsed <= 1.0 + SWEEP_SLACK, elapsed
        await server.assert_serves()


@pytest.mark.slow
async def test_slowloris_is_cut_at_the_header_deadline(tmp_path: Path) -> None:
    """One header byte every 0.3 s: the deadline is for the whole head, not per byte."""
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: db.do\r\n")

        async def dribble() -> None:
            for byte in b"X-Slow: " + b"s" * 40:
                client.send(bytes([byte]))
                await asyncio.sleep(0.3)

        dribbler = asyncio.create_task(dribble())
        try:
            await assert_408_within(
                client, started, 1.0, "request headers were not received in time"
            )
        finally:
            dribbler.cancel()
        await server.assert_serves()


@pytest.mark.slow
@pytest.mark.parametrize(
    "prelude",
    [
        pytest.param(b"", id="nothing-sent"),
        pytest.param(request_bytes("GET", "/one"), id="after-a-request"),
    ],
)
async def test_idle_connection_is_closed_after_keepalive_timeout(
    tmp_path: Path, prelude: bytes
) -> None:
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        if prelude:
            client.send(prelude)
            assert (await client.response()).status == 200
        started = time.monotonic()
        await client.assert_closed(timeout=1.0 + SWEEP_SLACK + 1)
        assert 1.0 - CLOCK_SLACK <= time.monotonic() - started <= 1.0 + SWEEP_SLACK
        await server.assert_serves()


@pytest.mark.slow
async def test_blank_lines_start_the_header_deadline(tmp_path: Path) -> None:
    """Regression: a CRLF (which the parser skips) cleared the idle deadline and armed no
    other, so the connection was held forever."""
    async with serve(tmp_path, limits=SHORT) as server:
        client = await server.connect()
        started = time.monotonic()
        client.send(b"\r\n")
        await assert_408_within(client, started, 1.0, "request headers were not received in time")


# --- Request-head validation ---


def head(target: str = "/", host: str | None = "db.do", extra: str = "") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return f"GET {target} HTTP/1.1\r\n{host_line}{extra}\r\n".encode("latin-1")


HEAD_CASES: Final = [
    pytest.param(head(host=None), 400, bad_request("missing Host header"), id="no-host"),
    pytest.param(
        head(extra="Host: db.do\r\n"), 400, bad_request("more than one Host header"), id="two-hosts"
    ),
    pytest.param(head(host="a b"), 400, bad_request("invalid Host header: 'a b'"), id="host-space"),
    pytest.param(
        head(host="x..y"), 400, bad_request("invalid Host header: 'x..y'"), id="host-dots"
    ),
    pytest.param(
        head(host="db.do:99999"),
        400,
        bad_request("invalid port in Host header: '99999'"),
        id="host-port",
    ),
    pytest.param(
        head(host=".".join(["a" * 60] * 5)),
        400,
        bad_request("Host header longer than 253 characters"),
        id="host-300-chars",
    ),
    pytest.param(
        b"CONNECT db.do:443 HTTP/1.1\r\nHost: db.do:443\r\n\r\n",
        405,
        error_body(
            "Method not allowed", "CONNECT is not supported by this server", "method_not_allowed"
        ),
        id="connect",
    ),
    pytest.param(
        head("http://x/"),
        400,
        bad_request("request target must be in origin-form (a path starting with '/')"),
        id="absolute-form",
    ),
    pytest.param(
        b"OPTIONS * HTTP/1.1\r\nHost: db.do\r\n\r\n",
        400,
        bad_request("request target must be in origin-form (a path starting with '/')"),
        id="asterisk-form",
    ),
    pytest.param(
        head("/a%2Fb"), 400, bad_request("encoded '%2F' is not allowed in the path"), id="enc-slash"
    ),
    pytest.param(
        head("/a%00b"), 400, bad_request("encoded '%00' is not allowed in the path"), id="enc-nul"
    ),
    pytest.param(
        head("/a\\b"),
        400,
        bad_request(
            "request path contains a forbidden character (control, space, non-ASCII, '\\' or '#')"
        ),
        id="backslash",
    ),
    pytest.param(head("/.."), 400, bad_request("path climbs above the root"), id="dot-dot"),
    pytest.param(
        head("/a/../../etc"), 400, bad_request("path climbs above the root"), id="escape-root"
    ),
    pytest.param(
        head("/a%zz"), 400, bad_request("malformed percent-escape in path: '%zz'"), id="bad-escape"
    ),
    pytest.param(
        b"GET /caf\xe9 HTTP/1.1\r\nHost: db.do\r\n\r\n",
        400,
        bad_request("malformed request: Invalid char in url path"),
        id="non-ascii-path",
    ),
    pytest.param(
        head(extra="X-Nul: a\x00b\r\n"),
        400,
        bad_request("malformed request: Invalid header value char"),
        id="nul-in-header",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: db.do\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        bad_request("malformed request: Content-Length can't be present with Transfer-Encoding"),
        id="te-and-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: db.do\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"Z\r\nabc\r\n0\r\n\r\n",
        400,
        bad_request("malformed request: Invalid character in chunk size"),
        id="bad-chunk-size",
    ),
    pytest.param(
        head(extra="Content-Length: 1,1\r\n"),
        400,
        bad_request("malformed request: Invalid character in Content-Length"),
        id="listed-cl",
    ),
    pytest.param(
        head(extra="Content-Length: 1\r\nContent-Length: 1\r\n"),
        400,
        bad_request("malformed request: Duplicate Content-Length"),
        id="two-cls",
    ),
    pytest.param(
        head(extra="X: a\r\n b\r\n"),
        400,
        bad_request("malformed request: Unexpected whitespace after header value"),
        id="obs-fold",
    ),
]


@pytest.mark.parametrize(("raw", "status", "body"), HEAD_CASES)
async def test_invalid_request_heads(
    server: Server, raw: bytes, status: int, body: dict[str, Any]
) -> None:
    client = await server.connect()
    client.send(raw)
    response = await client.response()
    assert response.status == status
    assert response.json() == body
    assert response.header("connection") == "close"
    await client.assert_closed()
    # A bad chunk is found after the head reached the app: it never sees a complete body.
    assert not any(request["complete"] for request in server.app.requests)
    await server.assert_serves()


@pytest.mark.parametrize(
    ("host", "target", "service", "path"),
    [
        ("api.do", "/api/%64b/x", "db", "/api/db/x"),
        ("api.do", "/api/db/../auth/x", "auth", "/api/auth/x"),
        ("api.do", "/api//db/./q?a=%2F", "db", "/api/db/q"),
        ("DB.DO.:8080", "/x", "db", "/x"),
    ],
)
async def test_paths_and_hosts_are_canonical_before_routing(
    server: Server, host: str, target: str, service: str, path: str
) -> None:
    client = await server.connect()
    response = await client.request(target, host=host)
    assert response.status == 200
    answer = response.json()
    assert (answer["extensions"]["dispatcher"]["service"], answer["path"]) == (service, path)


@pytest.mark.parametrize(
    ("host", "upgrade", "status"),
    [
        pytest.param("db.do", "h2c", 200, id="h2c-served-as-http"),
        pytest.param("db.do", "websocket", 400, id="websocket-without-key"),
        pytest.param("nope.do", "websocket", 404, id="answered-at-once"),
    ],
)
async def test_upgrade_is_answered_as_plain_http_then_closed(
    server: Server, host: str, upgrade: str, status: int
) -> None:
    """Whatever the answer to an Upgrade head, no byte after it is ever read as HTTP."""
    client = await server.connect()
    client.send(
        request_bytes(
            "GET", "/ws", host=host, headers=[("Upgrade", upgrade), ("Connection", "upgrade")]
        )
        + request_bytes("GET", "/smuggled")
    )
    assert (await client.response()).status == status
    await client.assert_closed(timeout=2)
    assert "/smuggled" not in [r["path"] for r in server.app.requests]
    await server.assert_serves()


# --- HEAD and bodiless statuses ---


@pytest.mark.parametrize("path", ["/head-length", "/fixed/50"])
async def test_head_has_the_get_length_and_no_body(server: Server, path: str) -> None:
    client = await server.connect()
    get = await client.request(path)
    head_response = await client.request(path, method="HEAD")
    assert head_response.status == 200
    assert head_response.header("content-length") == str(len(get.body)) == "50"
    assert head_response.header("transfer-encoding") is None
    # No body bytes were sent: the next response on the connection parses from its first byte.
    assert (await client.request("/after")).json()["path"] == "/after"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_has_no_body_and_no_framing(server: Server, status: int) -> None:
    client = await server.connect()
    response = await client.request(f"/status/{status}")
    assert response.status == status
    assert response.header("transfer-encoding") is None
    # 204: never (RFC 9110 §8.6); 304: the app declared no length, so none is invented.
    assert response.header("content-length") is None
    assert (await client.request("/after")).json()["path"] == "/after"


# --- Graceful stop ---


async def test_graceful_stop_lets_an_in_flight_response_finish(tmp_path: Path) -> None:
    async with serve(tmp_path) as server:
        busy = await server.connect()
        idle = await server.connect()
        busy.send(request_bytes("GET", "/sleep/400"))
        await server.app.started.wait()
        started = time.monotonic()
        stopping = asyncio.create_task(server.running.listener.stop(grace=5.0))
        response = await busy.response()
        assert (response.status, response.body) == (200, b"slept 400")
        assert response.header("connection") == "close"
        await busy.assert_closed()
        await idle.assert_closed()
        await stopping
        assert time.monotonic() - started < 2.0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)


async def test_graceful_stop_cuts_what_outlives_the_grace(tmp_path: Path) -> None:
    async with serve(tmp_path) as server:
        client = await server.connect()
        client.send(request_bytes("GET", "/sleep/3000"))
        await server.app.started.wait()
        started = time.monotonic()
        await server.running.listener.stop(grace=0.3)
        assert time.monotonic() - started < 1.5
        assert await client.read_until_closed() == b""
