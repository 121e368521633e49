"""Request metrics, counted cheaply on the hot path and exported in Prometheus's format.

Per request, ``RequestMetrics.exchange_done`` does one dict lookup, a few list increments
and two short bucket scans: no label dict, no lock, no object per request. Everything else
(in-flight requests, connections, snapshot revision and age, store errors, upstream pools)
is read when ``/metrics`` is scraped, from the objects that already know it.

A process's figures are a ``ProcessSample``, a plain JSON-able dict: with ``--processes N``
each serving process writes its sample to a shared directory and the admin process adds
them up (``render`` takes any number of samples), so ``/metrics`` reports the whole group.

Example::

    metrics = RequestMetrics("production", access_log=None)
    listener = Listener(dispatcher, limits, observer=metrics)
    ...
    text = render([sample_process(metrics, gauges)], "production")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dispatcher import outcomes

if TYPE_CHECKING:
    from dispatcher.server.protocol import Exchange

DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Whole-request latency, seconds (1 ms to 30 s)."""
OVERHEAD_BUCKETS: Final[tuple[float, ...]] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
"""The dispatcher's own time per request, seconds (50 µs to 100 ms; the seed's SLO is 5 ms)."""

_STATUS_CLASSES: Final = 10  # index status // 100: 0 (no status) to 9
_STATUS_LABELS: Final = ("none",) + tuple(f"{n}xx" for n in range(1, 10))
_SLOTS: Final = len(outcomes.NAMES) * _STATUS_CLASSES

ProcessSample = dict[str, Any]
"""One process's figures: ``requests``, ``durations``, ``overhead`` and ``gauges``."""


class AccessSink(Protocol):
    """Where finished exchanges go for the access log (``logs.AccessLog``)."""

    def record(self, exchange: Exchange, finished: float, wall: float) -> None: ...


class ErrorSink(Protocol):
    """Where exchanges the dispatcher answered with an error of its own are logged."""

    def error(self, exchange: Exchange, finished: float) -> None: ...


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound the value does not pass (le is <=, like bisect_left). A scan from
        # the smallest: requests sit in the first buckets, and compiled, the scan is a few
        # C comparisons where bisect was a call with a boxed float (2,500 instructions a
        # request for the two histograms, under callgrind).
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.total += value

    def dump(self) -> list[Any]:
        return [self.counts, self.total]


class _WorkerCounters:
    """What one (service, worker) pair has seen."""

    __slots__ = ("requests", "duration")

    def __init__(self) -> None:
        self.requests = [0] * _SLOTS  # outcome * 10 + status class
        self.duration = _Histogram(DURATION_BUCKETS)


