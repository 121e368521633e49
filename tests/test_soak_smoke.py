"""The load and soak scenarios of ``bench/soak.py``, run for a few seconds each.

Each starts a real ``dispatcher serve`` process and the benchmark's Python upstream, drives
them with the benchmark's Python client, and asserts only the scenario's invariants: no
failed request, no 5xx from the dispatcher itself, file descriptors back to their count
before the load, slowloris connections closed at the header deadline, a clean exit after
SIGTERM. Timing targets (p99 ratios, RSS growth) are measured by the full runs only
(docs/benchmarks.md, "Load and soak"); they are never asserted here.
"""

from __future__ import annotations

from pathlib import Path

from bench import soak


def smoke_setup(tmp_path: Path, **overrides: float) -> soak.Setup:
    """Unpinned processes, the Python upstream, and short timeouts so that pooled upstream
    connections (and slowloris heads) expire within the test."""
    return soak.Setup(
        scratch=tmp_path,
        upstream="python",
        pool_idle_timeout=overrides.get("pool_idle_timeout", 1.0),
        header_timeout=overrides.get("header_timeout", 10.0),
        drain_timeout=overrides.get("drain_timeout", 5.0),
        upstream_delay=overrides.get("upstream_delay", 0.0),
        dut_core=None,
        load_core=None,
    )


def count(result: soak.Result, figure: str) -> int:
    value = result.figures[figure]
    assert isinstance(value, int), result.report()
    return value


def assert_invariants(result: soak.Result) -> None:
    assert result.checks, result.report()
    assert result.failed_invariants() == [], result.report()


def test_saturation_keeps_its_invariants(tmp_path: Path) -> None:
    result = soak.saturation(
        smoke_setup(tmp_path), duration=1.0, warmup=0.3, connections=8, use_wrk=False
    )
    assert_invariants(result)
    assert count(result, "requests") > 0


def test_slowloris_is_cut_at_the_header_deadline_and_normal_traffic_flows(
    tmp_path: Path,
) -> None:
    result = soak.slowloris(
        smoke_setup(tmp_path, header_timeout=0.5),
        duration=1.2,
        connections=50,
        interval=0.2,
        baseline=False,
        use_wrk=False,
    )
    assert_invariants(result)


def test_deploys_and_rollbacks_under_traffic_fail_no_request(tmp_path: Path) -> None:
    result = soak.deploys(smoke_setup(tmp_path), count=3, rate=50, connections=4, pace=0.05)
    assert_invariants(result)
    assert result.figures["answers"] == {"200 PUT": 3, "200 POST": 3}


def test_sigterm_under_load_fails_no_accepted_request(tmp_path: Path) -> None:
    setup = smoke_setup(tmp_path, upstream_delay=0.05)
    result = soak.sigterm(setup, load_seconds=0.5, connections=16)
    assert_invariants(result)
    # Requests were in flight when the signal came: the drain had something to do.
    assert count(result, "in flight at the signal (answered later)") > 0
