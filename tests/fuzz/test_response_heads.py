"""``_response_block`` (the upstream response head's hop-by-hop filter) against a reference.

The regex filter splits a lower-cased copy; the reference below is the case-insensitive
regex it replaced. For any head of CRLF-terminated lines (the shape llhttp hands over), both
must keep the same lines and read the same length, close and chunked flags (the C fast path
in front of it is held to it in ``test_hopbyhop.py``). Names are drawn from the hop-by-hop
set, near misses and ordinary headers, in any letter case, with white space and CR/LF pieces
in the values.
"""

from __future__ import annotations

import re
from typing import Final

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.forwarding.upstream import _PROXY_OWNED, _response_block, _tokens

from .conftest import fuzz_settings

# A kept line that is an X-Request-Id: at a line start, up to a CRLF (no LF inside; llhttp
# refuses a bare CR or LF in a value, the generator makes them to test the edges).
_REQUEST_ID: Final = re.compile(rb"(?:^|\n)x-request-id:[^\n]*\r\n", re.IGNORECASE)
_REFERENCE: Final = re.compile(
    rb"^(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
    rb"|content-length):[ \t]*(.*?)[ \t]*\r\n",
    re.IGNORECASE | re.MULTILINE,
)


def reference_block(lines: bytes) -> tuple[bytes, int | None, bool, bool]:
    found = _REFERENCE.findall(lines)
    if not found:
        return lines, None, False, False
    lines = _REFERENCE.sub(b"", lines)
    length: int | None = None
    connection: bytes | None = None
    is_chunked = False
    for name, value in found:
        lname = name.lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif lname == b"transfer-encoding":
            is_chunked = True
    if connection is None or connection.lower() == b"keep-alive":
        return lines, length, False, is_chunked
    tokens = _tokens(connection)
    named = tokens - _PROXY_OWNED
    if named:
        lines = b"".join(
            line + b"\r\n"
            for line in lines.split(b"\r\n")
            if line and line.partition(b":")[0].lower() not in named
        )
    return lines, length, b"close" in tokens, is_chunked


NAMES: Final = st.sampled_from(
    [b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"]
    + [b"transfer-encoding", b"x-te", b"tee", b"contents", b"server", b"set-cookie", b"x-a"]
    + [b"connectionx", b"date", b"content-type", b"etag", b"x-request-id", b"x-request-idx"]
).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: bytes(
            c - 32 if flip and 97 <= c <= 122 else c for c, flip in zip(name, upper, strict=True)
        )
    )
)
VALUE_PIECES: Final = st.sampled_from(
    [b"", b" ", b"\t", b"close", b"keep-alive", b"x-a", b"x-a, close", b"chunked", b"\n"]
    + [b"\r", b"Close", b"upgrade", b"te", b"a b", b"server", b"X-Request-Id"]
)
VALUES: Final = st.lists(VALUE_PIECES, max_size=4).map(b"".join)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = []
    for name in draw(st.lists(NAMES, max_size=8)):
        if name.lower() == b"content-length":
            value = str(draw(st.integers(0, 10**6))).encode()
        else:
            value = draw(VALUES)
        lines.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t "])) + value + b"\r\n")
    if draw(st.booleans()):
        lines.append(b"Content-Length: " + str(draw(st.integers(0, 99))).encode() + b"\r\n")
    return b"".join(draw(st.permutations(lines)))


@fuzz_settings(1500)
@given(heads())
def test_the_filter_agrees_with_the_reference_regex(lines: bytes) -> None:
    found = _response_block(b"\n" + lines)
    assert tuple(found[:4]) == reference_block(lines)
    block, *_, has_request_id = found
    assert has_request_id == (_REQUEST_ID.search(block) is not None)


def test_a_typical_head_loses_its_hop_by_hop_lines() -> None:
    lines = (
        b"Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n"
    )
    assert _response_block(b"\n" + lines) == (
        b"Server: nginx\r\nContent-Type: application/json\r\nSet-Cookie: a=1\r\n",
        17,
        False,
        False,
        False,
    )


def test_connection_close_and_the_headers_it_names_are_removed() -> None:
    lines = b"X-Secret: 1\r\nconnection: close, X-Secret\r\nTransfer-Encoding: chunked\r\nA: b\r\n"
    assert _response_block(b"\n" + lines) == (b"A: b\r\n", None, True, True, False)


def test_an_x_request_id_line_is_found_and_kept() -> None:
    lines = b"\nContent-Length: 2\r\nX-Request-ID: abc\r\nConnection: keep-alive\r\n"
    assert _response_block(lines) == (b"X-Request-ID: abc\r\n", 2, False, False, True)


def test_an_x_request_id_named_by_connection_is_removed_and_not_counted() -> None:
    """Named in Connection, the upstream's X-Request-Id is hop-by-hop: it is removed, so the
    client side must add the request's own (it would add none if told one was kept)."""
    lines = b"X-Request-Id: up-1\r\nConnection: X-Request-Id\r\nContent-Length: 2\r\n"
    assert _response_block(b"\n" + lines) == (b"", 2, False, False, False)
