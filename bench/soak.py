"""Load and soak (issue #6): four scenarios against ``dispatcher serve`` and a real upstream,
each printing its figures and PASS/FAIL against its target.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/soak.py saturation [--duration 60] [--warmup 10]
    .venv/bin/python bench/soak.py slowloris [--duration 20] [--connections 500]
    .venv/bin/python bench/soak.py deploys [--deploys 100] [--rate 200]
    .venv/bin/python bench/soak.py sigterm [--load 5] [--connections 32]
    .venv/bin/python bench/soak.py all

* ``saturation``: wrk ``-t1 -c32`` (or the Python closed-loop client with ``--python-load``)
  for ``--duration`` s. Targets: no 5xx from the dispatcher itself (its ``/metrics``, outcome
  other than ``routed``) and no failed request at the client; RSS at the end within 5 % of
  RSS after ``--warmup`` s; open file descriptors back to their count before the load.
* ``slowloris``: normal traffic (wrk ``-t1 -c4``) for ``--duration`` s alone, then again while
  ``--connections`` connections each send one head byte every ``--interval`` s (reconnecting
  when closed at the 10 s header deadline). Targets: normal p99 under load < 2x its baseline,
  no failed normal request, slowloris connections closed by the server.
* ``deploys``: ``--deploys`` deploys and as many rollbacks of the ``db`` worker through the
  Deploy API (its target alternating between two upstream ports) while ``--rate`` req/s flow
  to ``db.do``. Targets: zero failed requests, every write 2xx.
* ``sigterm``: ``--connections`` clients in a closed loop on an upstream that answers after
  ``--delay`` s; SIGTERM after ``--load`` s. A request counts as *accepted* when it was
  written before the signal, or when the server started answering it; every accepted
  request must succeed. Requests refused after the signal (connection refused, or a
  keep-alive connection closed before the server read the request) are counted apart.

Processes: the dispatcher is pinned to core 0; the upstream, wrk and this script to core 1
(``bench/_measure.py``). The upstream is nginx (``bench/peers/nginx-upstream.conf``) where
installed, for saturation and slowloris (the dispatcher must be the bottleneck), and the
Python upstream ``bench/_upstream.py`` for deploys (two ports) and SIGTERM (a delay). Rows
go to ``bench/results/soak.jsonl``. ``tests/test_soak_smoke.py`` runs the same scenario
functions for a few seconds and asserts only their invariants (never a timing).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

try:
    from bench import _load as load
    from bench import _measure as m
    from bench.proxy import Layout, upstream_body, upstream_command
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _load as load
    from bench import _measure as m
    from bench.proxy import Layout, upstream_body, upstream_command

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = BENCH_DIR.parent
RESULTS: Final = BENCH_DIR / "results" / "soak.jsonl"
NAMESPACE: Final = "dotdo-development"
TOKEN: Final = "soak-benchmark-admin-token-0001"
HOST: Final = "db.do"
PATH: Final = "/v1/items?id=1"
NGINX: Final = "/usr/sbin/nginx"
RSS_GROWTH_LIMIT: Final = 0.05
P99_RATIO_LIMIT: Final = 2.0
FD_SETTLE_SLACK: Final = 3.0
"""Seconds past the upstream pool's idle timeout for the descriptors to come back."""

