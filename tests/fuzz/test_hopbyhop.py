"""The C filter of upstream response heads (``forwarding/_hopbyhop.c``) against the regex
filter it stands in front of (``upstream._response_block_slowly``).

For any head the fuzz suite makes, it answers exactly as the regex filter does, or hands the
head over (None); it answers the common heads itself, and hands over what it leaves to the
regex filter (``Connection`` naming anything but ``keep-alive``, a Content-Length that is
not plain digits, more hop-by-hop lines than it tracks). ``test_compiled.py`` checks that the
compiled build loads it.
"""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given

from dispatcher.forwarding.upstream import _response_block, _response_block_slowly

from .conftest import fuzz_settings
from .test_response_heads import heads

hopbyhop = pytest.importorskip(
    "dispatcher.forwarding._hopbyhop", reason="built by `make` (test_compiled checks it is)"
)
TYPICAL: Final = (
    b"\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 20:15:38 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 94\r\nConnection: keep-alive\r\n"
)


@fuzz_settings(1500)
@given(heads())
def test_the_c_filter_answers_as_the_regex_filter_or_hands_over(lines: bytes) -> None:
    found = hopbyhop.response_block(b"\n" + lines)
    if found is not None:
        assert found == _response_block_slowly(b"\n" + lines)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            TYPICAL,
            (
                b"Server: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 20:15:38 GMT\r\n"
                b"Content-Type: application/json\r\n",
                94,
                False,
                False,
                False,
            ),
            id="nginx",
        ),
        pytest.param(b"\nA: b\r\n", (b"A: b\r\n", None, False, False, False), id="no-hop-line"),
        pytest.param(b"\n", (b"", None, False, False, False), id="no-line"),
        pytest.param(
            b"\nCONTENT-LENGTH:\t007 \r\nX-Request-Id: a\r\nTE: x\r\nTrailer: y\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: z\r\nUpgrade: h2c\r\nZ: 1\r\n",
            (b"X-Request-Id: a\r\nZ: 1\r\n", 7, False, False, True),
            id="every-name",
        ),
        pytest.param(
            b"\nTransfer-Encoding: chunked\r\nConnection:  Keep-Alive \r\n",
            (b"", None, False, True, False),
            id="chunked",
        ),
        pytest.param(
            b"\nTe:x\nA: b\r\nConnection-X: 1\r\nTE : 2\r\n",
            (b"Te:x\nA: b\r\nConnection-X: 1\r\nTE : 2\r\n", None, False, False, False),
            id="near-misses",
        ),
    ],
)
def test_the_c_filter_answers_common_heads(lines: bytes, expected: tuple[object, ...]) -> None:
    assert hopbyhop.response_block(lines) == expected
    assert _response_block_slowly(lines) == expected


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(b"\nConnection: close\r\n", id="close"),
        pytest.param(b"\nConnection: x-a\r\nX-A: 1\r\n", id="naming-a-header"),
        pytest.param(b"\nConnection: keep-alive\r\nConnection: keep-alive\r\n", id="two"),
        pytest.param(b"\nContent-Length: +1\r\n", id="length-sign"),
        pytest.param(b"\nContent-Length: 1_0\r\n", id="length-underscore"),
        pytest.param(b"\nContent-Length: 1\x0b\r\n", id="length-other-space"),
        pytest.param(b"\nContent-Length: " + b"9" * 19 + b"\r\n", id="length-19-digits"),
        pytest.param(b"\nTE: x\r\n" * 17, id="17-hop-lines"),
        pytest.param(b"Server: x\r\n", id="no-leading-lf"),
    ],
)
def test_the_c_filter_hands_over_what_it_does_not_decide(lines: bytes) -> None:
    assert hopbyhop.response_block(lines) is None
    assert _response_block(lines) == _response_block_slowly(lines)


def test_the_c_filter_takes_bytes_only() -> None:
    with pytest.raises(TypeError, match="takes bytes"):
        hopbyhop.response_block(bytearray(TYPICAL))
