"""In-process workers: CPU per request of the dispatcher hosting an ASGI app vs that app alone.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/inproc.py [--rounds 3] [--duration 6] [--warmup 1]

Three configurations serve ``bench.apps:app``, each pinned to core 0 (wrk ``-t1`` on core 1):

* ``uvicorn``: the app alone on uvicorn (uvloop, httptools, no access log);
* ``granian``: the app alone on granian (ASGI, one worker, one single-threaded runtime);
* ``dispatcher``: ``dispatcher serve`` with the app as the worker of all eight seed services,
  so ``Host: db.do`` and ``api.do/api/auth/...`` route to it in-process.

Scenarios are the anchors' (``/work/shared/bench-anchors``): GET ``/v1/items?id=1`` with
``Host: db.do`` at 32 and 4 connections, and a 64 KiB POST to ``api.do/api/auth/upload`` at 32.
Every configuration is smoke-tested first; then each round warms every configuration up for
``--warmup`` seconds (discarded) and measures each scenario for ``--duration`` seconds, the
round's starting configuration rotating. The figure that matters is CPU µs per request of the
DUT's process tree; the report gives medians and min–max over the rounds, the paired per-round
ratios dispatcher/uvicorn and dispatcher/granian, and the verdict on the issue's target.
Raw rows are appended to ``bench/results/inproc.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

try:
    from bench import _measure as m
    from bench.apps import GET_BODY, received_body
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _measure as m
    from bench.apps import GET_BODY, received_body

from dispatcher.routing import SEED_SERVICES

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = BENCH_DIR.parent
RESULTS: Final = BENCH_DIR / "results" / "inproc.jsonl"
APP: Final = "bench.apps:app"
NAMESPACE: Final = "dotdo-development"
POST_SIZE: Final = 65536

GET_PATH: Final = "/v1/items?id=1"
POST_PATH: Final = "/api/auth/upload"
SCENARIOS: Final = (
    m.Scenario("get_c32", 32, "db.do", GET_PATH),
    m.Scenario("get_c4", 4, "db.do", GET_PATH),
    m.Scenario("post64k_c32", 32, "api.do", POST_PATH, BENCH_DIR / "post64k.lua"),
)
WARMUP: Final = m.Scenario("warmup", 32, "db.do", GET_PATH)
TARGET_SCENARIOS: Final = ("get_c32", "get_c4")
TARGET: Final = (
    "dispatcher hosting an in-process worker spends no more CPU per request than uvicorn "
    "serving that app alone"
)
BASELINE, RIVAL, SUBJECT = "uvicorn", "granian", "dispatcher"
LABELS: Final = {
    BASELINE: "uvicorn, app alone",
    RIVAL: "granian, app alone",
    SUBJECT: "dispatcher, app as in-process worker",
}
VERSIONED: Final = ("uvicorn", "granian", "uvloop", "httptools", "dispatcher")


@dataclass(frozen=True, slots=True)
class Contender:
    """One configuration under test and how to start it."""

    name: str
    command: tuple[str, ...]
    port: int
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Row:
    """One measurement, as written to the JSON lines file."""

    run: str
    round: int
    config: str
    scenario: str
    connections: int
    duration_s: float
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu_s: float
    cpu_us_per_req: float
    core0_busy: float
    core1_busy: float
    pids: int

    @classmethod
    def of(
        cls,
        run: str,
        rnd: int,
        config: str,
        scenario: m.Scenario,
        duration: float,
        sample: m.Sample,
    ) -> Row:
        w = sample.wrk
        return cls(
            run=run,
            round=rnd,
            config=config,
            scenario=scenario.name,
            connections=scenario.connections,
            duration_s=duration,
            rps=w.rps,
            requests=w.requests,
            p50_ms=w.p50_ms,
            p90_ms=w.p90_ms,
            p99_ms=w.p99_ms,
            non2xx=w.non2xx,
            socket_errors=w.socket_errors,
            cpu_s=sample.cpu_s,
            cpu_us_per_req=sample.cpu_us_per_request,
            core0_busy=sample.core_busy[0],
            core1_busy=sample.core_busy[1],
            pids=sample.pids,
        )


# --- the three configurations --------------------------------------------------------------


def contenders(bin_dir: Path, scratch: Path) -> list[Contender]:
    """uvicorn, granian and the dispatcher, each on its own free port."""
    env = _environment(scratch)
    config = write_dispatcher_config(scratch / "dispatcher.toml")
    uvicorn_port, granian_port, dispatcher_port = m.free_ports(3)
    return [
        Contender(BASELINE, _uvicorn(bin_dir, uvicorn_port), uvicorn_port, env),
        Contender(RIVAL, _granian(bin_dir, granian_port), granian_port, env),
        Contender(SUBJECT, _dispatcher(bin_dir, dispatcher_port, config), dispatcher_port, env),
    ]


def _environment(scratch: Path) -> dict[str, str]:
    """The repository on PYTHONPATH (for ``bench.apps``); the dispatcher's store in scratch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["DISPATCHER_STORE"] = f"sqlite:///{scratch / 'registry.db'}"
    env["ENVIRONMENT"] = "development"  # the namespace the generated config fills
    return env


