"""The bad-input checklist of ``shared/ROBUSTNESS.md``, items 1 to 35, against a real dispatcher.

Every case is raw bytes written on a socket to a dispatcher whose workers are
``RecordingUpstream`` servers, which record exactly what reached them. Each case asserts:

* the status the checklist names (and, for a refusal, that the connection is then closed
  with nothing more written);
* what the upstream saw: **nothing** (not even a connection), **one** complete, well-framed
  request (with the target, body and headers the case names), or a **cut** request: a
  well-framed head whose body never completed because the dispatcher aborted it (a streamed
  body that goes bad half-way can be stopped, not recalled);
* that no smuggled request (``/smuggled``) ever reached a worker, and that the dispatcher
  still serves the next request on a new connection.

Where the dispatcher does not do what the checklist says, the case is a strict ``xfail``
whose reason starts with ``bug:``; the fix turns it into a failure to be un-marked.

Workers: ``db`` is one upstream; ``gateway`` and ``auth`` share another (``other``), so a
case can tell which service a request was routed to. Limits: the defaults (8 KiB request
line and header line, 32 KiB header block, 100 headers), a 1 KiB body limit and a 1 s body
idle timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Final

import pytest

from dispatcher.types import ASGIApp, Receive, Scope, Send
from tests.forwarding.conftest import error_fields, serve
from tests.forwarding.upstreams import (
    RecordingUpstream,
    body_blocks,
    body_digest,
    by_path,
    echo,
    raw,
)

from .conftest import (
    BODY_LIMIT,
    ESTABLISHED,
    FLIGHT_BOUND,
    LARGE,
    SERVICES,
    SMUGGLED,
    Case,
    app_gateway,
    assert_closed_after,
    assert_serves_next,
    assert_well_framed,
    case,
    check,
    chunk,
    chunked,
    delayed,
    get,
    head,
    headers_of,
    push_until_blocked,
    resident_bytes,
    run_lifespan,
    running_stack,
    send_raw,
    stalled_upstream,
    wait_until,
    wait_upstream_closed,
)

# --- Parser / smuggling (items 1-14) ---

TEN: Final = b"0123456789"
BAD_LENGTHS: Final = [
    ("plus", b"+10"),
    ("minus", b"-1"),
    ("hex", b"0x10"),
    ("underscore", b"1_0"),
    ("trailing-letter", b"1Z"),
    ("empty", b""),
    ("2-to-the-64", b"18446744073709551616"),
]
BAD_CHUNKS: Final = [
    ("06-size-0x1", b"0x1\r\nA\r\n0\r\n\r\n"),
    ("06-size-minus-0", b"-0\r\n\r\n"),
    ("06-size-1_0", b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    ("06-size-leading-space", b" 1\r\nA\r\n0\r\n\r\n"),
    ("06-size-not-hex", b"Z\r\nA\r\n0\r\n\r\n"),
    ("06-size-empty-line", b"\r\nA\r\n0\r\n\r\n"),
    ("06-size-overflowing-17-digits", b"10000000000000000\r\nA\r\n0\r\n\r\n"),
    ("07-runaway-chunk", b"4\r\nSEE-THIS\r\n0\r\n\r\n"),
    ("07-data-not-followed-by-crlf", b"1\r\nZXX\r\n0\r\n\r\n"),
    ("08-bare-cr-after-size", b"2\r\r;a\r\nAB\r\n0\r\n\r\n"),
    ("08-bare-lf-after-extension", b"5;ext\nHELLO\r\n0\r\n\r\n"),
    ("08-bare-lf-after-size", b"5\nHELLO\r\n0\r\n\r\n"),
    ("08-bare-cr-in-extension", b"5;a=b\rc\r\nHELLO\r\n0\r\n\r\n"),
    ("08-bare-lf-after-last-chunk", b"5\r\nHELLO\r\n0\n\r\n"),
    ("09-content-length-trailer", b"0\r\nContent-Length: 5\r\n\r\n"),
    ("09-transfer-encoding-trailer", b"0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("09-folded-trailer", b"0\r\nX-T: a\r\n b\r\n\r\n"),
    ("09-space-before-colon-in-trailer", b"0\r\nX-T : a\r\n\r\n"),
]
GET_HEADERS: Final = [
    ("10-obs-fold", [b"X: a", b" b"]),
    ("10-bare-lf-inside-head", [b"X: a\nY: b"]),
    ("10-bare-cr-inside-value", [b"Visible: :/\rSmuggled: :)"]),
    ("10-nul-in-name", [b"X\x00Y: a"]),
    ("10-nul-in-value", [b"X: a\x00b"]),
    ("11-space-before-colon", [b"X : a"]),
    ("11-line-without-colon", [b"NoColon"]),
    ("11-empty-name", [b": x"]),
    ("11-byte-ff-in-name", [b"X\xff: a"]),
    ("11-content-length-0x85", [b"Content-Length\x85: 5"]),
    ("11-at-sign-in-name", [b"X@Y: a"]),
]
REQUEST_LINES: Final = [
    ("12-control-in-method", b"G\x01T / HTTP/1.1"),
    ("12-separator-in-method", b"GE(T / HTTP/1.1"),
    ("12-version-1.32", b"GET / HTTP/1.32"),
    ("12-cr-inside-version", b"GET / HTTP/\r\r1.1"),
    ("12-space-in-path", b"GET / / HTTP/1.1"),
    ("12-control-in-path", b"GET /\x02 HTTP/1.1"),
    ("12-lone-percent", b"GET /% HTTP/1.1"),
    ("12-short-escape", b"GET /%1 HTTP/1.1"),
    ("12-fragment-in-path", b"GET /a#frag HTTP/1.1"),
]

VERSION_NOT_CHECKED: Final = (
    "the HTTP version is never checked: on_headers_complete "
    "(src/dispatcher/server/protocol.py:768-771) takes parser.get_http_version() as it is and "
    "_build_head forwards the request as HTTP/1.1; VersionNotSupported (errors.py) is unused"
)
TE_AFTER_HEAD: Final = (
    "llhttp rejects this Transfer-Encoding only when the body starts, after "
    "on_headers_complete: _remember (src/dispatcher/server/protocol.py:764) sets _is_chunked "
    "for any Transfer-Encoding, so the request was already dispatched and its head, re-framed "
    "as 'transfer-encoding: chunked', reached the upstream; validate the value in "
    "on_headers_complete (exactly 'chunked' -> go on; a known coding -> 501; anything else -> "
    "400)"
)

PARSER: Final = [
    # 1. Content-Length and Transfer-Encoding together.
    case(
        "01-chunked-then-length",
        chunked(b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    case(
        "01-length-then-chunked",
        head(b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    # 2. Two lengths, or one length that is a list.
    case("02-two-lengths-differ", head(b"Content-Length: 1", b"Content-Length: 0") + b"X", 400),
    case("02-two-equal-lengths", head(b"Content-Length: 1", b"Content-Length: 1") + b"X", 400),
    case("02-length-list", head(b"Content-Length: 1000,1000") + b"X", 400),
    case("02-length-with-space", head(b"Content-Length: 1000 1000") + b"X", 400),
    case("02-length-with-dot", head(b"Content-Length: 1000.1000") + b"X", 400),
    # 3. A length that is not plain digits; a leading zero is re-serialised in decimal.
    *[
        case(f"03-length-{name}", head(b"Content-Length: " + value) + TEN + SMUGGLED, 400)
        for name, value in BAD_LENGTHS
    ],
    case(
        "03-leading-zero-forwarded-as-decimal",
        head(b"Content-Length: 010") + TEN,
        200,
        seen="one",
        body=TEN,
        headers=[("content-length", "10")],
    ),
    # 4. Obfuscated Transfer-Encoding.
    case("04-space-before-colon", head(b"Transfer-Encoding : chunked") + b"0\r\n\r\n", 400),
    case("04-vertical-tab", head(b"Transfer-Encoding:\x0bchunked") + b"0\r\n\r\n", 400),
    case(
        "04-no-break-spaces",
        head(b"Transfer-Encoding: \xa0chunked\xa0") + b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    case(
        "04-leading-comma",
        head(b"Transfer-Encoding: ,chunked") + b"0\r\n\r\n",
        400,
    ),
    case("04-trailing-control", head(b"Transfer-Encoding: chunked\x11") + b"0\r\n\r\n", 400),
    case(
        "04-repeated-chunked",
        chunked(b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
        400,
    ),
    # 5. Codings other than a lone "chunked": 501; any Transfer-Encoding on HTTP/1.0: 400.
    *[
        case(
            f"05-coding-{name}",
            head(b"Transfer-Encoding: " + value) + b"0\r\n\r\n" + SMUGGLED,
            501,
        )
        for name, value in (("identity", b"identity"), ("gzip", b"gzip"), ("xchunked", b"xchunked"))
    ],
    case(
        "05-coding-chunked-identity",
        head(b"Transfer-Encoding: chunked, identity") + b"0\r\n\r\n",
        501,
    ),
    case(
        "05-coding-gzip-chunked",
        head(b"Transfer-Encoding: gzip, chunked") + b"5\r\nHELLO\r\n0\r\n\r\n",
        501,
    ),
    case(
        "05-chunked-on-http-1.0",
        head(b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.0") + b"0\r\n\r\n",
        400,
    ),
    # 6-9. Chunked bodies that go bad: refused, and no later byte becomes a request.
    *[case(name, chunked() + body + SMUGGLED, 400, seen="cut") for name, body in BAD_CHUNKS],
    case(
        "06-size-17-digits-with-leading-zeros",
        chunked(b"Connection: close") + b"00000000000000001\r\nA\r\n0\r\n\r\n",
        400,
        seen="cut",
        bug="a chunk size of more than 16 hex digits is accepted when its value fits in 64 "
        "bits (llhttp only checks for overflow); harmless here because the dispatcher "
        "re-frames the body, but the checklist wants 400",
    ),
    # 9. Trailers are parsed strictly and never merged into the head.
    case(
        "09-request-line-as-trailer",
        chunked() + b"0\r\nX:POST / HTTP/1.1\r\n\r\n",
        200,
        seen="one",
        body=b"",
        headers=[("x", None)],
    ),
    case(
        "09-host-trailer",
        chunked() + b"0\r\nHost: evil.do\r\n\r\n",
        200,
        seen="one",
        body=b"",
        headers=[("host", "db.do"), ("x-forwarded-host", "db.do")],
    ),
    # 10-11. Malformed header lines.
    *[case(name, get(b"/", *lines), 400) for name, lines in GET_HEADERS],
    case("10-bare-lf-line-endings", b"GET / HTTP/1.1\nHost: db.do\n\n", 400),
    # 12. Request-line junk.
    *[case(name, head(start=line), 400) for name, line in REQUEST_LINES],
    case(
        "12-fragment-after-query",
        get(b"/a?q#frag"),
        400,
    ),
    case(
        "12-http-0.9-simple-request",
        b"GET /\r\n\r\n",
        400,
    ),
    case(
        "12-http-0.9-with-headers",
        head(start=b"GET / HTTP/0.9"),
        400,
        505,
    ),
    case(
        "12-http-2.0-as-text",
        head(start=b"GET / HTTP/2.0"),
        505,
    ),
    case(
        "12-http-3.0",
        head(start=b"GET / HTTP/3.0"),
        505,
    ),
    # 14. A body on GET or HEAD is forwarded with its length, never stripped.
    case(
        "14-get-with-length-and-body",
        head(b"Content-Length: 10", start=b"GET / HTTP/1.1") + TEN,
        200,
        seen="one",
        body=TEN,
        headers=[("content-length", "10")],
    ),
    case(
        "14-head-with-length-and-body",
        head(b"Content-Length: 10", start=b"HEAD / HTTP/1.1") + TEN,
        200,
        seen="one",
        body=TEN,
        headers=[("content-length", "10")],
    ),
]

# --- Headers (items 16-20) ---

HEADERS: Final = [
    # 16. Limits: 414 for the request line, 431 for the headers, before any body is read.
    case("16-request-line-over-8k", get(b"/" + b"a" * 8200), 414),
    case("16-header-line-over-8k", get(b"/", b"X-Big: " + b"v" * 8200), 431),
    case("16-header-block-33k", get(b"/", *headers_of(6, 5600)), 431),
    case(
        "16-header-block-33k-before-its-body",
        head(b"Content-Length: 100000", *headers_of(6, 5600)),
        431,
    ),
    case("16-101-headers", get(b"/", *headers_of(100, 1)), 431),
    case("16-100-headers-pass", get(b"/", *headers_of(99, 1)), 200, seen="one"),
    # 17. Hop-by-hop headers never reach the upstream; "TE: trailers" is the exception.
    case(
        "17-hop-by-hop-removed",
        get(
            b"/",
            b"Connection: keep-alive, X-Secret",
            b"X-Secret: 1",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: gzip",
            b"Trailer: X-T",
            b"Upgrade: foo",
            b"X-Kept: yes",
        ),
        200,
        seen="one",
        headers=[
            ("connection", None),
            ("x-secret", None),
            ("keep-alive", None),
            ("proxy-connection", None),
            ("te", None),
            ("trailer", None),
            ("upgrade", None),
            ("x-kept", "yes"),
        ],
    ),
    case(
        "17-te-trailers-kept",
        get(b"/", b"TE: trailers"),
        200,
        seen="one",
        headers=[("te", "trailers")],
    ),
    case(
        "17-h2c-upgrade-never-forwarded",
        get(b"/", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAA"),
        200,
        seen="one",
        headers=[("upgrade", None), ("http2-settings", None), ("connection", None)],
    ),
    # 18. A client cannot remove what the dispatcher sets.
    case(
        "18-connection-names-proxy-owned-headers",
        head(b"Connection: X-Forwarded-For, Host, Content-Length", b"Content-Length: 3") + b"abc",
        200,
        seen="one",
        body=b"abc",
        headers=[
            ("host", "db.do"),
            ("x-forwarded-for", "127.0.0.1"),
            ("content-length", "3"),
        ],
    ),
    # 19. Forwarded headers from an untrusted peer are replaced.
    case(
        "19-forwarded-headers-overwritten",
        get(
            b"/",
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-Host: evil.do",
            b"X-Forwarded-Proto: https",
            b"Forwarded: for=6.6.6.6;proto=https",
            b"X-Real-IP: 6.6.6.6",
        ),
        200,
        seen="one",
        headers=[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-host", "db.do"),
            ("x-forwarded-proto", "http"),
            ("forwarded", None),
            ("x-real-ip", None),
        ],
    ),
]

# --- Host / paths (items 22-30) ---

UNKNOWN: Final = b"unknown.example"

HOSTS_AND_PATHS: Final = [
    # 22. Missing or repeated Host.
    case("22-no-host", get(b"/", host=None), 400),
    case("22-two-equal-hosts", get(b"/", b"Host: db.do"), 400),
    case("22-two-different-hosts", get(b"/", b"Host: auth.do"), 400),
    case("22-second-host-after-bare-lf", get(b"/", host=b"localhost\nHost: again"), 400),
    case("22-empty-host", get(b"/", host=b""), 400),
    # 23. Invalid hosts; a canonical spelling routes like the canonical host.
    *[
        case(f"23-host-{name}", get(b"/", host=value), 400)
        for name, value in (
            ("slash-backslash-colon", b"example.com/\\:552"),
            ("leading-dots", b"..examp-LE.com"),
            ("nul", b"a\x00b"),
            ("control", b"localhost\x02"),
            ("broken-ipv6-with-formfeed", b"[abcd::e\x0c98/x]"),
            ("broken-ipv6", b"[abcd::e98/x]"),
            ("port-above-65535", b"db.do:65536"),
            ("two-ports", b"1.2.3.4:9000:80"),
        )
    ],
    case(
        "23-case-trailing-dot-and-port-normalized",
        get(b"/", host=b"DB.Do.:88"),
        200,
        seen="one",
        headers=[("host", "DB.Do.:88")],
    ),
    case(
        "23-normalized-host-routes",
        get(b"/", host=b"GATEWAY.DO.:8787"),
        200,
        seen="one",
        worker="other",
    ),
    # 24. Absolute-form and asterisk-form are refused; CONNECT is 405.
    case("24-absolute-form", get(b"http://auth.do/x"), 400),
    case("24-absolute-form-same-host", get(b"http://db.do/x"), 400),
    case("24-options-asterisk", head(start=b"OPTIONS * HTTP/1.1"), 400),
    case("24-connect", head(start=b"CONNECT db.do:443 HTTP/1.1", host=b"db.do:443"), 405),
    # 25. Unknown host: the seed's 404, no fall-through; the admin API is not reachable here.
    case("25-unknown-host", get(b"/", host=UNKNOWN), 404),
    case("25-admin-path-on-own-host", get(b"/namespaces", host=b"localhost"), 404),
    case("25-admin-path-on-admin-host", get(b"/namespaces", host=b"admin"), 404),
    # 26. Dot segments are removed before routing; the canonical path is forwarded.
    case("26-dot-dot-segment", get(b"/a/../admin"), 200, seen="one", target=b"/admin"),
    case("26-encoded-dot-dot-above-root", get(b"/%2e%2e/admin"), 400),
    case("26-mixed-dot-dot-above-root", get(b"/.%2E/admin"), 400),
    case("26-dot-dot-above-root", get(b"/.."), 400),
    case("26-dot-dot-climbing-out", get(b"/a/../../b"), 400),
    case("26-dot-dot-before-query", get(b"/foo/bar/..?x"), 200, seen="one", target=b"/foo/?x"),
    case("26-trailing-dot", get(b"/foo/bar/."), 200, seen="one", target=b"/foo/bar/"),
    case(
        "26-route-guard-dot-dot",
        get(b"/api/auth/../db/x", host=UNKNOWN),
        200,
        seen="one",
        target=b"/api/db/x",
    ),
    case(
        "26-route-guard-encoded-dot-dot",
        get(b"/api/auth/%2e%2E/db/x", host=UNKNOWN),
        200,
        seen="one",
        target=b"/api/db/x",
    ),
    case(
        "26-route-guard-other-way",
        get(b"/api/db/../auth/x", host=UNKNOWN),
        200,
        seen="one",
        target=b"/api/auth/x",
        worker="other",
    ),
    case(
        "26-escaped-unreserved-decoded",
        get(b"/api/%64b/x", host=UNKNOWN),
        200,
        seen="one",
        target=b"/api/db/x",
    ),
    # 27. Encoded separators and backslash: 400.
    case("27-encoded-slash", get(b"/a%2Fb"), 400),
    case("27-encoded-slash-lower-case", get(b"/a%2fb"), 400),
    case("27-encoded-backslash", get(b"/a%5Cb"), 400),
    case("27-backslash", get(b"/a\\b"), 400),
    case("27-encoded-slash-into-a-route", get(b"/api%2Fdb/x", host=UNKNOWN), 400),
    # 28. Repeated slashes are merged for routing and forwarding alike.
    case("28-leading-double-slash", get(b"//admin"), 200, seen="one", target=b"/admin"),
    case("28-inner-double-slash", get(b"/api//v1"), 200, seen="one", target=b"/api/v1"),
    case(
        "28-double-slashes-route",
        get(b"//api//db//x", host=UNKNOWN),
        200,
        seen="one",
        target=b"/api/db/x",
    ),
    # 29. NUL, malformed and overlong escapes: 400; other escapes are forwarded raw.
    case("29-encoded-nul", get(b"/a%00b"), 400),
    case("29-malformed-escape", get(b"/a%zz"), 400),
    case("29-overlong-utf8-dot", get(b"/a%c0%ae"), 400),
    case("29-control-escape-forwarded-raw", get(b"/a%02b"), 200, seen="one", target=b"/a%02b"),
    # 30. Prefix boundaries; the query string is forwarded byte for byte.
    case("30-prefix-needs-a-boundary", get(b"/api/dbx", host=UNKNOWN), 404),
    case("30-prefix-then-encoded-slash", get(b"/api/db..%2f", host=UNKNOWN), 400),
    case("30-prefix-itself", get(b"/api/db", host=UNKNOWN), 200, seen="one", target=b"/api/db"),
    case(
        "30-query-byte-for-byte",
        get(b"/x?a=1;b=2&c=%2F%zz&d=/../&e=%2e%2e"),
        200,
        seen="one",
        target=b"/x?a=1;b=2&c=%2F%zz&d=/../&e=%2e%2e",
    ),
    case(
        "30-query-kept-when-path-normalized",
        get(b"/a/../x?a=1;b=%2F&c=//"),
        200,
        seen="one",
        target=b"/x?a=1;b=%2F&c=//",
    ),
]

# --- Bodies (items 31, 33) ---

BODIES: Final = [
    case(
        "31-chunked-exactly-the-limit",
        chunked() + chunk(b"a" * BODY_LIMIT) + b"0\r\n\r\n",
        200,
        seen="one",
        body=b"a" * BODY_LIMIT,
    ),
    case(
        "31-chunked-one-byte-over",
        chunked() + chunk(b"a" * (BODY_LIMIT + 1)) + b"0\r\n\r\n",
        413,
        seen="cut",
    ),
    case(
        "31-chunked-over-across-chunks",
        chunked() + chunk(b"a" * 512) + chunk(b"b" * 512) + chunk(b"c") + b"0\r\n\r\n",
        413,
        seen="cut",
    ),
    case(
        "31-length-exactly-the-limit",
        head(b"Content-Length: %d" % BODY_LIMIT) + b"a" * BODY_LIMIT,
        200,
        seen="one",
        body=b"a" * BODY_LIMIT,
    ),
    case(
        "31-length-over-with-body",
        head(b"Content-Length: %d" % (BODY_LIMIT + 1)) + b"a" * (BODY_LIMIT + 1),
        413,
    ),
    case("31-length-over-before-body", head(b"Content-Length: %d" % (BODY_LIMIT + 1)), 413),
    case(
        "31-expect-continue-over-limit-no-100",
        head(b"Content-Length: %d" % (BODY_LIMIT + 1), b"Expect: 100-continue"),
        413,
    ),
]


# --- The tables ---


@pytest.mark.parametrize("row", PARSER)
async def test_parser_and_smuggling(tmp_path: Path, row: Case) -> None:
    await check(tmp_path, row)


@pytest.mark.parametrize("row", HEADERS)
async def test_headers(tmp_path: Path, row: Case) -> None:
    await check(tmp_path, row)


@pytest.mark.parametrize("row", HOSTS_AND_PATHS)
async def test_host_and_paths(tmp_path: Path, row: Case) -> None:
    await check(tmp_path, row)


@pytest.mark.parametrize("row", BODIES)
async def test_bodies(tmp_path: Path, row: Case) -> None:
    await check(tmp_path, row)


# --- 9. Trailers never join the head, even when the request waits its turn ---


TRAILER_BUG: Final = (
    "trailer fields are appended to the head's own header list: on_header "
    "(src/dispatcher/server/protocol.py:734-750) keeps appending to self._headers, the very "
    "list _build_head put in RequestHead.headers (protocol.py:837), and it is only replaced "
    "at the next message. A request that waits its turn (pipelined, or an ASGI task that starts "
    "after the trailers were parsed) is forwarded with its trailers as head fields, the last "
    "Host winning in _request_head (upstream.py:800): 'Host: evil.do' in a trailer reaches the "
    "upstream as the Host and X-Forwarded-Host"
)


async def test_trailers_of_a_pipelined_request_never_join_its_head(tmp_path: Path) -> None:
    raw = (
        get(b"/slow")
        + head(b"Transfer-Encoding: chunked", start=b"POST /second HTTP/1.1")
        + chunk(b"hello")
        + b"0\r\nX-Injected: 1\r\nHost: evil.do\r\n\r\n"
    )
    async with running_stack(tmp_path, by_path({"slow": delayed(echo(), 0.2)})) as stack:
        client, first = await send_raw(stack.gateway, raw)
        second = await client.response(method="POST")
        assert (first.json()["target"], second.json()["target"]) == ("/slow", "/second")
        request = stack.db.requests[1]
        assert_well_framed(request)
        assert request.body == b"hello"
        assert request.values("x-injected") == [], request.headers
        assert request.values("host") == [b"db.do"], request.headers
        await assert_serves_next(stack)


# --- 13. Pipelining ---


def chunked_post(target: bytes, data: bytes) -> bytes:
    start = b"POST " + target + b" HTTP/1.1"
    return head(b"Transfer-Encoding: chunked", start=start) + chunk(data) + b"0\r\n\r\n"


PIPELINES: Final = [
    pytest.param(
        get(b"/slow") + get(b"/p2") + get(b"/p3"),
        [(b"/slow", b""), (b"/p2", b""), (b"/p3", b"")],
        id="13-answers-in-order",
    ),
    pytest.param(
        head(b"Content-Length: 0", start=b"POST /slow HTTP/1.1") + get(b"/after-empty-body"),
        [(b"/slow", b""), (b"/after-empty-body", b"")],
        id="13-bytes-after-length-0-are-the-next-request",
    ),
    pytest.param(
        chunked_post(b"/slow", b"one") + chunked_post(b"/c2", b"two") + chunked_post(b"/c3", b"3"),
        [(b"/slow", b"one"), (b"/c2", b"two"), (b"/c3", b"3")],
        id="13-three-chunked-requests-keep-their-bodies",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), PIPELINES)
async def test_pipelined_requests(
    tmp_path: Path, raw: bytes, expected: list[tuple[bytes, bytes]]
) -> None:
    async with running_stack(tmp_path, by_path({"slow": delayed(echo(), 0.2)})) as stack:
        client = await stack.gateway.connect()
        client.send(raw)
        answered = [(await client.response()).json() for _ in expected]
        assert [a["target"].encode() for a in answered] == [t for t, _ in expected]
        assert [a["body_length"] for a in answered] == [len(b) for _, b in expected]
        assert [(r.target, r.body) for r in stack.db.requests] == expected
        for request in stack.db.requests:
            assert_well_framed(request)
        await assert_serves_next(stack)


async def test_a_valid_request_then_garbage_is_answered_then_400_and_closed(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path, by_path({"slow": delayed(echo(), 0.2)})) as stack:
        client, first = await send_raw(stack.gateway, get(b"/slow") + b"Invalid\r\n\r\n")
        assert first.status == 200 and first.json()["target"] == "/slow"
        second = await client.response()
        assert second.status == 400, second.body
        assert error_fields(second)["error"] == "Bad request"
        await assert_closed_after(client, second)
        assert [r.target for r in stack.db.requests] == [b"/slow"]
        await assert_serves_next(stack)


# --- 15 and 21. What an upstream answers ---

BAD_ANSWERS: Final = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        id="15-length-and-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        id="15-chunked-and-length",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        id="15-two-lengths",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\nhello", id="15-length-list"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nhello\r\n0\r\n\r\n",
        id="15-bad-chunk-size",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        id="15-bare-lf-after-chunk-size",
    ),
    pytest.param(
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", id="15-chunked-204"
    ),
    pytest.param(
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", id="15-chunked-304"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-A: a\rInjected: 1\r\nContent-Length: 2\r\n\r\nok",
        id="21-bare-cr-in-header-value",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-A: a\nInjected: 1\r\nContent-Length: 2\r\n\r\nok",
        id="21-bare-lf-in-header-value",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n Injected: 1\r\nContent-Length: 2\r\n\r\nok",
        id="21-obs-fold-in-header-value",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-A: a\x00Injected\r\nContent-Length: 2\r\n\r\nok",
        id="21-nul-in-header-value",
    ),
]


@pytest.mark.parametrize("answer", BAD_ANSWERS)
async def test_a_malformed_upstream_answer_is_a_502_and_its_connection_is_discarded(
    tmp_path: Path, answer: bytes
) -> None:
    async with running_stack(tmp_path, by_path({"bad": raw(answer, then="keep")})) as stack:
        client, response = await send_raw(stack.gateway, get(b"/bad"))
        assert response.status == 502, response.raw_head + response.body
        fields = error_fields(response)
        assert (fields["error"], fields["code"]) == ("Bad gateway", "bad_gateway")
        assert b"injected" not in response.raw_head.lower()
        await client.aclose()
        db = stack.db
        await db.wait_for(lambda: db.connections[0].closed_at is not None, timeout=2)
        await assert_serves_next(stack)
        assert db.requests[-1].connection != 0  # served on a new upstream connection


def header_app(headers: list[tuple[bytes, bytes]]) -> ASGIApp:
    """An in-process worker that answers 200 with ``headers`` (and runs a lifespan)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-a", b"a\r\nInjected: 1")], id="21-app-crlf-in-value"),
        pytest.param([(b"x-a", b"a\nInjected: 1")], id="21-app-lf-in-value"),
        pytest.param([(b"x-a", b"a\rInjected: 1")], id="21-app-cr-in-value"),
        pytest.param([(b"x-a", b"a\x00Injected")], id="21-app-nul-in-value"),
        pytest.param([(b"x-a\r\nInjected", b"1")], id="21-app-crlf-in-name"),
    ],
)
async def test_an_app_header_that_would_split_the_response_is_a_500(
    tmp_path: Path, headers: list[tuple[bytes, bytes]]
) -> None:
    async with app_gateway(tmp_path, header_app(headers)) as (gateway, stack):
        response = await gateway.request("/", host="auth.do")
        assert response.status == 500, response.raw_head + response.body
        assert error_fields(response)["error"] == "Internal server error"
        assert b"injected" not in response.raw_head.lower()
        await assert_serves_next(stack)


