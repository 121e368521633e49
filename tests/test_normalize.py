"""Canonical host and path: the documented policy as tables, plus its two guarantees as properties.

The tables carry ROBUSTNESS.md cases 22-23 (Host) and 26-30 (paths).
"""

from __future__ import annotations

import re
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import BadRequest
from dispatcher.normalize import MAX_HOST_LENGTH, normalize_host, normalize_path
from dispatcher.routing import SEED_SERVICES, RouteTable, RoutingConfig
from dispatcher.types import ServiceName

LABEL_63: Final = "a" * 63
HOST_253: Final = ".".join([LABEL_63] * 3 + ["b" * 61])  # 3 * 64 + 61 = 253 characters

# --- normalize_host ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("api.do", "api.do"),
        ("API.DO", "api.do"),
        ("AbC.Example.COM.:88", "abc.example.com"),  # case 23
        ("gateway.do.", "gateway.do"),
        ("gateway.do:443", "gateway.do"),
        ("gateway.do.:443", "gateway.do"),
        ("gateway.do:", "gateway.do"),  # RFC 3986 §3.2.3: the port may be empty
        ("a.do:0", "a.do"),
        ("a.do:65535", "a.do"),
        ("a.do:00080", "a.do"),
        ("do", "do"),
        ("localhost", "localhost"),
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:9000", "1.2.3.4"),
        ("Under_Score.do", "under_score.do"),
        ("-.do", "-.do"),
        (f"{LABEL_63}.do", f"{LABEL_63}.do"),
        (HOST_253, HOST_253),
        (HOST_253.upper() + ".:1", HOST_253),
        ("[::1]", "[::1]"),  # IPv6 literals, case 23
        ("[::1]:8080", "[::1]"),
        ("[::1]:", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("[::FFFF:1.2.3.4]:0", "[::ffff:1.2.3.4]"),
    ],
)
def test_valid_host(raw: str, canonical: str) -> None:
    assert normalize_host(raw) == canonical