def write_dispatcher_config(path: Path) -> Path:
    """A TOML config declaring ``bench.apps:app`` as the worker of every seed service."""
    lines = [f'[workers."{NAMESPACE}"]']
    lines += [f'{service} = {{ app = "{APP}" }}' for service in SEED_SERVICES]
    path.write_text("\n".join(lines) + "\n")
    return path


UVICORN_FLAGS: Final = "--loop uvloop --http httptools --no-access-log --log-level warning"
GRANIAN_FLAGS: Final = (
    "--interface asgi --workers 1 --runtime-threads 1 --runtime-mode st --loop uvloop "
    "--http 1 --no-ws --log-level warning"
)


def _uvicorn(bin_dir: Path, port: int) -> tuple[str, ...]:
    where = ("--host", "127.0.0.1", "--port", str(port))
    return (str(bin_dir / "uvicorn"), APP, *where, *UVICORN_FLAGS.split())


def _granian(bin_dir: Path, port: int) -> tuple[str, ...]:
    where = ("--host", "127.0.0.1", "--port", str(port))
    return (str(bin_dir / "granian"), *where, *GRANIAN_FLAGS.split(), APP)


def _dispatcher(bin_dir: Path, port: int, config: Path) -> tuple[str, ...]:
    serve = (
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--admin-port",
        "0",
        "--log-level",
        "warning",
    )
    return (str(bin_dir / "dispatcher"), *serve)


# --- running -------------------------------------------------------------------------------


def smoke_test(server: m.ServerProcess) -> None:
    """The GET and the POST of the scenarios must answer 200 with the app's exact body."""
    checks = (
        ("GET", "db.do", GET_PATH, None, GET_BODY),
        ("POST", "api.do", POST_PATH, b"x" * POST_SIZE, received_body(POST_SIZE)),
    )
    for method, host, path, body, expected in checks:
        status, answer = m.http_exchange(server.port, method, host, path, body)
        if status != 200 or answer != expected:
            raise m.MeasureError(
                f"smoke test of {server.name}: {method} {host}{path} answered {status} "
                f"{answer[:120]!r}, expected 200 {expected!r}"
            )
    print(
        f"  smoke {server.name:<10} GET db.do 200 {len(GET_BODY)} B, "
        f"POST 64 KiB api.do/api/auth 200 {received_body(POST_SIZE)!r}",
        flush=True,
    )


def run_rounds(
    servers: Sequence[m.ServerProcess], rounds: int, duration: float, warmup: float, out: Path
) -> list[Row]:
    """Interleaved rounds; each round starts with the next configuration in turn."""
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[Row] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as jsonl:
        for rnd in range(rounds):
            shift = rnd % len(servers)
            for server in [*servers[shift:], *servers[:shift]]:
                pids = server.pids()
                m.run_wrk(server.port, WARMUP, warmup)
                for scenario in SCENARIOS:
                    sample = m.measure(pids, server.port, scenario, duration)
                    row = Row.of(run, rnd, server.name, scenario, duration, sample)
                    jsonl.write(json.dumps(asdict(row)) + "\n")
                    jsonl.flush()
                    rows.append(row)
                    print(_progress(row), flush=True)
                    time.sleep(0.5)
    return rows


def _progress(row: Row) -> str:
    return (
        f"r{row.round} {row.config:<10} {row.scenario:<12} rps={row.rps:9.0f} "
        f"p50={row.p50_ms:7.3f}ms p99={row.p99_ms:7.3f}ms cpu/req={row.cpu_us_per_req:6.1f}us "
        f"core0={row.core0_busy:.2f} core1={row.core1_busy:.2f} "
        f"err={row.non2xx}+{row.socket_errors}"
    )


# --- report --------------------------------------------------------------------------------


def paired_ratios(rows: Sequence[Row], scenario: str, subject: str, baseline: str) -> list[float]:
    """CPU µs/req of ``subject`` ÷ ``baseline`` within each round (pairs share the noise)."""
    by_round = {(r.round, r.config): r.cpu_us_per_req for r in rows if r.scenario == scenario}
    rounds = sorted({rnd for rnd, _ in by_round})
    return [
        by_round[(rnd, subject)] / by_round[(rnd, baseline)]
        for rnd in rounds
        if (rnd, subject) in by_round and (rnd, baseline) in by_round
    ]


def _cell(spread: m.Spread, digits: int = 1) -> str:
    return f"**{spread.median:.{digits}f}** ({spread.low:.{digits}f}–{spread.high:.{digits}f})"


