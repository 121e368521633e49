"""Properties of the pure functions the request head goes through before routing:
``normalize_host``, ``normalize_path`` and ``RouteTable.resolve``.

Inputs are drawn as the protocol receives them (raw bytes decoded as latin-1) and as any
unicode text. Each function either refuses with exactly ``BadRequest`` (status 400, a JSON
body naming the problem) and nothing else, or returns a canonical value that it maps to
itself. A canonical path has no ``//``, no dot segment, and only upper-case escapes of
characters that must stay escaped; a canonical host is lower-case, without port or
trailing dot. ``resolve`` never raises on canonical input, answers the same twice, and
only returns a rule that really covers the host and path.
"""

from __future__ import annotations

import json
import re
from typing import Final

from hypothesis import event, given
from hypothesis import strategies as st

from dispatcher.errors import BadRequest
from dispatcher.normalize import MAX_HOST_LENGTH, normalize_host, normalize_path
from dispatcher.routing import ANY_HOST, RouteTable, RoutingConfig, RuleKind

from .conftest import fuzz_settings

UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PATH_PIECES: Final = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%", "%1", "%zz", "%41"]
    + ["%7e", "%25", "%c0%ae", "%C3%A9", "\\", "#", "?", " ", "\t", "\x00", "é", "api", "db"]
)
RAW_PATHS: Final = st.one_of(
    st.lists(PATH_PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces)),
    st.binary(max_size=24).map(lambda raw: "/" + raw.decode("latin-1")),
    st.text(max_size=24),
)
HOST_PIECES: Final = st.sampled_from(
    ["db", "do", ".", "..", ":", ":80", ":65536", "[", "]", "::1", "-", "_", "A", "K", "\u212a"]
    + ["\x00", " ", "/", "@", "%", "1.2.3.4", "x" * 63, "y" * 64]
)
RAW_HOSTS: Final = st.one_of(
    st.lists(HOST_PIECES, max_size=8).map("".join),
    st.binary(max_size=24).map(lambda raw: raw.decode("latin-1")),
    st.text(max_size=24),
)
# Inputs that mostly normalize, so that resolution is exercised on every kind of rule.
ROUTABLE_HOSTS: Final = st.tuples(
    st.sampled_from(["", "v2.", "x.", "1-2."]),
    st.sampled_from(["db.do", "gateway.do", "api.do", "do", "auth.do", "queue.do", "z.do"]),
    st.sampled_from(["", ".", ":8080", ".:1"]),
).map(lambda parts: "".join(parts).upper() if parts[0] == "x." else "".join(parts))
ROUTABLE_PATHS: Final = st.lists(
    st.sampled_from(["api", "db", "auth", "schedule", "dbx", "API", ".", "..", "%2e", ""]),
    max_size=5,
).map(lambda segments: "/" + "/".join(segments))
SEED_TABLE: Final = RouteTable.from_config(RoutingConfig())
ESCAPE: Final = re.compile(r"%([0-9A-F]{2})")


def refusal(error: BadRequest) -> None:
    """A refusal is exactly ``BadRequest``: a 400 whose JSON body names the problem."""
    assert type(error) is BadRequest
    assert error.status == 400
    body = json.loads(error.body())
    assert body["error"] and body["message"], body


@fuzz_settings(ci_examples=500)
@given(raw=RAW_PATHS)
def test_a_path_is_refused_as_a_bad_request_or_canonical(raw: str) -> None:
    try:
        path = normalize_path(raw)
    except BadRequest as error:
        refusal(error)
        return
    assert normalize_path(path) == path
    assert path.startswith("/") and "//" not in path
    assert not {".", ".."} & set(path.split("/"))
    assert path.isascii() and path.isprintable() and not set(" \\#") & set(path)
    assert path.count("%") == len(ESCAPE.findall(path)), path
    for escape in ESCAPE.findall(path):
        byte = int(escape, 16)
        assert chr(byte) not in UNRESERVED and byte not in (0x00, 0x2F, 0x5C), path


@fuzz_settings(ci_examples=500)
@given(raw=RAW_HOSTS)
def test_a_host_is_refused_as_a_bad_request_or_canonical(raw: str) -> None:
    try:
        host = normalize_host(raw)
    except BadRequest as error:
        refusal(error)
        return
    assert normalize_host(host) == host
    assert host == host.lower() and host.isascii() and len(host) <= MAX_HOST_LENGTH
    if host.startswith("["):
        assert host.endswith("]"), host
        return
    assert ":" not in host and not host.endswith("."), host
    assert all(1 <= len(label) <= 63 for label in host.split(".")), host
    # Every spelling of the same host names it: case, a trailing dot, a port.
    assert normalize_host(host.upper() + ".:8080") == host


@fuzz_settings(ci_examples=500)
@given(
    raw_host=st.integers(0, 3).flatmap(lambda n: RAW_HOSTS if n == 0 else ROUTABLE_HOSTS),
    raw_path=st.integers(0, 3).flatmap(lambda n: RAW_PATHS if n == 0 else ROUTABLE_PATHS),
)
def test_resolution_of_canonical_input_is_total_stable_and_covering(
    raw_host: str, raw_path: str
) -> None:
    try:
        host, path = normalize_host(raw_host), normalize_path(raw_path)
    except BadRequest as error:
        refusal(error)
        return
    match = SEED_TABLE.resolve(host, path)
    event("no match" if match is None else f"{match.route.kind} rule")
    assert SEED_TABLE.resolve(host, path) == match  # the versioned-subdomain memo included
    assert RouteTable.from_config(RoutingConfig()).resolve(host, path) == match
    if match is None:
        return
    route = match.route
    if route.kind in (RuleKind.HOST, RuleKind.DEFAULT):
        assert route.host == host and str(match.worker) == str(route.service)
    elif route.kind is RuleKind.SUBDOMAIN:
        label, _, rest = host.partition(".")
        assert rest == route.host and match.worker == f"{route.service}-{label}"
    else:
        prefix = route.path_prefix
        assert route.host in (host, ANY_HOST)
        assert path == prefix or path.startswith(prefix + "/"), (path, prefix)