UpstreamKind = Literal["nginx", "python"]


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One target: its figure, the bound, whether it holds, and whether it is an invariant
    (asserted by the CI smoke test) or a measured target (full runs only: timing, RSS)."""

    name: str
    figure: str
    bound: str
    passed: bool
    invariant: bool = True

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        kind = "" if self.invariant else " (target)"
        return f"  {verdict}: {self.name}{kind}: {self.figure} ({self.bound})"


@dataclass(frozen=True, slots=True)
class Result:
    """What a scenario measured, and its checks."""

    scenario: str
    figures: Mapping[str, object]
    checks: tuple[Check, ...]
    command: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed_invariants(self) -> list[Check]:
        return [c for c in self.checks if c.invariant and not c.passed]

    def report(self) -> str:
        lines = [f"== {self.scenario}: {'PASS' if self.passed else 'FAIL'}"]
        if self.command:
            lines.append(f"  command: {self.command}")
        lines += [f"  {name}: {value}" for name, value in self.figures.items()]
        lines += [check.line() for check in self.checks]
        return "\n".join(lines)


def record(result: Result, out: Path = RESULTS) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    row = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(result)}
    with open(out, "a") as jsonl:
        jsonl.write(json.dumps(row, default=str) + "\n")


# --- processes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """How to run one scenario's processes."""

    scratch: Path
    dispatcher: Path = Path(sys.executable).parent / "dispatcher"
    upstream: UpstreamKind = "python"
    upstream_delay: float = 0.0
    header_timeout: float = 10.0
    pool_idle_timeout: float = 4.0
    drain_timeout: float = 30.0
    dut_core: int | None = m.DUT_CORE
    load_core: int | None = m.LOAD_CORE
    """Cores to pin to (``taskset``); ``None`` leaves the scheduler free (the smoke test)."""


class Process:
    """A child in its own session: we may signal it, wait for it and read its exit status."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        log: Path,
        env: Mapping[str, str],
        core: int | None,
    ) -> Process:
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                pinned(command, core),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        return cls(name, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_listening(self, port: int, timeout: float = m.STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise m.MeasureError(
                    f"{self.name} exited ({self.popen.returncode}) before listening on {port}; "
                    f"see {self.log}"
                )
            if m.is_listening(port):
                return
            time.sleep(0.05)
        raise m.MeasureError(f"{self.name} did not listen on port {port} within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; our own session only."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=m.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=m.STOP_TIMEOUT_S)


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    return list(command) if core is None else m.pinned(command, core)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise m.MeasureError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(slots=True)
class Stack:
    """A running upstream and dispatcher (``db`` on ``upstream_urls[0]``)."""

    setup: Setup
    port: int
    admin_port: int
    upstream_urls: tuple[str, ...]
    dispatcher: Process
    processes: list[Process] = field(default_factory=list)

    @property
    def target(self) -> load.Target:
        return load.Target(self.port, HOST, PATH, upstream_body("db"))

    def metrics(self) -> str | None:
        """The admin listener's Prometheus text, or ``None`` when it has none."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5
            ) as answer:
                text: str = answer.read().decode()
                return text
        except (urllib.error.URLError, OSError):
            return None

    def own_5xx(self) -> int | None:
        """5xx answers the dispatcher gave itself (every outcome but ``routed``)."""
        text = self.metrics()
        return None if text is None else own_5xx(text)


