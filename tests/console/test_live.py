"""``LiveMetrics``: the console's figures from Prometheus text. The text comes from a real
``prometheus_client`` registry holding the ``/metrics`` contract's names, so the parser
reads what a Prometheus library writes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dispatcher.console.live import (
    LiveMetrics,
    Totals,
    histogram_quantile,
    parse_totals,
    rates_between,
)

BUCKETS = (0.0001, 0.001, 0.01)


class Exporter:
    """The contract's metrics on an own registry, as the dispatcher exports them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("environment", "service", "worker", "outcome", "status_class")
        self.requests = Counter("dispatcher_requests", "Requests.", labels, registry=self.registry)
        self.overhead = Histogram(
            "dispatcher_overhead_seconds", "Overhead.", ("environment",), buckets=BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "dispatcher_requests_in_flight", "In flight.", ("environment",), registry=self.registry
        )
        self.revision = Gauge(
            "dispatcher_snapshot_revision", "Revision.", ("environment",), registry=self.registry
        )

    def count(
        self, n: int, outcome: str, status_class: str, worker: str = "gateway",
        environment: str = "production",
    ) -> None:  # fmt: skip
        service = worker if outcome not in ("service_not_found",) else ""
        worker = worker if outcome not in ("service_not_found",) else ""
        self.requests.labels(environment, service, worker, outcome, status_class).inc(n)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_totals_add_up_by_outcome_status_and_worker() -> None:
    exporter = Exporter()
    exporter.count(90, "routed", "2xx")
    exporter.count(3, "routed", "5xx")
    exporter.count(2, "bad_gateway", "5xx", worker="db")
    exporter.count(4, "service_not_found", "4xx")
    exporter.count(1, "not_deployed", "4xx", worker="mcp")
    exporter.count(50, "routed", "2xx", environment="staging")  # another environment
    exporter.in_flight.labels("production").set(7)
    exporter.revision.labels("production").set(42)
    for seconds in (0.00005, 0.0005, 0.0005, 0.005):
        exporter.overhead.labels("production").observe(seconds)
    totals = parse_totals(exporter.text(), "production", at=10.0)
    assert (totals.requests, totals.routed, totals.not_found, totals.server_errors) == (
        100,
        93,
        5,
        5,
    )
    assert {name: (w.requests, w.server_errors) for name, w in totals.workers.items()} == {
        "gateway": (93, 3), "db": (2, 2), "mcp": (1, 0)
    }  # fmt: skip
    assert totals.overhead == ((0.0001, 1), (0.001, 3), (0.01, 4), (math.inf, 4))
    assert (totals.in_flight, totals.revision) == (7, 42)


def test_rates_come_from_the_difference_between_two_readings() -> None:
    exporter = Exporter()
    exporter.count(10, "routed", "2xx")
    older = parse_totals(exporter.text(), "production", at=100.0)
    exporter.count(36, "routed", "2xx")
    exporter.count(2, "routed", "5xx")
    exporter.count(2, "service_not_found", "4xx")
    for _ in range(40):
        exporter.overhead.labels("production").observe(0.0005)
    newer = parse_totals(exporter.text(), "production", at=104.0)
    rates = rates_between(older, newer, now=105.0)
    assert rates is not None
    assert (rates.ago, rates.rate, rates.success) == (1.0, 10.0, 0.95)
    assert (rates.not_found, rates.server_errors) == (0.5, 0.5)
    assert rates.p50 == pytest.approx(0.00055)
    assert rates.p99 == pytest.approx(0.000991)


def test_the_success_rate_leaves_out_what_the_client_spoiled() -> None:
    exporter = Exporter()
    older = parse_totals(exporter.text(), "production", at=0.0)
    exporter.count(18, "routed", "2xx")
    exporter.count(2, "service_not_found", "4xx")
    exporter.count(5, "bad_request", "4xx")
    exporter.count(5, "client_closed", "4xx")
    newer = parse_totals(exporter.text(), "production", at=1.0)
    rates = rates_between(older, newer, now=1.0)
    assert rates is not None
    assert (rates.rate, rates.success) == (30.0, 0.9)  # 18 of the 20 it is judged on


def test_a_counter_that_went_down_was_reset() -> None:
    older = Totals(at=0.0, requests=500, judged=500, routed=500)
    newer = Totals(at=2.0, requests=8, judged=8, routed=6)
    rates = rates_between(older, newer, now=2.0)
    assert rates is not None and (rates.rate, rates.success) == (4.0, 0.75)


def test_no_traffic_has_no_success_rate_and_no_latency() -> None:
    rates = rates_between(Totals(at=0.0), Totals(at=2.0), now=2.0)
    assert rates is not None
    assert (rates.rate, rates.success, rates.p50, rates.p99) == (0.0, None, None, None)
    assert rates_between(Totals(at=2.0), Totals(at=2.0), now=2.0) is None


@pytest.mark.parametrize(
    ("quantile", "buckets", "expected"),
    [(0.5, [(1.0, 10), (2.0, 20), (math.inf, 20)], 1.0),
     (0.75, [(1.0, 10), (2.0, 20), (math.inf, 20)], 1.5),
     (0.5, [(0.5, 0), (1.0, 4), (math.inf, 4)], 0.75),
     (0.99, [(1.0, 1), (2.0, 1), (math.inf, 100)], 2.0),  # in +Inf: the highest finite bound
     (0.5, [(1.0, 0), (math.inf, 0)], None),
     (0.5, [], None)],
)  # fmt: skip
def test_histogram_quantile_interpolates_as_prometheus_does(
    quantile: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert histogram_quantile(quantile, buckets) == expected


async def test_the_report_has_a_point_per_reading_and_the_figures_of_now() -> None:
    exporter = Exporter()
    moments = iter([0.0, 2.0, 4.0, 14.0, 16.0])

    async def read() -> str:
        return exporter.text()

    live = LiveMetrics(read, environment="production", clock=lambda: next(moments))
    assert live.report()["available"] is False
    for step in range(5):
        exporter.count(2 * step, "routed", "2xx")
        await live.sample()
    report = live.report()
    assert report["available"] is True and report["problem"] is None
    assert [p["ago"] for p in report["points"]] == [14.0, 12.0, 2.0, 0.0]
    assert [p["rate"] for p in report["points"]] == [1.0, 2.0, 0.6, 4.0]  # totals 0 2 6 12 20
    assert report["current"]["rate"] == 1.167  # (20 - 6) / 12: since the reading 10 s back
    assert report["workers"] == {"gateway": {"rate": 1.167, "errors": 0.0}}


@pytest.mark.parametrize(
    ("answer", "problem"),
    [(None, "the admin listener has no /metrics"),
     ("this is { not prometheus", "/metrics is not valid Prometheus text")],
)  # fmt: skip
async def test_a_missing_or_broken_metrics_page_is_reported(
    answer: str | None, problem: str
) -> None:
    async def read() -> str | None:
        return answer

    live = LiveMetrics(read, environment="production")
    await live.sample()
    report = live.report()
    assert report["available"] is False
    assert report["problem"].startswith(problem)
    assert report["points"] == [] and report["current"] is None


async def test_a_failing_reader_does_not_stop_the_readings() -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        raise OSError("listener gone")

    live = LiveMetrics(read, environment="production")
    await live.sample()
    assert live.report()["problem"] == "reading /metrics failed: listener gone"
    assert calls == 1