class RequestMetrics:
    """This process's request figures; the main listener's ``ExchangeObserver``."""

    __slots__ = ("environment", "_by_route", "_overhead", "_access", "_errors")

    def __init__(
        self,
        environment: str,
        *,
        access_log: AccessSink | None = None,
        error_log: ErrorSink | None = None,
    ) -> None:
        self.environment = environment
        self._by_route: dict[tuple[str, str], _WorkerCounters] = {}
        self._overhead = _Histogram(OVERHEAD_BUCKETS)
        self._access = access_log
        self._errors = error_log

    def exchange_done(self, exchange: Exchange) -> None:
        finished = perf_counter()
        head = exchange.head
        route = head.route if head is not None else None
        outcome = exchange.outcome
        if route is None and outcome == outcomes.ROUTED:
            # Only the dispatcher's own /health answers like this: a load balancer's probes
            # are not traffic, and would inflate the routing success rate. Logged, not counted.
            if self._access is not None:
                self._access.record(exchange, finished, time())
            return
        key = (route.service, route.worker) if route is not None else ("", "")
        counters = self._by_route.get(key)
        if counters is None:
            counters = self._by_route[key] = _WorkerCounters()
        status = exchange.status
        counters.requests[outcome * _STATUS_CLASSES + (status // 100 if status < 1000 else 0)] += 1
        started = exchange.started
        counters.duration.observe(finished - started)
        handed_off = exchange.handed_off
        self._overhead.observe((handed_off if handed_off else finished) - started)
        if self._access is not None:
            self._access.record(exchange, finished, time())
        if outcome != outcomes.ROUTED and self._errors is not None:
            self._errors.error(exchange, finished)

    def dump(self) -> ProcessSample:
        """The counters as plain data (JSON-able), for ``render`` here or in another process."""
        return {
            "requests": [
                [service, worker, counters.requests]
                for (service, worker), counters in self._by_route.items()
            ],
            "durations": [
                [service, worker, counters.duration.dump()]
                for (service, worker), counters in self._by_route.items()
            ],
            "overhead": self._overhead.dump(),
        }


GaugeSource = Callable[[], Mapping[str, Any]]
"""Returns this process's gauges by name (read at scrape time, never per request)."""


def sample_process(requests: RequestMetrics, gauges: GaugeSource) -> ProcessSample:
    """Everything one process reports: its request counters and its gauges now."""
    sample = requests.dump()
    sample["gauges"] = dict(gauges())
    sample["at"] = time()
    return sample


def render(samples: Iterable[ProcessSample], environment: str) -> bytes:
    """The Prometheus text exposition of the sum of ``samples`` (one per process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(list(samples), environment))
    return generate_latest(registry)


class _Collector:
    """A one-shot prometheus_client collector over merged process samples."""

    def __init__(self, samples: list[ProcessSample], environment: str) -> None:
        self._samples = samples
        self._environment = environment

    def collect(self) -> Iterator[Metric]:
        env = self._environment
        yield self._requests(env)
        yield self._durations(env)
        yield self._overhead(env)
        yield from _gauges(self._samples, env)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def _requests(self, env: str) -> Metric:
        family = CounterMetricFamily(
            "dispatcher_requests",
            "Requests by service, worker, outcome and status class.",
            labels=("environment", "service", "worker", "outcome", "status_class"),
        )
        merged: dict[tuple[str, str], list[int]] = {}
        for sample in self._samples:
            for service, worker, counts in sample.get("requests", ()):
                _add_into(merged.setdefault((service, worker), [0] * _SLOTS), counts)
        for (service, worker), counts in sorted(merged.items()):
            for index, count in enumerate(counts):
                if count:
                    outcome, status_class = divmod(index, _STATUS_CLASSES)
                    labels = [
                        env,
                        service,
                        worker,
                        outcomes.NAMES[outcome],
                        _STATUS_LABELS[status_class],
                    ]
                    family.add_metric(labels, count)
        return family

    def _durations(self, env: str) -> Metric:
        family = HistogramMetricFamily(
            "dispatcher_request_duration_seconds",
            "Whole-request latency, from the end of the request head to the end of the answer.",
            labels=("environment", "service"),
        )
        merged: dict[str, list[Any]] = {}
        for sample in self._samples:
            for service, _worker, (counts, total) in sample.get("durations", ()):
                into = merged.setdefault(service, [[0] * (len(DURATION_BUCKETS) + 1), 0.0])
                _add_into(into[0], counts)
                into[1] += total
        for service, (counts, total) in sorted(merged.items()):
            family.add_metric([env, service], _cumulative(DURATION_BUCKETS, counts), total)
        return family

    def _overhead(self, env: str) -> Metric:
        family = HistogramMetricFamily(
            "dispatcher_overhead_seconds",
            "The dispatcher's own time per request: until the request reached its worker "
            "(all of it for answers the dispatcher gives itself).",
            labels=("environment",),
        )
        counts = [0] * (len(OVERHEAD_BUCKETS) + 1)
        total = 0.0
        for sample in self._samples:
            overhead = sample.get("overhead")
            if overhead:
                _add_into(counts, overhead[0])
                total += overhead[1]
        family.add_metric([env], _cumulative(OVERHEAD_BUCKETS, counts), total)
        return family


def _add_into(into: list[int], counts: list[int]) -> None:
    for index, count in enumerate(counts[: len(into)]):
        into[index] += count


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return buckets


# Gauges every process reports: (name, help, how several processes combine).
_SUMMED: Final = {
    "dispatcher_requests_in_flight": "Requests being answered now.",
    "dispatcher_connections": "Open client connections.",
    "dispatcher_store_errors_total": "Failed registry reads (the last good snapshot kept serving).",
}
_COUNTERS: Final = frozenset({"dispatcher_store_errors_total"})


def _gauges(samples: list[ProcessSample], env: str) -> Iterator[Metric]:
    gauges = [sample.get("gauges", {}) for sample in samples]
    for name, text in _SUMMED.items():
        total = sum(float(g.get(name, 0)) for g in gauges)
        metric = name.removesuffix("_total")
        family: Metric
        if name in _COUNTERS:
            family = CounterMetricFamily(metric, text, labels=("environment",))
        else:
            family = GaugeMetricFamily(metric, text, labels=("environment",))
        family.add_metric([env], total)
        yield family
    revisions = [
        g["dispatcher_snapshot_revision"] for g in gauges if "dispatcher_snapshot_revision" in g
    ]
    family = GaugeMetricFamily(
        "dispatcher_snapshot_revision",
        "Registry revision served (the lowest among the processes).",
        labels=("environment",),
    )
    if revisions:
        family.add_metric([env], min(revisions))
    yield family
    ages = [
        g["dispatcher_snapshot_age_seconds"]
        for g in gauges
        if "dispatcher_snapshot_age_seconds" in g
    ]
    family = GaugeMetricFamily(
        "dispatcher_snapshot_age_seconds",
        "Seconds since the registry was last confirmed current (the oldest among processes).",
        labels=("environment",),
    )
    if ages:
        family.add_metric([env], max(ages))
    yield family
    family = GaugeMetricFamily(
        "dispatcher_processes", "Serving processes reporting.", labels=("environment",)
    )
    family.add_metric([env], len(samples))
    yield family
    yield from _upstream_families(gauges)


def _upstream_families(gauges: list[Mapping[str, Any]]) -> Iterator[Metric]:
    pools: dict[tuple[str, str], float] = {}
    failures: dict[str, float] = {}
    for g in gauges:
        for upstream, idle, busy in g.get("upstream_connections", ()):
            pools[(upstream, "idle")] = pools.get((upstream, "idle"), 0) + idle
            pools[(upstream, "busy")] = pools.get((upstream, "busy"), 0) + busy
        for reason, count in g.get("upstream_failures", {}).items():
            failures[reason] = failures.get(reason, 0) + count
    connections = GaugeMetricFamily(
        "dispatcher_upstream_connections",
        "Connections to upstream workers, idle in the pool or carrying a request.",
        labels=("upstream", "state"),
    )
    for (upstream, state), count in sorted(pools.items()):
        connections.add_metric([upstream, state], count)
    yield connections
    family = CounterMetricFamily(
        "dispatcher_upstream_failures",
        "Upstream failures by reason, apart from the dispatcher's own errors.",
        labels=("reason",),
    )
    for reason, count in sorted(failures.items()):
        family.add_metric([reason], count)
    yield family
