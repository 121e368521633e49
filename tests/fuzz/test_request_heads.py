"""Fuzzing the request head the dispatcher parses itself, over a socket, against one real
dispatcher whose workers are recording upstreams (``db``; ``gateway`` and ``auth`` share
``other``; the other seed services are not deployed).

For every request hypothesis draws (``heads.py``):

* the answer is a well-formed HTTP/1.1 response within a bound, with a status from
  ``ALLOWED`` (never a 500, never a hang); a refusal is JSON with ``error`` and ``message``
  and no traceback, and a refusal that closes says so and closes;
* the upstreams saw at most one request, well framed, never a smuggled one, with a Host
  and a path that are canonical and route, by the dispatcher's own ``normalize_*`` and route
  table, to the upstream that received it; no ``_`` names, no hop-by-hop fields, and the
  forwarding fields are the dispatcher's own;
* the dispatcher still serves a normal request afterwards.

For a clean request (``clean_requests``) the outcome is exact: ``heads.expect`` gives the
status, and for a forwarded request the upstream, the target, the body and every field.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from hypothesis import event, given

from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.types import WorkerName
from dispatcher.workers import UpstreamTarget
from tests.forwarding.upstreams import UpstreamRequest
from tests.robustness.conftest import Stack, assert_well_framed, running_stack

from .conftest import LoopThread, fuzz_settings
from .heads import (
    BODY_LIMIT,
    FORWARDING,
    HOP_BY_HOP,
    PROXY_OWNED,
    Expected,
    Sent,
    clean_requests,
    expect,
    expected_fields,
    expected_target,
    hostile_requests,
)
from .wire import Answer, WireResponse, exchange

LIMITS: Final = {"max_body_bytes": BODY_LIMIT, "body_idle_timeout": 1.0, "header_timeout": 1.0}
ANSWER_BOUND: Final = 6.0
"""Seconds within which any answer, and the close after a refusal, must have arrived: the
1 s header and body deadlines, the half-second sweep, and slack for a loaded machine."""
ALLOWED: Final = frozenset({200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 505})
CLOSING: Final = frozenset({400, 405, 408, 413, 414, 417, 431, 501, 505})


class Plane:
    """The running data plane and what the test reads from it."""

    # A plain class: hypothesis prints a dataclass argument field by field, settings and all.
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.probes = itertools.count()

    def __repr__(self) -> str:
        return f"<Plane port={self.port} db={self.stack.db!r} other={self.stack.other!r}>"

    @property
    def port(self) -> int:
        return self.stack.gateway.port

    def upstream_of(self, worker: str) -> str | None:
        """``db``, ``other`` or ``None`` (not deployed) for a worker name."""
        namespace = self.stack.gateway.running.snapshot.namespace
        deployed = namespace.workers.get(WorkerName(worker)) if namespace is not None else None
        target = deployed.deployment.target if deployed is not None else None
        if not isinstance(target, UpstreamTarget):
            return None
        url = target.urls[0].url
        return {self.stack.db.url: "db", self.stack.other.url: "other"}.get(url)

    def counts(self) -> tuple[int, int]:
        return len(self.stack.db.requests), len(self.stack.other.requests)

    def received_since(self, counts: tuple[int, int]) -> list[tuple[str, UpstreamRequest]]:
        db = [("db", r) for r in self.stack.db.requests[counts[0] :]]
        return db + [("other", r) for r in self.stack.other.requests[counts[1] :]]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    directory: Path = tmp_path_factory.mktemp("fuzz-heads")
    with LoopThread(lambda: running_stack(directory, limits=LIMITS)) as stack:
        yield Plane(stack)


# --- the targets ----------------------------------------------------------------------------


@fuzz_settings(ci_examples=300)
@given(sent=clean_requests())
def test_a_clean_request_gets_exactly_what_routing_says(plane: Plane, sent: Sent) -> None:
    running = plane.stack.gateway.running
    expected = expect(
        sent,
        running.snapshot.routes,
        plane.upstream_of,
        running.settings.own_hosts,
        running.settings.limits,
    )
    answer, received = send(plane, sent)
    response = answer.response
    context = f"expected {expected}; {sent.describe()}; got {response}"
    event(f"status {response.status}, {expected.upstream or 'answered by the dispatcher'}")
    assert response.status == expected.status, context
    check_answer(plane, sent, answer, received, context)
    if expected.upstream is None:
        assert received == [], context
    else:
        assert [name for name, _ in received] == [expected.upstream], context
        check_forwarded_exactly(sent, expected, received[0][1], context)
    if expected.status == 413:
        assert response.interim == (), context  # no 100 Continue before a refusal


@fuzz_settings(ci_examples=300)
@given(sent=hostile_requests())
def test_a_hostile_request_never_breaks_the_invariants(plane: Plane, sent: Sent) -> None:
    answer, received = send(plane, sent)
    response = answer.response
    context = f"{sent.describe()}; got {response}"
    event(f"status {response.status}")
    check_answer(plane, sent, answer, received, context)
    if sent.must_refuse:
        assert response.status >= 400 and received == [], context


def test_white_space_after_a_host_value_is_not_part_of_it(plane: Plane) -> None:
    raw = b"GET /ows HTTP/1.1\r\nHost: db.do \r\n\r\n"
    counts = plane.counts()
    answer = exchange(plane.port, raw, method="GET", timeout=ANSWER_BOUND)
    assert answer.response.status == 200, answer.response
    assert [(n, r.target) for n, r in plane.received_since(counts)] == [("db", b"/ows")]


def test_a_refused_head_request_has_no_body(plane: Plane) -> None:
    raw = b"HEAD /%2F HTTP/1.1\r\nHost: db.do\r\n\r\n"
    answer = exchange(plane.port, raw, method="HEAD", timeout=ANSWER_BOUND, closing=CLOSING)
    assert answer.response.status == 400, answer.response
    assert answer.closed, "bytes after the header block of a HEAD answer"


# --- one exchange and its checks ---------------------------------------------------------------


def send(plane: Plane, sent: Sent) -> tuple[Answer, list[tuple[str, UpstreamRequest]]]:
    """Send ``sent``; the answer and what the upstreams received meanwhile. A normal request
    follows on a new connection (the dispatcher still serves), and what reached the
    upstreams is counted after its answer, so a late forward of the fuzzed bytes shows."""
    counts = plane.counts()
    answer = exchange(
        plane.port,
        sent.encode(),
        method=sent.method_name,
        timeout=ANSWER_BOUND,
        closing=CLOSING,
    )
    probe = assert_serves_next(plane)
    received = [(n, r) for n, r in plane.received_since(counts) if r.target != probe]
    return answer, received


def assert_serves_next(plane: Plane) -> bytes:
    """A normal request on a new connection reaches ``db``; its target is returned."""
    target = b"/fuzz-probe/%d" % next(plane.probes)
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: db.do\r\nConnection: close\r\n\r\n"
    answer = exchange(plane.port, raw, method="GET", timeout=ANSWER_BOUND)
    assert answer.response.status == 200, answer.response
    assert json.loads(answer.response.body)["target"] == target.decode()
    return target


def check_answer(
    plane: Plane,
    sent: Sent,
    answer: Answer,
    received: list[tuple[str, UpstreamRequest]],
    context: str,
) -> None:
    """The invariants every answer keeps, clean or hostile."""
    response = answer.response
    assert response.status in ALLOWED, context
    assert b"Traceback" not in response.body, context
    if response.status >= 400:
        check_error_body(response, sent.method_name, context)
    if response.status in CLOSING:
        assert response.header(b"connection") == b"close", context
        if sent.method_name != "HEAD":  # a known bug: test_a_refused_head_request_has_no_body
            assert answer.closed is not False, context
    assert len(received) <= 1, context
    for upstream, request in received:
        check_forwarded(plane, upstream, request, context)
    if response.status == 200 and sent.method_name != "HEAD":
        answered_by_upstream = "method" in json.loads(response.body)
        assert answered_by_upstream == bool(received), context


def check_error_body(response: WireResponse, method: str, context: str) -> None:
    """A refusal is JSON naming the problem (an answer to HEAD has the header only)."""
    assert response.header(b"content-type") == b"application/json", context
    if method == "HEAD":
        return
    fields = json.loads(response.body)
    assert isinstance(fields.get("error"), str) and fields["error"], context
    assert isinstance(fields.get("message"), str) and fields["message"], context


def check_forwarded(plane: Plane, upstream: str, request: UpstreamRequest, context: str) -> None:
    """Any forwarded request: well framed, complete, never smuggled; canonical Host and
    path that route to ``upstream``; no '_' names, no hop-by-hop fields; one of each
    forwarding field, the dispatcher's."""
    context = f"{context}; upstream {upstream} got {request.raw_head!r}"
    assert_well_framed(request)
    assert request.is_complete, context
    assert b"smuggled" not in request.target, context
    path = request.target.partition(b"?")[0].decode("ascii")
    assert normalize_path(path) == path, context
    names = request.names
    assert not [n for n in names if b"_" in n], context
    framing = {b"te", b"transfer-encoding", b"content-length"}  # checked above and here
    assert not [n for n in names if n in HOP_BY_HOP - framing], context
    assert all(value == b"trailers" for value in request.values("te")), context
    assert request.values("x-forwarded-for") == [b"127.0.0.1"], context
    assert request.values("x-forwarded-proto") == [b"http"], context
    assert not request.values("forwarded") and not request.values("x-real-ip"), context
    forwarded_host = request.values("x-forwarded-host")
    assert len(forwarded_host) <= 1, context
    host = normalize_host(forwarded_host[0].decode("latin-1")) if forwarded_host else ""
    if forwarded_host:
        assert request.values("host") == forwarded_host, context  # preserve_host: as sent
    match = plane.stack.gateway.running.snapshot.routes.resolve(host, path)
    assert match is not None and plane.upstream_of(match.worker) == upstream, context


def check_forwarded_exactly(
    sent: Sent, expected: Expected, request: UpstreamRequest, context: str
) -> None:
    """A forwarded clean request: method, target, body and every field as documented."""
    context = f"{context}; upstream got {request.raw_head!r}"
    assert request.method == sent.method.decode(), context
    assert request.target == expected_target(sent, expected.path), context
    assert request.body == sent.payload, context
    host = sent.hosts[0] if sent.hosts else None
    if host is not None:
        assert request.values("host") == [host], context
        assert request.values("x-forwarded-host") == [host], context
        assert normalize_host(host.decode("latin-1")) == expected.host, context
    own = PROXY_OWNED | FORWARDING | {b"content-length", b"transfer-encoding"}
    end_to_end = [(n.lower(), v) for n, v in request.headers if n.lower() not in own]
    assert end_to_end == expected_fields(sent), context