SAMPLE: Final = re.compile(r"^dispatcher_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
LABEL: Final = re.compile(r'(\w+)="([^"]*)"')


def own_5xx(metrics: str) -> int:
    """Sum ``dispatcher_requests_total`` over status class 5xx and outcomes but ``routed``."""
    total = 0.0
    for labels, value in SAMPLE.findall(metrics):
        fields = dict(LABEL.findall(labels))
        if fields.get("status_class") == "5xx" and fields.get("outcome") != "routed":
            total += float(value)
    return int(total)


@contextmanager
def running(setup: Setup, *, upstream_ports: int = 1) -> Iterator[Stack]:
    """Start the upstream, then the dispatcher with ``db`` pointing at the first port."""
    setup.scratch.mkdir(parents=True, exist_ok=True)
    env = _environment(setup)
    with ExitStack() as stack:
        urls, processes = _start_upstream(setup, env, upstream_ports)
        for process in processes:
            stack.callback(process.stop)
        port, admin_port = m.free_ports(2)
        config = _write_config(setup, urls[0])
        command = [str(setup.dispatcher), "serve", "--config", str(config), "--port", str(port)]
        command += ["--admin-port", str(admin_port), "--log-level", "warning"]
        if "--no-access-log" in _serve_help(setup.dispatcher):
            command.append("--no-access-log")  # a JSON line per request would fill the disk
        dispatcher = Process.start(
            "dispatcher", command, setup.scratch / "dispatcher.log", env, setup.dut_core
        )
        stack.callback(dispatcher.stop)
        dispatcher.wait_listening(port)
        dispatcher.wait_listening(admin_port)
        yield Stack(setup, port, admin_port, urls, dispatcher, processes)


def _environment(setup: Setup) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["DISPATCHER_STORE"] = f"sqlite:///{setup.scratch / 'registry.db'}"
    env["ENVIRONMENT"] = "development"
    env["DISPATCHER_ADMIN_TOKEN"] = TOKEN
    return env


def _start_upstream(
    setup: Setup, env: Mapping[str, str], count: int
) -> tuple[tuple[str, ...], list[Process]]:
    if setup.upstream == "nginx":
        layout = Layout.allocate(setup.scratch)
        nginx = Process.start(
            "nginx", upstream_command(layout), setup.scratch / "nginx.log", env, setup.load_core
        )
        nginx.wait_listening(layout.upstream["db"])
        return (layout.urls["db"],), [nginx]
    ports = m.free_ports(count)
    command = [sys.executable, "-m", "bench._upstream", "--ports", ",".join(map(str, ports))]
    command += ["--service", "db", "--delay", str(setup.upstream_delay)]
    upstream = Process.start(
        "upstream", command, setup.scratch / "upstream.log", env, setup.load_core
    )
    for port in ports:
        upstream.wait_listening(port)
    return tuple(f"http://127.0.0.1:{p}" for p in ports), [upstream]


def _write_config(setup: Setup, db_url: str) -> Path:
    path = setup.scratch / "dispatcher.toml"
    path.write_text(
        "[limits]\n"
        f"header_timeout = {setup.header_timeout}\n"
        f"drain_timeout = {setup.drain_timeout}\n"
        "[proxy]\n"
        f"pool_idle_timeout = {setup.pool_idle_timeout}\n"
        f'[workers."{NAMESPACE}"]\n'
        f'db = {{ url = "{db_url}" }}\n'
    )
    return path


@functools.cache  # one `serve --help` per executable and run (click takes ~0.4 s to start)
def _serve_help(dispatcher: Path) -> str:
    done = subprocess.run(
        [str(dispatcher), "serve", "--help"], capture_output=True, text=True, check=False
    )
    return done.stdout


def wait_for_fds(pid: int, baseline: int, within: float) -> int:
    """Poll until the process holds at most ``baseline`` descriptors, or ``within`` s pass."""
    deadline = time.monotonic() + within
    count = open_fds(pid)
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        count = open_fds(pid)
    return count


def _upstream_figure(stack: Stack) -> str:
    setup = stack.setup
    if setup.upstream == "nginx":
        return f"nginx `return 200` ({NGINX}, bench/peers/nginx-upstream.conf)"
    delay = f", {setup.upstream_delay:g} s delay" if setup.upstream_delay else ""
    return f"Python upstream (bench/_upstream.py{delay})"


def _wrk_core(setup: Setup) -> int:
    return m.LOAD_CORE if setup.load_core is None else setup.load_core


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def _load_check(name: str, failed: int, total: int) -> Check:
    return Check(name, f"{failed} of {total}", "must be 0", failed == 0)


def _own_5xx_check(stack: Stack) -> Check:
    count = stack.own_5xx()
    if count is None:
        return Check("dispatcher's own 5xx", "no /metrics", "must be 0", True)
    return Check("dispatcher's own 5xx (/metrics)", str(count), "must be 0", count == 0)


def _fd_check(stack: Stack, before: int) -> Check:
    settle = stack.setup.pool_idle_timeout + FD_SETTLE_SLACK
    after = wait_for_fds(stack.dispatcher.pid, before, settle)
    return Check(
        "open fds after the load",
        f"{before} before, {after} after",
        "back to baseline",
        after <= before,
    )


# --- saturation -------------------------------------------------------------------------------


def saturation(
    setup: Setup, *, duration: float, warmup: float, connections: int = 32, use_wrk: bool = True
) -> Result:
    """Full load for ``duration`` s: own 5xx, failures, RSS growth after warm-up, fds."""
    with running(setup) as stack:
        pid = stack.dispatcher.pid
        fds_before = open_fds(pid)
        if use_wrk:
            load_figures, failed, total, rss = _saturate_with_wrk(
                stack, connections, duration, warmup
            )
        else:
            load_figures, failed, total, rss = _saturate_in_python(
                stack, connections, duration, warmup
            )
        rss_warm, rss_end = rss
        growth = (rss_end - rss_warm) / rss_warm
        checks = (
            _own_5xx_check(stack),
            _load_check("failed requests (non-2xx, socket errors)", failed, total),
            _fd_check(stack, fds_before),
            Check(
                "RSS growth after warm-up",
                f"{rss_warm} KiB -> {rss_end} KiB ({growth:+.1%})",
                f"< {RSS_GROWTH_LIMIT:.0%}",
                growth < RSS_GROWTH_LIMIT,
                invariant=False,
            ),
        )
        figures = {
            "upstream": _upstream_figure(stack),
            **load_figures,
            "rss_after_warmup_kib": rss_warm,
            "rss_end_kib": rss_end,
        }
        return Result("saturation", figures, checks)


def _saturate_with_wrk(
    stack: Stack, connections: int, duration: float, warmup: float
) -> tuple[dict[str, object], int, int, tuple[int, int]]:
    scenario = m.Scenario("saturation", connections, HOST, PATH)
    command = m.wrk_command(stack.port, scenario, duration, _wrk_core(stack.setup))
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warmup)
    rss_warm = rss_kib(stack.dispatcher.pid)
    out, err = wrk.communicate(timeout=duration + 60)
    rss_end = rss_kib(stack.dispatcher.pid)
    if wrk.returncode != 0:
        raise m.MeasureError(f"wrk exited {wrk.returncode}: {err or out}")
    result = m.parse_wrk(out)
    figures: dict[str, object] = {
        "load": " ".join(command),
        "requests": result.requests,
        "rps": round(result.rps),
        "p99_ms": result.p99_ms,
        "non_2xx": result.non2xx,
        "socket_errors": result.socket_errors,
    }
    return figures, result.errors, result.requests, (rss_warm, rss_end)


