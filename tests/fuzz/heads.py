"""Hypothesis strategies for request heads, clean and hostile, and what each must become.

A ``Sent`` is one request as bytes on the wire plus what the test knows about it. Two
strategies build them:

* ``clean_requests()``: requests within the grammar llhttp accepts (one request line,
  header lines of a token, a colon and a value without CR, LF or NUL, consistent framing),
  whose method, target, Host values, header fields and body are otherwise drawn freely:
  percent-escapes, dot segments, ``%2F``, unicode, ports, brackets, control bytes in the
  Host, forwarding headers a client must not be able to set, hop-by-hop headers, names
  with ``_``. For these the outcome is exact: ``expect()`` computes it with the
  dispatcher's own ``normalize_host``, ``normalize_path`` and route table, in the order
  the protocol checks a head.
* ``hostile_requests()``: a clean request with one to three mutations from the
  ROBUSTNESS.md checklist (obs-fold, bare CR/LF, NUL, bad names, conflicting or obfuscated
  Content-Length and Transfer-Encoding, request-line junk, absolute-form, oversized lines).
  For these only the invariants hold; a mutation that must be refused sets
  ``must_refuse``, and then nothing may reach an upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from hypothesis import strategies as st

from dispatcher.errors import BadRequest
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RouteTable
from dispatcher.settings import Limits

Field = tuple[bytes, bytes]

BODY_LIMIT: Final = 1024
SMUGGLED: Final = b"GET /smuggled HTTP/1.1\r\nHost: db.do\r\n\r\n"
"""Sent after the head of a request that must be refused: if any byte after the refusal
were read as a request, this one would reach the ``db`` upstream."""
WITHOUT_BODY: Final = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")
WITH_BODY: Final = (b"POST", b"PUT", b"PATCH")
TCHAR: Final = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
NAME_CHARS: Final = TCHAR.replace("_", "")
VISIBLE: Final = "".join(chr(c) for c in range(0x21, 0x7F))
PCHAR: Final = "ABCXYZabcxyz0189-._~!$&'()*+,;=:@"


# --- what is sent ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """One request on the wire; ``mutations`` is empty for a clean request."""

    method: bytes
    target: bytes
    version: bytes
    hosts: tuple[bytes, ...]
    fields: tuple[Field, ...]
    framing: tuple[Field, ...] = ()
    body: bytes = b""
    payload: bytes = b""
    """What the upstream must receive as the body (the body with its chunk framing undone)."""
    mutations: tuple[str, ...] = ()
    raw_lines: tuple[tuple[int, bytes], ...] = ()
    """Hostile header lines, each inserted verbatim before the header line at its index."""
    request_line: bytes | None = None
    eol: bytes = b"\r\n"
    preamble: bytes = b""
    must_refuse: bool = False

    @property
    def is_clean(self) -> bool:
        return not self.mutations

    @property
    def method_name(self) -> str:
        """How to read the response: HEAD means no body."""
        line = self.request_line if self.request_line is not None else self.method
        return "HEAD" if line.startswith(b"HEAD ") or line == b"HEAD" else "GET"

    def header_lines(self) -> list[bytes]:
        lines = [b"Host: " + host for host in self.hosts]
        lines += [name + b": " + value for name, value in (*self.fields, *self.framing)]
        for index, raw in self.raw_lines:
            lines.insert(min(index, len(lines)), raw)
        return lines

    def encode(self) -> bytes:
        line = self.request_line
        if line is None:
            line = self.method + b" " + self.target + b" " + self.version
        head = self.eol.join([line, *self.header_lines()]) + self.eol + self.eol
        return self.preamble + head + self.body

    def describe(self) -> str:
        """The request as the failure message shows it."""
        return f"mutations={list(self.mutations)} request={self.encode()[:2000]!r}"


# --- clean requests -------------------------------------------------------------------------

VOCABULARY: Final = st.sampled_from(
    [b"api", b"db", b"auth", b"admin", b"health", b"v1", b"DB", b"Api", b"x", b"items"]
)
PCHARS: Final = st.text(alphabet=PCHAR, min_size=1, max_size=8).map(str.encode)
DOTS: Final = st.sampled_from(
    [b".", b"..", b"", b"...", b"%2e", b"%2E%2e", b".%2E", b"%2e.", b"%2E%2E", b"%7e", b"%41"]
)
PLAIN_SEGMENTS: Final = st.one_of(VOCABULARY, VOCABULARY, VOCABULARY, PCHARS, DOTS)
SEGMENTS: Final = st.one_of(
    VOCABULARY,
    PCHARS,
    DOTS,
    st.sampled_from(
        [
            b"%2F",
            b"%2f",
            b"%5C",
            b"%5c",
            b"%00",
            b"%zz",
            b"%",
            b"%1",
            b"%c0%ae",
            b"%C3%A9",
            b"%ff",
            b"%41",
            b"%7e",
            b"%7E",
            b"%25",
            b"%2541",
            b"\\",
            b"#",
            b"a#b",
            b";v=1",
        ]
    ),
    st.binary(min_size=1, max_size=3).map(lambda b: b"".join(b"%%%02X" % c for c in b)),
    st.binary(min_size=1, max_size=3).map(lambda b: b"".join(b"%%%02x" % c for c in b)),
    # Unicode and control characters, raw (UTF-8): never valid in a request target.
    st.text(min_size=1, max_size=4).map(lambda s: s.encode()),
)
QUERIES: Final = st.one_of(
    st.none(),
    st.text(alphabet=VISIBLE, max_size=16).map(str.encode),
    st.sampled_from([b"a=1;b=2", b"x=%2F..%2e/", b"q=a&q=b", b"", b"?", b"a=%00", b"a#frag"]),
)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    """Origin-form targets; ``\\r`` and ``\\n`` never appear (they would end the line)."""
    # Seven in ten targets use only segments that may survive normalization, so that most
    # requests get forwarded and what reaches the upstream is checked.
    wild = draw(st.integers(0, 9)) < 3
    segments = draw(st.lists(SEGMENTS if wild else PLAIN_SEGMENTS, max_size=6))
    path = b"/" + b"/".join(segments)
    if draw(st.booleans()) and draw(st.booleans()):
        path = b"/" + path  # a leading "//"
    query = draw(QUERIES)
    target = path if query is None else path + b"?" + query
    return target.replace(b"\r", b"").replace(b"\n", b"")


KNOWN_HOSTS: Final = (
    # The hosts that route to a deployed worker come twice: most requests should be forwarded.
    *(b"db.do", b"gateway.do", b"auth.do", b"api.do", b"do") * 2,
    b"schedule.do",
    b"v2.gateway.do",
    b"v1.db.do",
    b"localhost",
    b"127.0.0.1",
    b"[::1]",
    b"unknown.example",
    b"admin",
    b"db.do.evil",
)
ODD_HOSTS: Final = (
    b"example.com/\\:552",
    b"..examp-LE.com",
    b"localhost\x02",
    b"a\x00b",
    b"[abcd::e\x0c98/x]",
    b"1.2.3.4:9000:80",
    b"[::1",
    b"::1",
    b"[::ffff:1.2.3.4]",
    b"[fe80::1%25eth0]",
    b"a..b",
    b"-a.do",
    b"a" * 64 + b".do",
    b"@db.do",
    b"db.do@evil",
    b"db.do#x",
    b"db.do/x",
    b"db.do\\x",
    b"",
    b"db. do",
    b"xn--nxasmq6b.do",
    "dé.do".encode(),
    "db.do\u212a".encode(),
    b"db.do:65536",
    b"db.do:99999",
    b"db.do:0x50",
    b"db.do:-1",
    b"db.do: 80",
    b"DB.DO.:88",
    b"db.do..",
)


@st.composite
def host_values(draw: st.DrawFn) -> bytes:
    """Host values without CR, LF, or white space at either end (see ``test_request_heads``
    for the trailing-white-space case)."""
    if draw(st.integers(0, 9)) < 7:
        value = draw(st.sampled_from(KNOWN_HOSTS).flatmap(_spellings))
    else:
        value = draw(
            st.one_of(
                st.sampled_from(ODD_HOSTS),
                st.binary(max_size=12),
                st.text(max_size=8).map(str.encode),
            )
        )
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def _spellings(host: bytes) -> st.SearchStrategy[bytes]:
    """``host`` in random case, with or without a trailing dot, with or without a port."""
    ports = st.one_of(
        st.just(b""),
        st.just(b""),
        st.integers(0, 65535).map(lambda p: b":%d" % p),
        st.integers(0, 70000).map(lambda p: b":%d" % p),
        st.just(b":"),
        st.text(alphabet="0123456789", min_size=1, max_size=7).map(lambda p: b":" + p.encode()),
    )
    cases = st.lists(st.booleans(), min_size=len(host), max_size=len(host))
    return st.tuples(cases, st.booleans(), ports).map(
        lambda drawn: (
            bytes(
                c ^ 0x20 if up and 97 <= c <= 122 else c
                for c, up in zip(host, drawn[0], strict=True)
            )
            + (b"." if drawn[1] and not host.startswith(b"[") else b"")
            + drawn[2]
        )
    )


FIELD_VALUES: Final = st.one_of(
    st.text(alphabet=VISIBLE + " \t", max_size=20).map(str.encode),
    st.binary(max_size=8).map(lambda b: bytes(c for c in b if c >= 0x80 or c in (0x09, 0x20))),
).map(lambda v: v.strip(b" \t"))
CUSTOM_FIELDS: Final = st.tuples(
    st.text(alphabet=NAME_CHARS, min_size=1, max_size=10).map(lambda n: b"X-Z" + n.encode()),
    FIELD_VALUES,
).map(lambda field: (field,))
NAMED_GROUPS: Final[tuple[tuple[Field, ...], ...]] = (
    # Forwarding headers a client must not be able to set (ROBUSTNESS.md 19, 52).
    ((b"X-Forwarded-For", b"1.2.3.4"),),
    ((b"X-Forwarded-For", b"127.0.0.1"),),
    ((b"X-Real-IP", b"127.0.0.1"),),
    ((b"Forwarded", b"for=127.0.0.1;host=admin"),),
    ((b"X-Forwarded-Host", b"admin"),),
    ((b"X-Forwarded-Proto", b"https"),),
    # Names with '_' (20): dropped, never read as the dashed name.
    ((b"X_Forwarded_For", b"127.0.0.1"),),
    ((b"Content_Length", b"0"),),
    ((b"Transfer_Encoding", b"chunked"),),
    ((b"X_Real_IP", b"127.0.0.1"),),
    # Hop-by-hop (17, 47): none reaches the upstream, TE: trailers excepted.
    ((b"Keep-Alive", b"timeout=5"),),
    ((b"Proxy-Connection", b"keep-alive"),),
    ((b"TE", b"trailers"),),
    ((b"TE", b"gzip"),),
    ((b"Trailer", b"X-T"),),
    ((b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")),
    ((b"Connection", b"keep-alive, X-Zsecret"), (b"X-Zsecret", b"1")),
    ((b"Connection", b"X-Forwarded-For, Host, Content-Length"),),
    ((b"Connection", b"keep-alive"),),
    ((b"Connection", b"close"),),
    ((b"Cookie", b"a=1"), (b"Cookie", b"b=2")),
    ((b"Accept", b"*/*"),),
)
FIELD_GROUPS: Final = st.one_of(CUSTOM_FIELDS, st.sampled_from(NAMED_GROUPS))


@st.composite
def chunked_body(draw: st.DrawFn, payload: bytes) -> bytes:
    """``payload`` in chunks of drawn sizes, with optional extensions and trailers."""
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    body = b""
    for piece in pieces:
        if piece:
            size = b"%x" % len(piece)
            size = size.upper() if draw(st.booleans()) else size
            extension = draw(st.sampled_from([b"", b"", b";a=b", b";x"]))
            body += size + extension + b"\r\n" + piece + b"\r\n"
    trailers = draw(st.sampled_from([b"", b"", b"X-Trailer: 1\r\n"]))
    return body + b"0\r\n" + trailers + b"\r\n"


@st.composite
def clean_requests(draw: st.DrawFn) -> Sent:
    method = draw(st.sampled_from(WITHOUT_BODY + WITH_BODY))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0"]))
    host = draw(host_values())
    # Mostly one Host; sometimes none (refused on HTTP/1.1), sometimes two (refused).
    hosts = draw(st.sampled_from([(host,)] * 20 + [(), (host, b"db.do")]))
    fields = tuple(f for group in draw(st.lists(FIELD_GROUPS, max_size=8)) for f in group)
    sent = Sent(method, draw(targets()), version, hosts, fields)
    sent = replace(sent, preamble=draw(st.sampled_from([b"", b"", b"", b"\r\n"])))
    kind = draw(st.sampled_from(["length", "chunked", "none"] if method in WITH_BODY else ["none"]))
    if kind == "none":
        return sent
    payload = draw(st.binary(max_size=BODY_LIMIT + 64 if kind == "length" else BODY_LIMIT))
    expect: tuple[Field, ...] = ((b"Expect", b"100-continue"),) if draw(st.booleans()) else ()
    if kind == "length":
        length = (b"0" * draw(st.integers(0, 2))) + b"%d" % len(payload)
        framing = ((b"Content-Length", length),)
        return replace(sent, fields=fields + expect, framing=framing, body=payload, payload=payload)
    coding = draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))
    body = draw(chunked_body(payload))
    return replace(
        sent,
        fields=fields + expect,
        framing=((b"Transfer-Encoding", coding),),
        body=body,
        payload=payload,
    )


# --- hostile requests -------------------------------------------------------------------------

Mutation = Callable[[Sent], Sent]

HOSTILE_LINES: Final = (
    b"X-Zf: a\r\n folded",
    b"X-Zf: a\r\n\tfolded",
    b"X-Za: a\nX-Zb: b",
    b"Visible: :/\rSmuggled: :)",
    b"X\x00Y: a",
    b"X-Zn: a\x00b",
    b"X-Zs : a",
    b"Host : evil.do",
    b"Content-Length : 5",
    b"Transfer-Encoding : chunked",
    b"NoColon",
    b": x",
    b"X\xff: a",
    b"Content-Length\x85: 5",
    b"X@Y: a",
    b"Host: other.do",
    b"Host:",
    b"Expect: 100-continue ",
    b"Expect: 101-whatever",
    b"X-Zu: \xe2\x80\xa8",
    b"\tX-Zl: leading-tab",
    b" X-Zl: leading-space",
)
# Framings that must be refused, with no byte of them forwarded (ROBUSTNESS.md 1-5).
REFUSED_FRAMINGS: Final[tuple[tuple[bytes, ...], ...]] = (
    (b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: chunked", b"Content-Length: 5"),
    (b"Content-Length: 1", b"Content-Length: 0"),
    (b"Content-Length: 1000,1000",),
    (b"Content-Length: 1000 1000",),
    (b"Content-Length: 1000.1000",),
    (b"Content-Length: +10",),
    (b"Content-Length: -1",),
    (b"Content-Length: 0x10",),
    (b"Content-Length: 1_0",),
    (b"Content-Length: 1Z",),
    (b"Content-Length: ",),
    (b"Content-Length: 18446744073709551616",),
    (b"Transfer-Encoding:\x0bchunked",),
    (b"Transfer-Encoding: \xa0chunked\xa0",),
    (b"Transfer-Encoding: ,chunked",),
    (b"Transfer-Encoding: chunked\x11",),
    (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: identity",),
    (b"Transfer-Encoding: gzip",),
    (b"Transfer-Encoding: chunked, identity",),
    (b"Transfer-Encoding: xchunked",),
    (b"Transfer-Encoding: gzip, chunked",),
    (b"Transfer-Encoding: chunked, chunked",),
)
REQUEST_LINES: Final = (
    b"get / HTTP/1.1",
    b"G\x01T / HTTP/1.1",
    b"GE(T / HTTP/1.1",
    b"FOO / HTTP/1.1",
    b"CONNECT db.do:443 HTTP/1.1",
    b"GET / HTTP/1.32",
    b"GET / HTTP/2.0",
    b"GET / HTTP/0.9",
    b"GET / HTTP/\r\r1.1",
    b"GET / http/1.1",
    b"GET / HTTP/1.1 extra",
    b"GET /",
    b"GET http://other.example/x HTTP/1.1",
    b"GET http://db.do/ HTTP/1.1",
    b"GET https://db.do:443/api/db HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
    b"GET db.do:80 HTTP/1.1",
    b"GET / / HTTP/1.1",
    b"GET /\x02 HTTP/1.1",
    b"GET /%zz HTTP/1.1",
    b"GET /a#frag HTTP/1.1",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1",
)


def _insert_lines(lines: Sequence[bytes]) -> st.SearchStrategy[Mutation]:
    """Insert ``lines`` (adjacent) somewhere among the header lines."""

    def build(index: int) -> Mutation:
        def mutate(sent: Sent) -> Sent:
            raw = tuple((index, line) for line in reversed(lines))
            return replace(sent, raw_lines=sent.raw_lines + raw)

        return mutate

    return st.integers(0, 12).map(build)


def _refused_framing(lines: tuple[bytes, ...]) -> Mutation:
    """Replace the framing with one that must be refused; what follows is a body whose
    end a desynchronized reader might take as the start of a smuggled request."""

    def mutate(sent: Sent) -> Sent:
        return replace(
            sent,
            framing=(),
            raw_lines=sent.raw_lines + tuple((99, line) for line in lines),
            body=b"0\r\n\r\n" + SMUGGLED,
            payload=b"",
            must_refuse=True,
        )

    return mutate


def _request_line(line: bytes) -> Mutation:
    def mutate(sent: Sent) -> Sent:
        # Every one of these lines is invalid or refused by policy (absolute-form, CONNECT,
        # '*', versions other than 1.0 and 1.1, a target over the 8 KiB limit).
        return replace(sent, request_line=line, must_refuse=True)

    return mutate


def _transfer_encoding_on_http_1_0(sent: Sent) -> Sent:
    return replace(
        sent,
        version=b"HTTP/1.0",
        framing=((b"Transfer-Encoding", b"chunked"),),
        body=b"0\r\n\r\n" + SMUGGLED,
        payload=b"",
        must_refuse=True,
    )


def _bare_lf(sent: Sent) -> Sent:
    return replace(sent, eol=b"\n", must_refuse=True)


def _many_headers(sent: Sent) -> Sent:
    lines = tuple((0, b"X-Zm%d: v" % n) for n in range(101))
    return replace(sent, raw_lines=sent.raw_lines + lines, must_refuse=True)


def _long_header_line(sent: Sent) -> Sent:
    return replace(
        sent, raw_lines=((0, b"X-Zl: " + b"v" * 8200), *sent.raw_lines), must_refuse=True
    )


def _large_header_block(sent: Sent) -> Sent:
    lines = tuple((0, b"X-Zb%d: %b" % (n, b"v" * 4000)) for n in range(9))
    return replace(sent, raw_lines=sent.raw_lines + lines, must_refuse=True)


def _random_line(line: bytes) -> Mutation:
    def mutate(sent: Sent) -> Sent:
        return replace(sent, raw_lines=((3, line), *sent.raw_lines))

    return mutate


MUTATIONS: Final[st.SearchStrategy[tuple[str, Mutation]]] = st.one_of(
    st.sampled_from(HOSTILE_LINES).flatmap(
        lambda line: _insert_lines([line]).map(lambda m: (f"line {line[:40]!r}", m))
    ),
    st.sampled_from(REFUSED_FRAMINGS).map(lambda f: (f"framing {f!r}", _refused_framing(f))),
    st.sampled_from(REQUEST_LINES).map(lambda r: (f"request line {r[:40]!r}", _request_line(r))),
    st.sampled_from(
        [
            ("TE on HTTP/1.0", _transfer_encoding_on_http_1_0),
            ("bare LF line endings", _bare_lf),
            ("101 headers", _many_headers),
            ("8200-byte header line", _long_header_line),
            ("36 KB header block", _large_header_block),
        ]
    ),
    # Without LF: a line break there could end the head early and make a second request of
    # what follows, which would not be smuggling but plain pipelining.
    st.binary(min_size=1, max_size=24)
    .filter(lambda b: b"\n" not in b)
    .map(lambda b: (f"random line {b!r}", _random_line(b))),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> Sent:
    sent = draw(clean_requests())
    for name, mutate in draw(st.lists(MUTATIONS, min_size=1, max_size=3)):
        sent = mutate(sent)
        sent = replace(sent, mutations=(*sent.mutations, name))
    return sent


# --- the oracle for clean requests ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """What the dispatcher must answer; ``upstream`` names the worker's upstream when the
    request must be forwarded (then ``host``/``path`` are the canonical pair it routes on)."""

    status: int
    upstream: str | None = None
    host: str = ""
    path: str = ""
    reason: str = ""


def expect(
    sent: Sent,
    routes: RouteTable,
    upstream_of: Callable[[str], str | None],
    own_hosts: frozenset[str],
    limits: Limits,
) -> Expected:
    """The answer to a clean request, checked in the order the protocol checks a head
    (``HttpProtocol.on_headers_complete``, ``_build_head``, ``_check_body_announcement``)
    then dispatched as ``Dispatcher.handle`` does. ``upstream_of(worker)`` says which
    upstream serves a deployed worker (``None``: not deployed)."""
    assert sent.is_clean
    if re.search(rb"[^\x21-\x7e]", sent.target):
        return Expected(400, reason="llhttp takes only visible ASCII in a request target")
    is_chunked = any(name.lower() == b"transfer-encoding" for name, _ in sent.framing)
    if is_chunked and sent.version == b"HTTP/1.0":
        return Expected(400, reason="Transfer-Encoding on HTTP/1.0")
    canonical = _canonical(sent)
    if isinstance(canonical, Expected):
        return canonical
    host, path = canonical
    length = next((int(v) for n, v in sent.framing if n == b"Content-Length"), 0)
    if length > limits.max_body_bytes:
        return Expected(413, reason="Content-Length over the limit")
    if path == "/health" and host in own_hosts:
        return Expected(200, reason="the dispatcher's own health endpoint")
    match = routes.resolve(host, path)
    if match is None:
        return Expected(404, reason=f"no route for {host}{path}")
    upstream = upstream_of(match.worker)
    if upstream is None:
        return Expected(404, reason=f"worker {match.worker} is not deployed")
    return Expected(200, upstream, host, path, reason=f"routed to {match.worker}")


def _canonical(sent: Sent) -> tuple[str, str] | Expected:
    target = sent.target
    if not target.startswith(b"/"):
        return Expected(400, reason="not origin-form")
    raw_path, question, query = target.partition(b"?")
    if b"#" in query:
        return Expected(400, reason="a fragment in the query")
    try:
        path = normalize_path(raw_path.decode("latin-1"))
    except BadRequest as exc:
        return Expected(400, reason=f"path: {exc}")
    if len(sent.hosts) > 1:
        return Expected(400, reason="two Host headers")
    if not sent.hosts:
        if sent.version == b"HTTP/1.1":
            return Expected(400, reason="no Host on HTTP/1.1")
        return "", path
    if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", sent.hosts[0]):
        return Expected(400, reason="llhttp refuses control bytes in a field value")
    try:
        return normalize_host(sent.hosts[0].decode("latin-1")), path
    except BadRequest as exc:
        return Expected(400, reason=f"host: {exc}")


def expected_target(sent: Sent, path: str) -> bytes:
    """What the upstream must see as the target: the raw target when its path was already
    canonical, else the canonical path and the query as sent (docs/forwarding.md)."""
    raw_path, question, query = sent.target.partition(b"?")
    if raw_path == path.encode():
        return sent.target
    return path.encode() + question + query


# Request headers the proxy owns or removes (docs/forwarding.md, "What the upstream receives").
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"content-length",
    }
)
FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
PROXY_OWNED: Final = frozenset({b"host", b"x-request-id"}) | FORWARDING


def expected_fields(sent: Sent) -> list[Field]:
    """The client's end-to-end fields, as the upstream must see them: names lower-cased, in
    order, repeats kept; without names holding '_', hop-by-hop fields (``TE: trailers``
    excepted), fields the client's ``Connection`` names, and forwarding fields from an
    untrusted client."""
    named = _connection_tokens(sent.fields)
    kept: list[Field] = []
    for name, value in sent.fields:
        lower = name.lower()
        if b"_" in lower or lower in PROXY_OWNED:
            continue
        if lower == b"te":
            if value.strip().lower() == b"trailers":
                kept.append((b"te", b"trailers"))
            continue
        if lower in HOP_BY_HOP or lower in named:
            continue
        kept.append((lower, value))
    return kept


def _connection_tokens(fields: Sequence[Field]) -> frozenset[bytes]:
    values = [v for n, v in fields if n.lower() == b"connection"]
    tokens = {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}
    return frozenset(tokens - PROXY_OWNED - {b"content-length", b"transfer-encoding"})
