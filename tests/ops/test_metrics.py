"""``GET /metrics`` on the admin listener: requests by service, outcome and status class,
latency and overhead histograms, and the gauges read at scrape time."""

from __future__ import annotations

import socket
from bisect import bisect_left
from pathlib import Path

import pytest

from dispatcher.metrics import DURATION_BUCKETS, OVERHEAD_BUCKETS, _Histogram
from tests.forwarding.conftest import request_bytes, serve
from tests.forwarding.upstreams import RecordingUpstream, echo, stall

from .conftest import get_admin, scrape, total, value, wait_until

ENV = "development"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_requests_are_counted_by_service_outcome_and_status_class(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(echo()) as db,
        serve(
            tmp_path,
            {"db": db.url, "gateway": f"http://127.0.0.1:{_closed_port()}"},
        ) as gateway,
    ):
        for _ in range(3):
            assert (await gateway.request("/ok", host="db.do")).status == 200
        assert (await gateway.request("/x", host="unknown.example")).status == 404
        assert (await gateway.request("/x", host="auth.do")).status == 404  # not deployed
        assert (await gateway.request("/x", host="gateway.do")).status == 502
        client = await gateway.connect()
        client.send(b"GET /a b HTTP/1.1\r\nHost: db.do\r\n\r\n")
        assert (await client.response()).status == 400

        samples = await scrape(gateway.running)

    name = "dispatcher_requests_total"
    routed = {"environment": ENV, "service": "db", "worker": "db", "outcome": "routed"}
    assert value(samples, name, **routed, status_class="2xx") == 3
    assert value(
        samples, name, environment=ENV, service="", worker="",
        outcome="service_not_found", status_class="4xx",
    ) == 1  # fmt: skip
    assert value(
        samples, name, environment=ENV, service="auth", worker="auth",
        outcome="not_deployed", status_class="4xx",
    ) == 1  # fmt: skip
    assert value(
        samples, name, environment=ENV, service="gateway", worker="gateway",
        outcome="bad_gateway", status_class="5xx",
    ) == 1  # fmt: skip
    assert value(
        samples, name, environment=ENV, service="", worker="",
        outcome="bad_request", status_class="4xx",
    ) == 1  # fmt: skip
    assert total(samples, name) == 7
    assert total(samples, "dispatcher_upstream_failures_total", reason="bad_gateway") == 1


async def test_latency_and_overhead_histograms_count_every_request(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        for _ in range(4):
            assert (await gateway.request("/", host="db.do")).status == 200
        assert (await gateway.request("/", host="nowhere.example")).status == 404
        samples = await scrape(gateway.running)

    count = value(
        samples, "dispatcher_request_duration_seconds_count", environment=ENV, service="db"
    )
    assert count == 4
    inf = value(
        samples, "dispatcher_request_duration_seconds_bucket",
        environment=ENV, service="db", le="+Inf",
    )  # fmt: skip
    assert inf == 4
    assert (
        value(samples, "dispatcher_request_duration_seconds_sum", environment=ENV, service="db") > 0
    )
    overhead = value(samples, "dispatcher_overhead_seconds_count", environment=ENV)
    assert overhead == 5
    # The overhead of a proxied request ends when its head is written upstream: it is part
    # of the whole request's time, never more.
    assert value(samples, "dispatcher_overhead_seconds_sum", environment=ENV) <= (
        value(samples, "dispatcher_request_duration_seconds_sum", environment=ENV, service="db")
        + value(samples, "dispatcher_request_duration_seconds_sum", environment=ENV, service="")
    )


@pytest.mark.parametrize("bounds", [DURATION_BUCKETS, OVERHEAD_BUCKETS])
def test_a_value_falls_in_the_first_bucket_it_does_not_pass(bounds: tuple[float, ...]) -> None:
    """Prometheus's le is <=: a value equal to a bound counts in that bound's bucket; past the
    last bound, in +Inf. The scan must agree with bisect_left everywhere."""
    values = [0.0, bounds[0] / 2, *bounds, *(b * 1.0001 for b in bounds), bounds[-1] * 10]
    histogram = _Histogram(bounds)
    expected = [0] * (len(bounds) + 1)
    for seconds in values:
        histogram.observe(seconds)
        expected[bisect_left(bounds, seconds)] += 1
    assert histogram.counts == expected
    assert histogram.counts[0] == 3  # 0, half the first bound, the first bound itself
    assert histogram.counts[-1] == 2  # just past the last bound, and ten times it
    assert histogram.total == pytest.approx(sum(values))


async def test_gauges_show_in_flight_requests_snapshot_and_upstream_pool(tmp_path: Path) -> None:
    async with (
        RecordingUpstream.start(stall()) as slow,
        RecordingUpstream.start(echo()) as db,
        serve(tmp_path, {"db": db.url, "gateway": slow.url}) as gateway,
    ):
        assert (await gateway.request("/", host="db.do")).status == 200
        client = await gateway.connect()
        client.send(request_bytes("GET", "/", host="gateway.do"))
        await slow.wait_requests(1)
        samples = await scrape(gateway.running)
        assert value(samples, "dispatcher_requests_in_flight", environment=ENV) == 1
        assert value(samples, "dispatcher_connections", environment=ENV) >= 1
        revision = gateway.running.snapshot.revision
        assert value(samples, "dispatcher_snapshot_revision", environment=ENV) == revision
        assert 0 <= value(samples, "dispatcher_snapshot_age_seconds", environment=ENV) < 60
        assert value(samples, "dispatcher_store_errors_total", environment=ENV) == 0
        assert value(samples, "dispatcher_processes", environment=ENV) == 1
        assert value(samples, "dispatcher_upstream_connections", upstream=db.url, state="idle") == 1
        assert (
            value(samples, "dispatcher_upstream_connections", upstream=slow.url, state="busy") == 1
        )

        client.reset()
        await wait_until(lambda: gateway.running.listener.in_flight == 0)
        samples = await scrape(gateway.running)
        assert value(samples, "dispatcher_requests_in_flight", environment=ENV) == 0
        counted = value(
            samples, "dispatcher_requests_total", environment=ENV, service="gateway",
            worker="gateway", outcome="client_closed", status_class="4xx",
        )  # fmt: skip
        assert counted == 1  # the client left before the answer: nginx's 499


async def test_metrics_need_no_token_and_are_prometheus_text(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        response = await get_admin(gateway.running, "/metrics")
    assert response.status == 200
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    text = response.body.decode()
    assert "# TYPE dispatcher_requests_total counter" in text
    assert "# TYPE dispatcher_request_duration_seconds histogram" in text


async def test_admin_requests_are_not_counted_as_routed_traffic(tmp_path: Path) -> None:
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        for _ in range(3):
            await scrape(gateway.running)
        samples = await scrape(gateway.running)
    assert total(samples, "dispatcher_requests_total") == 0