def scope_headers_app() -> ASGIApp:
    """An in-process worker that answers with the header names of its scope, as JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        names = [name.decode("latin-1") for name, _ in scope["headers"]]
        body = json.dumps(names).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_trailers_never_join_an_apps_scope_headers(tmp_path: Path) -> None:
    raw = (
        head(b"Transfer-Encoding: chunked", host=b"auth.do")
        + chunk(b"hello")
        + b"0\r\nX-Injected: 1\r\n\r\n"
    )
    async with app_gateway(tmp_path, scope_headers_app()) as (gateway, stack):
        _, response = await send_raw(gateway, raw, "POST")
        assert response.status == 200
        assert "x-injected" not in response.json()


# --- 19. Forwarded headers from a trusted peer ---


async def test_forwarded_headers_from_a_trusted_peer_are_kept_and_appended_to(
    tmp_path: Path,
) -> None:
    raw = get(
        b"/",
        b"X-Forwarded-For: 6.6.6.6",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.example",
    )
    async with running_stack(tmp_path, proxy={"trusted_proxies": ["127.0.0.1"]}) as stack:
        _, response = await send_raw(stack.gateway, raw)
        assert response.status == 200
        request = stack.db.requests[0]
        assert request.values("x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]
        assert request.values("x-forwarded-proto") == [b"https"]
        assert request.values("x-forwarded-host") == [b"public.example"]


# --- 20. Underscores in header names ---

UNDERSCORED: Final = [
    pytest.param(get(b"/", b"X_Forwarded_For: 6.6.6.6"), id="20-x_forwarded_for"),
    pytest.param(
        head(b"Content_Length: 5", b"Connection: close") + b"hello", id="20-content_length"
    ),
    pytest.param(
        get(b"/", b"Transfer_Encoding: chunked", b"Connection: close"), id="20-transfer_encoding"
    ),
]


@pytest.mark.parametrize("raw_request", UNDERSCORED)
async def test_an_underscore_name_is_never_read_as_the_dashed_name(
    tmp_path: Path, raw_request: bytes
) -> None:
    async with running_stack(tmp_path) as stack:
        method = raw_request.split(b" ", 1)[0].decode()
        client, response = await send_raw(stack.gateway, raw_request, method)
        assert response.status in (200, 400), response.body
        if response.status == 400:
            await assert_closed_after(client, response)
            assert stack.db.accepted == 0
        else:
            (request,) = stack.db.requests
            assert_well_framed(request)
            assert request.values("x-forwarded-for") == [b"127.0.0.1"]
            assert request.values("content-length") == []
            assert request.values("transfer-encoding") == []
            assert request.body_length == 0
        await assert_serves_next(stack)


@pytest.mark.parametrize("raw_request", UNDERSCORED)
async def test_an_underscore_name_is_dropped_or_refused(tmp_path: Path, raw_request: bytes) -> None:
    async with running_stack(tmp_path) as stack:
        method = raw_request.split(b" ", 1)[0].decode()
        _, response = await send_raw(stack.gateway, raw_request, method)
        if response.status == 400:
            assert stack.db.accepted == 0
        else:
            assert response.status == 200
            names = stack.db.requests[0].names
            assert not [name for name in names if b"_" in name], names


# --- 25. Unknown hosts and the admin API ---


async def test_an_unknown_host_gets_the_seed_404_and_never_a_first_route(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        response = await stack.gateway.request("/x", host="unknown.example")
        assert response.status == 404
        assert error_fields(response) == {
            "error": "Service not found",
            "message": "No worker found for unknown.example/x",
            "available_services": SERVICES,
            "code": "service_not_found",
        }
        assert stack.db.accepted == stack.other.accepted == 0


async def test_the_admin_api_is_not_reachable_on_the_public_listener(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        admin = f"127.0.0.1:{stack.gateway.running.admin_listener.port}"
        for host in ("localhost", "127.0.0.1", admin, "admin"):
            for path in ("/namespaces", "/deployments", "/openapi.json"):
                response = await stack.gateway.request(path, host=host)
                assert response.status == 404, (host, path, response.body)
                assert error_fields(response)["error"] == "Service not found"
        assert stack.db.accepted == stack.other.accepted == 0


# --- 32-34. Bodies that go wrong while the upstream exchange runs ---


async def test_a_chunked_body_passing_the_limit_mid_stream_aborts_the_upstream_request(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack:
        client = await stack.gateway.connect()
        client.send(chunked() + chunk(b"a" * 600))
        await stack.db.wait_for(lambda: stack.db.accepted == 1)  # the exchange has started
        client.send(chunk(b"b" * 600) + b"0\r\n\r\n")
        try:
            response = await client.response(method="POST")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass  # a reset is allowed once the upstream exchange has started
        else:
            assert response.status == 413, response.body
            assert error_fields(response)["code"] == "payload_too_large"
            await assert_closed_after(client, response)
        await wait_upstream_closed(stack.db)
        assert [r.is_complete for r in stack.db.requests] in ([], [False])
        await assert_serves_next(stack)


async def test_an_announced_body_that_never_comes_is_a_408_at_the_body_idle_timeout(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack:
        started = time.monotonic()
        raw_request = head(b"Content-Length: 10", start=b"GET / HTTP/1.1")
        client, response = await send_raw(stack.gateway, raw_request)
        waited = time.monotonic() - started
        assert response.status == 408, response.body
        assert error_fields(response)["code"] == "request_timeout"
        assert 0.95 <= waited < 2.5, waited  # 1 s, never early, checked twice a second
        await assert_closed_after(client, response)
        await wait_upstream_closed(stack.db)
        assert [r.is_complete for r in stack.db.requests] in ([], [False])
        await assert_serves_next(stack)


@pytest.mark.parametrize("leaving", ["close", "reset"])
async def test_a_client_leaving_mid_body_cancels_the_upstream_request(
    tmp_path: Path, leaving: str
) -> None:
    async with running_stack(tmp_path) as stack:
        client = await stack.gateway.connect()
        client.send(head(b"Content-Length: 10") + b"01234")
        await stack.db.wait_for(lambda: stack.db.accepted == 1)
        if leaving == "reset":
            client.reset()
        else:
            await client.aclose()
        await wait_upstream_closed(stack.db, timeout=1.0)
        # Never a replayed or completed half body.
        assert [(r.is_complete, r.body) for r in stack.db.requests] in ([], [(False, b"01234")])
        await assert_serves_next(stack)


# --- 35. A large upload streams through ---


async def test_a_large_upload_streams_through_with_bounded_memory(tmp_path: Path) -> None:
    async with running_stack(tmp_path, limits={"max_body_bytes": 0}) as stack:
        baseline = peak = resident_bytes()
        client = await stack.gateway.connect()
        client.send(head(b"Content-Length: %d" % LARGE))
        for block in body_blocks(LARGE):
            client.send(block)
            await client.writer.drain()
            peak = max(peak, resident_bytes())
        response = await client.response(method="POST")
        assert response.status == 200, response.body
        assert response.json()["sha256"] == body_digest(LARGE)
        # Bounded by the buffers along the way (the upstream keeps 4 MiB of what it reads),
        # never by the size of the body.
        assert peak - baseline <= FLIGHT_BOUND, peak - baseline


async def test_back_pressure_reaches_the_client_when_the_upstream_stops_reading(
    tmp_path: Path,
) -> None:
    async with (
        stalled_upstream() as stalled,
        RecordingUpstream.start() as other,
        serve(
            tmp_path, {"db": stalled.url, "gateway": other.url}, limits={"max_body_bytes": 0}
        ) as gateway,
    ):
        baseline = resident_bytes()
        client = await gateway.connect()
        accepted = await push_until_blocked(client)
        # What the client could push is what the buffers along the way hold, not the body.
        assert accepted <= FLIGHT_BOUND, accepted
        assert resident_bytes() - baseline <= FLIGHT_BOUND
        response = await gateway.request("/", host="gateway.do")
        assert response.status == 200
        client.reset()
        stalled.release()


async def test_a_client_leaving_while_the_upstream_stops_reading_releases_the_upstream(
    tmp_path: Path,
) -> None:
    async with (
        stalled_upstream() as stalled,
        serve(tmp_path, {"db": stalled.url}, limits={"max_body_bytes": 0}) as gateway,
    ):
        client = await gateway.connect()
        await push_until_blocked(client)
        assert stalled.states() == [ESTABLISHED]
        client.reset()
        try:
            await wait_until(lambda: stalled.states() != [ESTABLISHED], timeout=1.0)
        finally:
            stalled.release()