def _saturate_in_python(
    stack: Stack, connections: int, duration: float, warmup: float
) -> tuple[dict[str, object], int, int, tuple[int, int]]:
    async def run() -> tuple[load.LoadReport, int]:
        task = asyncio.ensure_future(load.closed_loop(stack.target, connections, duration))
        await asyncio.sleep(warmup)
        rss_warm = rss_kib(stack.dispatcher.pid)
        return await task, rss_warm

    report, rss_warm = asyncio.run(run())
    rss_end = rss_kib(stack.dispatcher.pid)
    figures: dict[str, object] = {
        "load": f"Python closed loop, {connections} connections, {duration:g} s",
        "requests": report.total,
        "rps": round(report.rps),
        "p99_ms": round(report.p99_ms, 3),
        "failures": dict(report.failures()),
    }
    return figures, report.failed, report.total, (rss_warm, rss_end)


# --- slowloris --------------------------------------------------------------------------------


def slowloris(
    setup: Setup,
    *,
    duration: float,
    connections: int = 500,
    interval: float = 5.0,
    normal_connections: int = 4,
    baseline: bool = True,
    use_wrk: bool = True,
) -> Result:
    """Normal traffic alone, then under ``connections`` slowloris connections."""
    ramp = min(2.0, duration / 4)
    with running(setup) as stack:
        fds_before = open_fds(stack.dispatcher.pid)
        base = _normal_traffic(stack, normal_connections, duration, use_wrk) if baseline else None
        attack = _start_slowloris(stack, connections, interval, duration + ramp + 1.0, ramp)
        time.sleep(ramp)
        loaded = _normal_traffic(stack, normal_connections, duration, use_wrk)
        slow = _finish_slowloris(attack)
        checks = [
            _own_5xx_check(stack),
            _load_check("failed normal requests under slowloris", loaded.failed, loaded.total),
            Check(
                "slowloris connections closed by the server",
                f"{slow.closed_by_server} of {slow.opened} opened ({slow.answered_408} with a 408)",
                "> 0 (the header deadline fires)",
                slow.closed_by_server > 0,
            ),
        ]
        if base is not None:
            ratio = loaded.p99_ms / base.p99_ms
            checks.append(
                Check(
                    "normal p99 under slowloris / baseline",
                    f"{loaded.p99_ms:.3f} ms / {base.p99_ms:.3f} ms = {ratio:.2f}",
                    f"< {P99_RATIO_LIMIT:g}",
                    ratio < P99_RATIO_LIMIT,
                    invariant=False,
                )
            )
        checks.append(_fd_check(stack, fds_before))
        figures: dict[str, object] = {
            "upstream": _upstream_figure(stack),
            "normal load": loaded.how,
            "baseline p99_ms": None if base is None else round(base.p99_ms, 3),
            "baseline rps": None if base is None else round(base.rps),
            "under slowloris p99_ms": round(loaded.p99_ms, 3),
            "under slowloris rps": round(loaded.rps),
            "slowloris": asdict(slow),
        }
        return Result("slowloris", figures, tuple(checks))