def _ratio_cell(rows: Sequence[Row], scenario: str, config: str, baseline: str) -> str:
    if config == baseline:
        return "1"
    ratios = paired_ratios(rows, scenario, config, baseline)
    if not ratios:
        return "–"
    return f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def _latency(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.0f}"


def scenario_table(rows: Sequence[Row], scenario: str, labels: Mapping[str, str]) -> str:
    """A markdown table of one scenario: medians over rounds, ratios paired per round."""
    lines = [
        "| config | rps | p50 ms | p99 ms | CPU µs/req (min–max) | CPU vs uvicorn | "
        "CPU vs granian | core0/core1 busy | n | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, label in labels.items():
        mine = [r for r in rows if r.scenario == scenario and r.config == config]
        if not mine:
            continue
        cpu = m.Spread.of(r.cpu_us_per_req for r in mine)
        lines.append(
            f"| {label} | {statistics.median(r.rps for r in mine):,.0f} "
            f"| {_latency(statistics.median(r.p50_ms for r in mine))} "
            f"| {_latency(statistics.median(r.p99_ms for r in mine))} | {_cell(cpu)} "
            f"| {_ratio_cell(rows, scenario, config, BASELINE)} "
            f"| {_ratio_cell(rows, scenario, config, RIVAL)} "
            f"| {statistics.median(r.core0_busy for r in mine):.2f}/"
            f"{statistics.median(r.core1_busy for r in mine):.2f} "
            f"| {len(mine)} | {sum(r.non2xx + r.socket_errors for r in mine)} |"
        )
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> tuple[bool, str]:
    """PASS when the median dispatcher/uvicorn CPU ratio is <= 1.0 at GET -c32 and -c4."""
    medians = {}
    for scenario in TARGET_SCENARIOS:
        ratios = paired_ratios(rows, scenario, SUBJECT, BASELINE)
        medians[scenario] = statistics.median(ratios) if ratios else float("inf")
    passed = all(ratio <= 1.0 for ratio in medians.values())
    figures = ", ".join(f"{s} {r:.2f}" for s, r in medians.items())
    return passed, (
        f"Target: {TARGET}.\n"
        f"{'PASS' if passed else 'FAIL'}: dispatcher/uvicorn CPU µs/req, median of per-round "
        f"ratios: {figures} (PASS needs <= 1.00 in both)."
    )


def report(rows: Sequence[Row], labels: Mapping[str, str]) -> str:
    titles = {
        "get_c32": "GET /v1/items?id=1, Host db.do, 94 B JSON, wrk -t1 -c32 (throughput)",
        "get_c4": "GET /v1/items?id=1, Host db.do, 94 B JSON, wrk -t1 -c4 (latency)",
        "post64k_c32": "POST 64 KiB to api.do/api/auth/upload (path-routed), wrk -t1 -c32",
    }
    parts = [f"### {titles[s.name]}\n\n{scenario_table(rows, s.name, labels)}" for s in SCENARIOS]
    return "\n\n".join(parts) + "\n\n" + verdict(rows)[1]


def versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return (
        f"Python {platform.python_version()}, {', '.join(found)}; kernel {platform.release()}, "
        f"{os.cpu_count()} CPUs"
    )


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded warm-up seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines file (appended)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 1:
        parser.error("--rounds, --duration and --warmup must be at least 1")
    return args


def check_machine(bin_dir: Path) -> None:
    missing = [tool for tool in ("taskset", "wrk") if shutil.which(tool) is None]
    missing += [
        str(p)
        for p in (bin_dir / n for n in ("uvicorn", "granian", "dispatcher"))
        if not p.exists()
    ]
    if missing:
        raise m.MeasureError(f"missing: {', '.join(missing)}")
    if len(os.sched_getaffinity(0)) < 2:
        raise m.MeasureError("needs two cores: the DUT on core 0, wrk on core 1")


def run(args: argparse.Namespace) -> int:
    bin_dir = Path(sys.executable).parent  # uvicorn, granian and dispatcher of this venv
    check_machine(bin_dir)
    print(versions(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as scratch, ExitStack() as stack:
        servers = []
        for c in contenders(bin_dir, Path(scratch)):
            log = BENCH_DIR / "results" / "logs" / f"inproc-{c.name}.log"
            server = m.ServerProcess.start(
                c.name, c.command, c.port, log_path=log, env=c.env, cwd=REPO_ROOT
            )
            stack.callback(server.stop)
            servers.append(server)
        time.sleep(1)
        for server in servers:
            smoke_test(server)
        rows = run_rounds(servers, args.rounds, args.duration, args.warmup, args.out)
    print()
    print(report(rows, LABELS))
    print(f"\nraw rows appended to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except m.MeasureError as exc:
        print(f"bench/inproc.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
