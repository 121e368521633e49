"""Cost of the routing decision, ``RouteTable.resolve`` in ns per call: seed vs 10,000 services.

Run ``python bench/route_bench.py`` (package installed, or ``PYTHONPATH=src``); or import it and
call ``main()``. Method as in bench-anchors/route_bench.py: timeit, best of 7 x 200,000 calls
per input. The statement is the bare bound-method call (no lambda), so the figures include
only timeit's loop overhead, which is printed once.

Both tables get the same mix of inputs (exact host, alias or host, versioned subdomain, path
rule on the default host and on any host, default, path miss falling to the default, two
misses), so the ratio of their medians shows what the table's size costs.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RouteMatch, RouteTable, RoutingConfig
from dispatcher.types import ServiceName

NUMBER: Final = 200_000
REPEAT: Final = 7
TARGET_NS: Final = 500.0
TOLERANCE: Final = 0.20
SCALE: Final = 10_000

SEED_INPUTS: Final = (
    ("db.do", "/v1/items"),
    ("auth.do", "/login"),
    ("v2.gateway.do", "/health"),
    ("api.do", "/"),
    ("api.do", "/api/auth/login"),
    ("api.do", "/api/schedule/jobs/42"),
    ("api.do", "/api/unknown/x"),
    ("unknown.do", "/api/db/query"),
    ("unknown.do", "/test"),
    ("nope.example", "/"),
)
LARGE_INPUTS: Final = (
    ("svc04242.do", "/v1/items"),
    ("alias07777.example", "/login"),
    ("v2.svc00001.do", "/health"),
    ("api.do", "/"),
    ("api.do", "/api/svc05000/login"),
    ("api.do", "/api/schedule/jobs/42"),
    ("api.do", "/api/unknown/x"),
    ("unknown.do", "/api/svc09999/query"),
    ("unknown.do", "/test"),
    ("nope.example", "/"),
)
HOST_INPUTS: Final = ("api.do", "Gateway.DO", "DB.do:8080", "v2.gateway.do.", "[::1]:8080")
PATH_INPUTS: Final = (
    "/",
    "/api/auth/login",
    "/v1/items/42",
    "/api/%64b/query",
    "/api//db/./x/../q",
)


@dataclass(frozen=True, slots=True)
class Timing:
    """One measured call: what was called, what it returned, and its best ns per call."""

    call: str
    result: str
    ns: float


def ns_per_call(statement: str, names: Mapping[str, object], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``number`` executions, in ns per execution."""
    timer = timeit.Timer(statement, globals=dict(names))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def describe(match: RouteMatch | None) -> str:
    return "None" if match is None else f"{match.route.kind} {match.worker}"


def large_config(scale: int = SCALE) -> RoutingConfig:
    """The seed's table plus ``scale`` services, as many aliases and path rules for each."""
    seed = RoutingConfig()
    names = tuple(ServiceName(f"svc{i:05d}") for i in range(scale))
    aliases = {f"alias{i:05d}.example": name for i, name in enumerate(names)}
    return RoutingConfig(
        services=(*seed.services, *names),
        aliases=MappingProxyType(aliases),
        path_services=(*seed.path_services, *names),
    )


def time_resolve(
    table: RouteTable, inputs: Sequence[tuple[str, str]], number: int, repeat: int
) -> list[Timing]:
    return [
        Timing(
            f"resolve({host!r}, {path!r})",
            describe(table.resolve(host, path)),
            ns_per_call(
                "resolve(host, path)",
                {"resolve": table.resolve, "host": host, "path": path},
                number,
                repeat,
            ),
        )
        for host, path in inputs
    ]


def time_normalize(number: int, repeat: int) -> tuple[list[Timing], list[Timing]]:
    hosts = [
        Timing(
            f"normalize_host({raw!r})",
            repr(normalize_host(raw)),
            ns_per_call("f(raw)", {"f": normalize_host, "raw": raw}, number, repeat),
        )
        for raw in HOST_INPUTS
    ]
    paths = [
        Timing(
            f"normalize_path({raw!r})",
            repr(normalize_path(raw)),
            ns_per_call("f(raw)", {"f": normalize_path, "raw": raw}, number, repeat),
        )
        for raw in PATH_INPUTS
    ]
    return hosts, paths


def print_timings(title: str, timings: Sequence[Timing]) -> float:
    """Print one block of timings and return its median."""
    print(title)
    for timing in timings:
        print(f"  {timing.call:50} -> {timing.result:22} {timing.ns:7.1f} ns")
    median = statistics.median(t.ns for t in timings)
    print(f"  median: {median:.1f} ns")
    return median


def verdict(seed_median: float, large_median: float) -> str:
    ratio = large_median / seed_median
    fast = max(seed_median, large_median) <= TARGET_NS
    flat = abs(ratio - 1.0) <= TOLERANCE
    return "PASS" if fast and flat else "FAIL"


def main(number: int = NUMBER, repeat: int = REPEAT) -> None:
    """Run every measurement and print the report."""
    seed_table = RouteTable.from_config(RoutingConfig())
    large_table = RouteTable.from_config(large_config())
    overhead = ns_per_call("pass", {}, number, repeat)
    print(
        f"python {sys.version.split()[0]}; ns/call, best of {repeat} x {number} "
        f"(timeit loop overhead {overhead:.1f} ns, included)"
    )
    seed_median = print_timings(
        f"seed table {seed_table!r}", time_resolve(seed_table, SEED_INPUTS, number, repeat)
    )
    large_median = print_timings(
        f"large table {large_table!r}", time_resolve(large_table, LARGE_INPUTS, number, repeat)
    )
    print(f"ratio of medians large/seed: {large_median / seed_median:.2f}")
    print(
        f"target: median <= {TARGET_NS:.0f} ns, tables within {TOLERANCE:.0%}: "
        f"{verdict(seed_median, large_median)}"
    )
    hosts, paths = time_normalize(number, repeat)
    host_median = print_timings("normalize_host (once per request)", hosts)
    path_median = print_timings("normalize_path (once per request)", paths)
    print(f"normalize_host + normalize_path, medians summed: {host_median + path_median:.1f} ns")


if __name__ == "__main__":
    main()