@dataclass(frozen=True, slots=True)
class Traffic:
    """A normal-traffic run: how it was made and its figures."""

    how: str
    total: int
    failed: int
    p99_ms: float
    rps: float


def _normal_traffic(stack: Stack, connections: int, duration: float, use_wrk: bool) -> Traffic:
    if use_wrk:
        scenario = m.Scenario("normal", connections, HOST, PATH)
        command = m.wrk_command(stack.port, scenario, duration, _wrk_core(stack.setup))
        result = m.run_wrk(stack.port, scenario, duration, _wrk_core(stack.setup))
        how = " ".join(command)
        return Traffic(how, result.requests, result.errors, result.p99_ms, result.rps)
    report = asyncio.run(load.closed_loop(stack.target, connections, duration))
    how = f"Python closed loop, {connections} connections, {duration:g} s"
    return Traffic(how, report.total, report.failed, report.p99_ms, report.rps)


def _start_slowloris(
    stack: Stack, connections: int, interval: float, duration: float, ramp: float
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench._load", "slowloris", "--port", str(stack.port)]
    command += ["--connections", str(connections), "--interval", str(interval)]
    command += ["--duration", str(duration), "--ramp", str(ramp)]
    return subprocess.Popen(
        pinned(command, stack.setup.load_core),
        env=_environment(stack.setup),
        stdout=subprocess.PIPE,
        text=True,
    )


def _finish_slowloris(attack: subprocess.Popen[str]) -> load.SlowlorisReport:
    out, _ = attack.communicate(timeout=120)
    if attack.returncode != 0:
        raise m.MeasureError(f"the slowloris process exited {attack.returncode}: {out}")
    return load.SlowlorisReport(**json.loads(out))


# --- deploys ----------------------------------------------------------------------------------


def deploys(
    setup: Setup,
    *,
    count: int = 100,
    rate: float = 200.0,
    connections: int = 8,
    pace: float = 0.025,
) -> Result:
    """``count`` deploys of ``db`` to a second upstream port, each followed by a rollback to
    the first, ``pace`` s apart, while ``rate`` req/s flow to ``db.do``."""
    with running(setup, upstream_ports=2) as stack:
        run = asyncio.run(_deploy_under_load(stack, count, rate, connections, pace))
        own_5xx = _own_5xx_check(stack)
    per_port = _requests_per_port(stack.processes[0].log)
    report = run.report
    failed_writes = {k: v for k, v in run.writes.items() if not 200 <= int(k.split()[0]) < 300}
    revisions = run.revision_after - run.revision_before
    checks = (
        _load_check("failed requests during deploys", report.failed, report.total),
        Check("Deploy API writes not 2xx", str(sum(failed_writes.values())), "must be 0",
              not failed_writes),
        Check("new revisions", str(revisions), f"one per write ({2 * count})",
              revisions == 2 * count),
        Check("upstream ports that served traffic", str(per_port), "both (the writes moved it)",
              len(per_port) == 2 and all(per_port.values())),
        own_5xx,
    )  # fmt: skip
    figures: dict[str, object] = {
        "upstream": f"Python upstream on two ports ({', '.join(stack.upstream_urls)})",
        "load": f"Python open loop, {rate:g} req/s over {connections} connections",
        "writes": f"{count} PUT (to the second port) + {count} rollback, {pace:g} s apart",
        "writes took s": round(run.writes_seconds, 2),
        "requests": report.total,
        "rps": round(report.rps, 1),
        "p99_ms": round(report.p99_ms, 3),
        "failures": dict(report.failures()),
        "answers": run.writes,
    }
    return Result("deploys", figures, checks)


@dataclass(frozen=True, slots=True)
class DeployRun:
    report: load.LoadReport
    writes: dict[str, int]
    writes_seconds: float
    revision_before: int
    revision_after: int


async def _deploy_under_load(
    stack: Stack, count: int, rate: float, connections: int, pace: float
) -> DeployRun:
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(
        load.open_loop(stack.target, rate, connections, duration=3600.0, stop=stop)
    )
    await asyncio.sleep(0.5)  # traffic flowing before the first write
    before = await _revision(stack)
    writes: dict[str, int] = {}
    path = f"/namespaces/{NAMESPACE}/workers/db"
    other = json.dumps({"url": stack.upstream_urls[1]}).encode()
    started = time.monotonic()
    for _ in range(count):
        for method, where, body in (("PUT", path, other), ("POST", path + "/rollback", b"")):
            status, _ = await load.admin_call(stack.admin_port, method, where, body, TOKEN)
            key = f"{status} {method}"
            writes[key] = writes.get(key, 0) + 1
            await asyncio.sleep(pace)
    took = time.monotonic() - started
    after = await _revision(stack)
    await asyncio.sleep(0.5)
    stop.set()
    return DeployRun(await traffic, writes, took, before, after)


async def _revision(stack: Stack) -> int:
    """The revision this dispatcher serves (``GET /ready``)."""
    status, body = await load.admin_call(stack.admin_port, "GET", "/ready", b"", TOKEN)
    if status != 200:
        raise m.MeasureError(f"GET /ready answered {status}: {body[:200]!r}")
    revision: int = json.loads(body)["revision"]
    return revision


def _requests_per_port(log: Path) -> dict[str, int]:
    """What the Python upstream printed when it stopped (``bench/_upstream.py``)."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith('{"requests_per_port"'):
            counts: dict[str, int] = json.loads(line)["requests_per_port"]
            return counts
    raise m.MeasureError(f"the upstream printed no request counts in {log}")


# --- SIGTERM ----------------------------------------------------------------------------------


def sigterm(setup: Setup, *, load_seconds: float, connections: int = 32) -> Result:
    """SIGTERM after ``load_seconds`` of closed-loop load; count failures among the accepted."""
    with running(setup) as stack:
        report, signalled, exit_status, exit_seconds = asyncio.run(
            _terminate_under_load(stack, connections, load_seconds)
        )

    def is_accepted(outcome: load.Outcome) -> bool:
        return outcome.written_at < signalled or outcome.got_bytes

    accepted = [o for o in report.outcomes if is_accepted(o)]
    failed = report.failures(is_accepted)
    refused = report.failures(lambda o: not is_accepted(o))
    in_flight = sum(
        1 for o in report.outcomes if o.written_at < signalled < o.written_at + o.latency
    )
    checks = (
        _load_check("failed requests among those accepted", sum(failed.values()), len(accepted)),
        Check("exit status after SIGTERM", str(exit_status), "must be 0", exit_status == 0),
        Check(
            "exit after SIGTERM",
            f"{exit_seconds:.2f} s",
            f"< drain_timeout ({setup.drain_timeout:g} s) + 5 s",
            exit_seconds < setup.drain_timeout + 5,
            invariant=False,
        ),
    )
    figures: dict[str, object] = {
        "upstream": f"Python upstream (bench/_upstream.py, {setup.upstream_delay:g} s delay)",
        "load": f"Python closed loop, {connections} connections",
        "signal": f"SIGTERM after {load_seconds:g} s; drain_timeout {setup.drain_timeout:g} s",
        "requests": report.total,
        "accepted": len(accepted),
        "in flight at the signal (answered later)": in_flight,
        "failures among accepted": dict(failed),
        "not accepted (after the signal)": dict(refused),
    }
    return Result("sigterm", figures, checks)


async def _terminate_under_load(
    stack: Stack, connections: int, load_seconds: float
) -> tuple[load.LoadReport, float, int | None, float]:
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(
        load.closed_loop(stack.target, connections, duration=3600.0, stop=stop)
    )
    await asyncio.sleep(load_seconds)
    signalled = time.monotonic()
    stack.dispatcher.popen.send_signal(signal.SIGTERM)
    limit = signalled + stack.setup.drain_timeout + 30
    while stack.dispatcher.popen.poll() is None and time.monotonic() < limit:
        await asyncio.sleep(0.01)
    exit_seconds = time.monotonic() - signalled
    await asyncio.sleep(0.2)  # a last request or two against the closed port
    stop.set()
    return await traffic, signalled, stack.dispatcher.popen.poll(), exit_seconds


# --- command line -----------------------------------------------------------------------------


def _setup(args: argparse.Namespace) -> Setup:
    scratch = Path(tempfile.mkdtemp(prefix=f"soak-{args.scenario}-"))
    has_nginx = Path(NGINX).exists() and not args.python_upstream
    return Setup(scratch=scratch, upstream="nginx" if has_nginx else "python")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.sched_setaffinity(0, {m.LOAD_CORE})  # this script's clients share wrk's core
    use_wrk = has_wrk() and not args.python_load
    scenarios = ["saturation", "slowloris", "deploys", "sigterm"]
    chosen = scenarios if args.scenario == "all" else [args.scenario]
    command = " ".join([".venv/bin/python", "bench/soak.py", *(argv or sys.argv[1:])])
    results = []
    for name in chosen:
        result = _run(name, args, use_wrk)
        result = replace(result, command=command)
        print(result.report(), flush=True)
        record(result)
        results.append(result)
    return 0 if all(r.passed for r in results) else 1


def _run(name: str, args: argparse.Namespace, use_wrk: bool) -> Result:
    args.scenario = name
    if name == "saturation":
        return saturation(
            _setup(args), duration=args.duration or 60, warmup=args.warmup, use_wrk=use_wrk
        )
    if name == "slowloris":
        return slowloris(
            _setup(args),
            duration=args.duration or 20,
            connections=args.connections or 500,
            interval=args.interval,
            use_wrk=use_wrk,
        )
    if name == "deploys":
        return deploys(replace(_setup(args), upstream="python"), count=args.deploys, rate=args.rate)
    setup = replace(_setup(args), upstream="python", upstream_delay=args.delay)
    return sigterm(setup, load_seconds=args.load, connections=args.connections or 32)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenario", choices=["saturation", "slowloris", "deploys", "sigterm", "all"]
    )
    parser.add_argument("--duration", type=float, help="load seconds (60 saturation, 20 slowloris)")
    parser.add_argument("--warmup", type=float, default=10.0, help="saturation warm-up seconds")
    parser.add_argument("--connections", type=int, help="slowloris (500) or SIGTERM (32) clients")
    parser.add_argument("--interval", type=float, default=5.0, help="slowloris seconds per byte")
    parser.add_argument("--deploys", type=int, default=100, help="deploys (and rollbacks)")
    parser.add_argument("--rate", type=float, default=200.0, help="req/s during the deploys")
    parser.add_argument("--load", type=float, default=5.0, help="seconds of load before SIGTERM")
    parser.add_argument("--delay", type=float, default=0.05, help="SIGTERM upstream delay (s)")
    parser.add_argument("--python-load", action="store_true", help="the Python client, not wrk")
    parser.add_argument("--python-upstream", action="store_true", help="never nginx")
    return parser


if __name__ == "__main__":
    sys.exit(main())