def invalid(raw: str) -> str:
    return f"invalid Host header: {raw!r}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", invalid("")),
        ("1.2.3.4:9000:80", invalid("1.2.3.4:9000:80")),  # case 23: stricter than nginx
        ("a.do:65536", "invalid port in Host header: '65536'"),
        ("a.do:99999", "invalid port in Host header: '99999'"),
        ("a.do:123456", invalid("a.do:123456")),
        ("a.do:-1", invalid("a.do:-1")),
        ("a.do:8o", invalid("a.do:8o")),
        ("a.do: 80", invalid("a.do: 80")),
        ("a.do:80:", invalid("a.do:80:")),
        ("..examp-LE.com", invalid("..examp-LE.com")),
        ("example.com/\\:552", invalid("example.com/\\:552")),
        (".a.do", invalid(".a.do")),
        (".", invalid(".")),
        ("a..do", invalid("a..do")),
        ("a.do..", invalid("a.do..")),
        ("a\x00b", invalid("a\x00b")),
        ("localhost\x02", invalid("localhost\x02")),
        ("a.do\n", invalid("a.do\n")),
        ("a.do\r\nX: y", invalid("a.do\r\nX: y")),
        ("a\tb.do", invalid("a\tb.do")),
        ("exa mple.com", invalid("exa mple.com")),
        ("user@a.do", invalid("user@a.do")),
        ("a.do/x", invalid("a.do/x")),
        ("é.do", invalid("é.do")),
        ("bücher.de", invalid("bücher.de")),
        ("例え.jp", invalid("例え.jp")),
        ("\u0130.do", invalid("\u0130.do")),  # İ lower-cases to 'i' + a combining dot
        (f"{LABEL_63}x.do", invalid(f"{LABEL_63}x.do")),
        ("[::1", invalid("[::1")),
        ("::1", invalid("::1")),
        ("[abcd::e\f98/x]", invalid("[abcd::e\f98/x]")),
        ("[::g]", invalid("[::g]")),
        ("[fe80::1%25eth0]", invalid("[fe80::1%25eth0]")),
        ("[::1]:99999", "invalid port in Host header: '99999'"),
        ("[::1]x", invalid("[::1]x")),
        ("[::1].", invalid("[::1].")),
    ],
)
def test_invalid_host(raw: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalize_host(raw)
    assert type(caught.value) is BadRequest
    assert caught.value.status == 400
    assert caught.value.message == message


def long_host(length: int) -> str:
    """A host of ``length`` characters whose labels are all valid."""
    host = ((LABEL_63 + ".") * 5)[:length]
    return host[:-1] + "b" if host.endswith(".") else host


@pytest.mark.parametrize("length", [MAX_HOST_LENGTH + 1, 300])
def test_host_too_long(length: int) -> None:
    host = long_host(length)
    assert len(host) == length
    with pytest.raises(BadRequest) as caught:
        normalize_host(host)
    assert caught.value.message == f"Host header longer than {MAX_HOST_LENGTH} characters"


def test_invalid_host_message_is_shortened() -> None:
    raw = "x" * 300 + "/"
    with pytest.raises(BadRequest) as caught:
        normalize_host(raw)
    assert caught.value.message == invalid("x" * 80 + "...")


@pytest.mark.parametrize(
    "raw",
    # A non-ASCII letter that str.lower() maps to ASCII, and bracketed non-IPv6 runs.
    ["webhoo\u212as.do", "[...]", "[1.2.3.4]", "[::1::2]", "[12345::]", "[:::]"],
)
def test_host_policy_gaps(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_host(raw)


# --- normalize_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/api/db/query", "/api/db/query"),
        ("/api/db/", "/api/db/"),
        # case 26: dot segments, RFC 3986 §5.2.4, also when spelled with escapes
        ("/a/../admin", "/admin"),
        ("/a/b/../../admin", "/admin"),
        ("/foo/bar/..", "/foo/"),  # as nginx-tests expect
        ("/foo/bar/../", "/foo/"),
        ("/a/b/.", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/..", "/"),
        ("/%2e/admin", "/admin"),
        ("/a/%2e%2e/admin", "/admin"),
        ("/a/.%2E/admin", "/admin"),
        ("/a/%2E%2e/", "/"),
        ("/api/db/../auth/x", "/api/auth/x"),
        ("/api/db/%2e%2e/auth/x", "/api/auth/x"),
        # segments that merely contain dots are ordinary
        ("/a/..b", "/a/..b"),
        ("/a/.b/c.", "/a/.b/c."),
        ("/...", "/..."),
        # case 28: merged slashes
        ("//admin", "/admin"),
        ("/api//v1", "/api/v1"),
        ("/a//b//", "/a/b/"),
        ("///", "/"),
        ("//x//..//y", "/y"),
        # unreserved escapes decoded (RFC 3986 §6.2.2.2), the others kept, upper-cased
        ("/api/%64b/x", "/api/db/x"),
        ("/api/%64%62/x", "/api/db/x"),
        ("/%41%42", "/AB"),
        ("/%2D%5F%2E%7E%7e", "/-_.~~"),
        ("/%3a", "/%3A"),
        ("/%3F%23", "/%3F%23"),
        ("/%20", "/%20"),
        ("/%01", "/%01"),  # case 29: other controls stay encoded, forwarded as such
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),  # decoded once only
        ("/%e2%82%ac", "/%E2%82%AC"),
        ("/a;b=c,d", "/a;b=c,d"),
    ],
)
def test_valid_path(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


FORBIDDEN: Final = (
    "request path contains a forbidden character (control, space, non-ASCII, '\\' or '#')"
)
NOT_A_PATH: Final = "request target must be a path starting with '/'"
CLIMBS: Final = "path climbs above the root"
NOT_UTF8: Final = "percent-escapes in the path are not valid UTF-8"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", NOT_A_PATH),
        ("api/db", NOT_A_PATH),
        ("*", NOT_A_PATH),
        ("http://other.example/x", NOT_A_PATH),
        # case 27: backslashes and encoded separators are refused, never decoded and re-routed
        ("/a\\b", FORBIDDEN),
        ("/%2F", "encoded '%2F' is not allowed in the path"),
        ("/api%2fdb", "encoded '%2f' is not allowed in the path"),
        ("/%5C", "encoded '%5C' is not allowed in the path"),
        ("/a%5cb", "encoded '%5c' is not allowed in the path"),
        ("/api..%2f", "encoded '%2f' is not allowed in the path"),  # case 30
        # case 29
        ("/%00", "encoded '%00' is not allowed in the path"),
        ("/%zz", "malformed percent-escape in path: '%zz'"),
        ("/%g1", "malformed percent-escape in path: '%g1'"),
        ("/%1/", "malformed percent-escape in path: '%1/'"),
        ("/%%41", "malformed percent-escape in path: '%%4'"),
        ("/a%", "malformed percent-escape in path: '%'"),
        ("/%c0%ae", NOT_UTF8),
        ("/%c0%af", NOT_UTF8),
        ("/%E2%82", NOT_UTF8),
        ("/%ff", NOT_UTF8),
        # case 12: raw controls, spaces, non-ASCII, fragments
        ("/a b", FORBIDDEN),
        ("/a\tb", FORBIDDEN),
        ("/a\x00b", FORBIDDEN),
        ("/a\x02", FORBIDDEN),
        ("/a\x7f", FORBIDDEN),
        ("/a\r\nX: y", FORBIDDEN),
        ("/é", FORBIDDEN),
        ("/a#frag", FORBIDDEN),
        # case 26: escaping the root
        ("/..", CLIMBS),
        ("/../x", CLIMBS),
        ("/a/../..", CLIMBS),
        ("/a/../../b", CLIMBS),
        ("/%2e%2e/admin", CLIMBS),
        ("/.%2E/admin", CLIMBS),
        ("//..//admin", CLIMBS),
    ],
)
def test_invalid_path(raw: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalize_path(raw)
    assert type(caught.value) is BadRequest
    assert caught.value.status == 400
    assert caught.value.message == message


def test_truncated_escape_names_the_escape() -> None:
    # Only '%' is quoted for '/%4': the message is right that it is malformed, if terse.
    with pytest.raises(BadRequest, match=r"^malformed percent-escape in path: '%'$"):
        normalize_path("/%4")


# --- Routing on normalized input (cases 26, 28, 30) ------------------------------------------

BILLING_TABLE: Final = RouteTable.from_config(
    RoutingConfig(
        services=(*RoutingConfig().services, ServiceName("billing")),
        paths={"/v1/billing": ServiceName("billing")},
    )
)


@pytest.mark.parametrize(
    ("host", "raw_path", "service"),
    [
        ("api.do", "/api/%64b/x", "db"),
        ("api.do", "/api/db/../auth/x", "auth"),
        ("api.do", "/api/x/../db", "db"),
        ("api.do", "//api//db", "db"),
        ("api.do", "/api/./auth/./login", "auth"),
        ("api.do", "/api/auth/..", "gateway"),  # '/api/' is not under '/api/auth'
        ("api.do", "/v1/billing/%2e%2e/x", "gateway"),
        ("api.do", "/v1/%62illing/x", "billing"),
        ("api.do", "/v1//billing", "billing"),
        ("unknown.do", "/apiary/db", None),  # case 30: segment boundary
        ("unknown.do", "/api/db%2e%2e/x", None),
    ],
)
def test_routing_sees_the_canonical_path(host: str, raw_path: str, service: str | None) -> None:
    match = BILLING_TABLE.resolve(normalize_host(host), normalize_path(raw_path))
    assert (None if match is None else match.service) == service


# --- Properties -------------------------------------------------------------------------------

PATH_ALPHABET: Final = "/.%2eEfF05cC~-_aAb?;"


@settings(max_examples=500, deadline=None)
@given(
    tail=st.one_of(
        st.text(alphabet=PATH_ALPHABET, max_size=30),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
    )
)
def test_normalize_path_is_idempotent_and_canonical(tail: str) -> None:
    try:
        canonical = normalize_path("/" + tail)
    except BadRequest:
        return
    assert normalize_path(canonical) == canonical
    assert canonical.startswith("/")
    for fragment in ("//", "/./", "/../"):
        assert fragment not in canonical
    assert not canonical.endswith(("/.", "/.."))


UNRESERVED: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
SEGMENT: Final = st.integers(0, 3).flatmap(
    lambda n: (
        st.text(alphabet=UNRESERVED, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
        if n == 0
        else st.sampled_from([*SEED_SERVICES, "api", "v1", "billing", "x"])
    )
)
HOST: Final = st.sampled_from(["api.do", "do", "db.do", "v2.gateway.do", "unknown.do"])


@st.composite
def spelled_segment(draw: st.DrawFn, segment: str) -> str:
    """``segment`` with some characters percent-encoded (either hex case), after some noise."""
    spelled = ""
    for char in segment:
        escape = f"%{ord(char):02X}"
        spelled += draw(st.sampled_from([char, char, escape, escape.lower()]))
    noise = draw(st.sampled_from(["", "", "./", "x/../", "./x/%2E%2e/", "%2e/"]))
    separator = draw(st.sampled_from(["/", "/", "//", "///"]))
    return separator + noise + spelled


@st.composite
def path_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A canonical path P and one of its many spellings."""
    segments = draw(st.lists(SEGMENT, max_size=4))
    has_trailing_slash = draw(st.booleans())
    if segments and has_trailing_slash:
        segments.append("")  # a trailing slash is part of the canonical path
    canonical = "/" + "/".join(segments)
    spelled = "".join([draw(spelled_segment(s)) for s in segments]) or "/"
    return canonical, spelled


@settings(max_examples=500, deadline=None)
@given(host=HOST, spelling=path_spellings())
def test_no_spelling_reaches_another_service(host: str, spelling: tuple[str, str]) -> None:
    canonical, spelled = spelling
    assert normalize_path(canonical) == canonical
    assert normalize_path(spelled) == canonical
    assert BILLING_TABLE.resolve(host, normalize_path(spelled)) == BILLING_TABLE.resolve(
        host, canonical
    )


def test_spellings_generator_produces_noise() -> None:
    # Guards the property above against a generator that only ever yields canonical paths.
    seen: list[str] = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(spelling=path_spellings())
    def collect(spelling: tuple[str, str]) -> None:
        seen.append(spelling[1])

    collect()
    assert any(re.search(r"%[0-9a-fA-F]{2}", s) for s in seen)
    assert any("/./" in s or "/../" in s for s in seen)
    assert any("//" in s for s in seen)
