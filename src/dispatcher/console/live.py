"""``LiveMetrics``: the console's live figures, from the dispatcher's own ``GET /metrics``.

A background task reads the Prometheus text every ``interval`` seconds, keeps the totals
the console needs (``Totals``) for the last ``window`` seconds, and turns the deltas
between readings into rates: requests per second, routing success, 404 and 5xx rates,
overhead latency quantiles, and per-worker request and error rates.

Example::

    live = LiveMetrics(read_metrics, environment="production")
    async with live:                      # samples every 2 s until closed
        live.report()["current"]["rate"]  # requests per second over the last 10 s

The metric names are the contract of ``/metrics``::

    dispatcher_requests_total{environment,service,worker,outcome,status_class}
    dispatcher_overhead_seconds{environment}        (histogram)
    dispatcher_requests_in_flight{environment}
    dispatcher_snapshot_revision{environment}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger("dispatcher.console")

SAMPLE_INTERVAL: Final = 2.0
"""Seconds between two readings of ``/metrics``."""
WINDOW: Final = 300.0
"""Seconds of history the charts show."""
RECENT: Final = 10.0
"""Seconds the "now" figures average over (one reading apart is too noisy)."""
REQUESTS: Final = "dispatcher_requests_total"
OVERHEAD: Final = "dispatcher_overhead_seconds"
IN_FLIGHT: Final = "dispatcher_requests_in_flight"
REVISION: Final = "dispatcher_snapshot_revision"
NOT_FOUND_OUTCOMES: Final = frozenset({"service_not_found", "not_deployed"})
CLIENT_SPOILED: Final = frozenset({"bad_request", "client_closed"})
"""Left out of the routing success rate, as docs/operations.md defines it."""

MetricsReader = Callable[[], Awaitable[str | None]]
"""Returns the exposition text of ``/metrics``, or ``None`` when it is not there."""


@dataclass(frozen=True, slots=True)
class WorkerTotals:
    """Counters of one worker: every request, and those answered 5xx."""

    requests: float = 0.0
    server_errors: float = 0.0


@dataclass(frozen=True, slots=True)
class Totals:
    """One reading of ``/metrics`` for one environment: the counters the console needs."""

    at: float
    requests: float = 0.0
    judged: float = 0.0
    """Requests the success rate is judged on: all but those the client spoiled itself."""
    routed: float = 0.0
    not_found: float = 0.0
    server_errors: float = 0.0
    workers: Mapping[str, WorkerTotals] = field(default_factory=lambda: MappingProxyType({}))
    overhead: tuple[tuple[float, float], ...] = ()
    """Cumulative histogram buckets ``(le, count)``, sorted by ``le`` (``inf`` last)."""
    in_flight: float | None = None
    revision: float | None = None


@dataclass(frozen=True, slots=True)
class Rates:
    """What happened between two readings, per second (success as a fraction of 1)."""

    ago: float
    rate: float
    success: float | None
    not_found: float
    server_errors: float
    p50: float | None
    p99: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ago": round(self.ago, 1),
            "rate": round(self.rate, 3),
            "success": None if self.success is None else round(self.success, 5),
            "not_found": round(self.not_found, 3),
            "server_errors": round(self.server_errors, 3),
            "p50": self.p50,
            "p99": self.p99,
        }


def parse_totals(text: str, environment: str, at: float) -> Totals:
    """The console's totals from Prometheus text, for ``environment`` only."""
    requests = judged = routed = not_found = server_errors = 0.0
    workers: dict[str, list[float]] = {}
    buckets: dict[float, float] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("environment") != environment:
                continue
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == REQUESTS:
                requests += value
                judged += 0.0 if labels.get("outcome") in CLIENT_SPOILED else value
                routed += value if labels.get("outcome") == "routed" else 0.0
                not_found += value if labels.get("outcome") in NOT_FOUND_OUTCOMES else 0.0
                is_error = labels.get("status_class") == "5xx"
                server_errors += value if is_error else 0.0
                worker = labels.get("worker", "")
                if worker:
                    counts = workers.setdefault(worker, [0.0, 0.0])
                    counts[0] += value
                    counts[1] += value if is_error else 0.0
            elif name == OVERHEAD + "_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif name in (IN_FLIGHT, REVISION):
                gauges[name] = value
    return Totals(
        at=at,
        requests=requests,
        judged=judged,
        routed=routed,
        not_found=not_found,
        server_errors=server_errors,
        workers=MappingProxyType({w: WorkerTotals(c[0], c[1]) for w, c in workers.items()}),
        overhead=tuple(sorted(buckets.items())),
        in_flight=gauges.get(IN_FLIGHT),
        revision=gauges.get(REVISION),
    )


def rates_between(older: Totals, newer: Totals, now: float) -> Rates | None:
    """Rates over the time between two readings; ``None`` when no time passed."""
    elapsed = newer.at - older.at
    if elapsed <= 0:
        return None
    requests = _delta(newer.requests, older.requests)
    judged = _delta(newer.judged, older.judged)
    buckets = _bucket_deltas(older.overhead, newer.overhead)
    return Rates(
        ago=now - newer.at,
        rate=requests / elapsed,
        success=_delta(newer.routed, older.routed) / judged if judged > 0 else None,
        not_found=_delta(newer.not_found, older.not_found) / elapsed,
        server_errors=_delta(newer.server_errors, older.server_errors) / elapsed,
        p50=histogram_quantile(0.5, buckets),
        p99=histogram_quantile(0.99, buckets),
    )


def worker_rates(older: Totals, newer: Totals) -> dict[str, dict[str, float | None]]:
    """Per worker: requests per second and the fraction answered 5xx (``None``: no traffic)."""
    elapsed = newer.at - older.at
    if elapsed <= 0:
        return {}
    rates: dict[str, dict[str, float | None]] = {}
    for name, counts in newer.workers.items():
        before = older.workers.get(name, WorkerTotals())
        requests = _delta(counts.requests, before.requests)
        errors = _delta(counts.server_errors, before.server_errors)
        rates[name] = {
            "rate": round(requests / elapsed, 3),
            "errors": round(errors / requests, 5) if requests > 0 else None,
        }
    return rates


def histogram_quantile(quantile: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative ``(le, count)`` buckets: linear
    interpolation inside the bucket holding the rank; ``None`` without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = quantile * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound, as Prometheus answers
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _delta(new: float, old: float) -> float:
    """A counter's increase; a counter that went down was reset (the process restarted)."""
    return new - old if new >= old else new


def _bucket_deltas(
    older: Iterable[tuple[float, float]], newer: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    before = dict(older)
    return [(bound, _delta(count, before.get(bound, 0.0))) for bound, count in newer]


class LiveMetrics:
    """Reads ``/metrics`` in the background and answers the console's live figures."""

    __slots__ = (
        "_read",
        "_environment",
        "_interval",
        "_window",
        "_samples",
        "_problem",
        "_task",
        "_clock",
    )

    def __init__(
        self,
        read: MetricsReader,
        *,
        environment: str,
        interval: float = SAMPLE_INTERVAL,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._environment = environment
        self._interval = interval
        self._window = window
        self._samples: deque[Totals] = deque(maxlen=int(window / interval) + 1)
        self._problem: str | None = "no reading yet"
        self._task: asyncio.Task[None] | None = None
        self._clock = clock

    def __repr__(self) -> str:
        return f"<LiveMetrics {self._environment} {len(self._samples)} readings>"

    async def __aenter__(self) -> LiveMetrics:
        self._task = asyncio.create_task(self._run(), name="console-live-metrics")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sample(self) -> None:
        """Read ``/metrics`` once and keep the totals (or why there are none)."""
        try:
            text = await self._read()
        except Exception as exc:  # the console must outlive any failure of /metrics
            logger.warning("console: reading /metrics failed: %s", exc, exc_info=True)
            self._problem = f"reading /metrics failed: {exc}"
            return
        if text is None:
            self._problem = "the admin listener has no /metrics"
            return
        try:
            totals = parse_totals(text, self._environment, self._clock())
        except ValueError as exc:
            self._problem = f"/metrics is not valid Prometheus text: {exc}"
            return
        self._problem = None
        self._samples.append(totals)

    def report(self) -> dict[str, Any]:
        """The JSON the console polls: a point per interval, and the figures of now."""
        samples = list(self._samples)
        body: dict[str, Any] = {
            "available": self._problem is None,
            "problem": self._problem,
            "interval": self._interval,
            "window": self._window,
            "points": [],
            "current": None,
            "workers": {},
        }
        if len(samples) < 2:
            return body
        now = samples[-1].at
        pairs = zip(samples, samples[1:], strict=False)
        body["points"] = [r.to_json() for r in _rates_of(pairs, now)]
        recent = _reading_before(samples, now - RECENT)
        current = rates_between(recent, samples[-1], now)
        if current is not None:
            figures = current.to_json()
            figures["in_flight"] = samples[-1].in_flight
            figures["revision"] = samples[-1].revision
            body["current"] = figures
        body["workers"] = worker_rates(recent, samples[-1])
        return body

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._interval)


def _rates_of(pairs: Iterable[tuple[Totals, Totals]], now: float) -> list[Rates]:
    rates = (rates_between(older, newer, now) for older, newer in pairs)
    return [r for r in rates if r is not None]


def _reading_before(samples: Sequence[Totals], moment: float) -> Totals:
    """The newest reading taken at or before ``moment``, else the oldest kept."""
    for totals in reversed(samples[:-1]):
        if totals.at <= moment:
            return totals
    return samples[0]
