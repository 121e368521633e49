"""Measurement kit shared by the HTTP benchmarks: pinned servers, wrk, CPU per request.

The method is the anchors' (``/work/shared/bench-anchors``): the device under test (DUT)
runs under ``taskset -c 0`` and wrk (``-t1``) under ``taskset -c 1``; the DUT's cost is
Δ(utime+stime) from ``/proc/<pid>/stat`` summed over its process tree, divided by the
requests wrk completed.

Example::

    with ServerProcess.start("uvicorn", command, port, log_path=log) as server:
        status, body = http_exchange(port, "GET", "db.do", "/v1/items?id=1")
        sample = measure(server.pids(), port, Scenario("get_c32", 32, "db.do", "/"), 5.0)
        sample.cpu_us_per_request
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
DUT_CORE: Final = 0
LOAD_CORE: Final = 1
WRK_TIMEOUT_S: Final = 5
STARTUP_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0

_LATENCY_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_PERCENTILES: Final = ("50", "75", "90", "99")


class MeasureError(Exception):
    """A benchmark step failed: a server did not start, wrk failed, a smoke test failed."""


# --- CPU accounting from /proc ------------------------------------------------------------


def pinned(command: Sequence[str], core: int) -> list[str]:
    """``command`` run under ``taskset -c core``; children and threads inherit the mask."""
    return ["taskset", "-c", str(core), *command]


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now (granian's workers, nginx's)."""
    children = _children_by_parent()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on; ``None`` once the process is gone.

    The command name (field 2) may hold spaces and parentheses, hence the split at the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime of ``pids`` in clock ticks (processes that have exited count 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime: stat fields 14, 15
    return total


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Busy, total and stolen jiffies of each core (``cpu0``, ``cpu1``...) from
    ``/proc/stat``. Stolen time is what the hypervisor gave to other guests: counted busy,
    since the core was not ours to use."""

    busy: tuple[int, ...]
    total: tuple[int, ...]
    steal: tuple[int, ...] = ()

    @classmethod
    def read(cls) -> CoreTimes:
        busy: list[int] = []
        total: list[int] = []
        steal: list[int] = []
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("cpu") and line[3].isdigit():
                    values = [int(v) for v in line.split()[1:]]
                    total.append(sum(values))
                    busy.append(sum(values) - values[3] - values[4])  # minus idle and iowait
                    steal.append(values[7] if len(values) > 7 else 0)
        return cls(tuple(busy), tuple(total), tuple(steal))

    def shares_since(self, before: CoreTimes) -> tuple[float, ...]:
        """Share of each core busy between ``before`` and this reading (other tenants too)."""
        return tuple(
            (b1 - b0) / max(1, t1 - t0)
            for b0, b1, t0, t1 in zip(before.busy, self.busy, before.total, self.total, strict=True)
        )

    def steal_since(self, before: CoreTimes) -> float:
        """Share of all cores' time stolen by the hypervisor between ``before`` and now: a
        disturbed measurement, whatever the figures say."""
        stolen = sum(self.steal) - sum(before.steal)
        return stolen / max(1, sum(self.total) - sum(before.total))


# --- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One wrk load: name, connections, Host header, path and optional Lua script."""

    name: str
    connections: int
    host: str
    path: str
    script: Path | None = None


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run reports; latencies in milliseconds."""

    rps: float
    requests: int
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors


def wrk_command(port: int, scenario: Scenario, duration: float, core: int = LOAD_CORE) -> list[str]:
    """The pinned wrk command line for ``scenario`` against 127.0.0.1:``port``."""
    command = [
        "wrk",
        "-t1",
        f"-c{scenario.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        f"{WRK_TIMEOUT_S}s",
        "-H",
        f"Host: {scenario.host}",
    ]
    if scenario.script is not None:
        command += ["-s", str(scenario.script)]
    command.append(f"http://127.0.0.1:{port}{scenario.path}")
    return pinned(command, core)


def run_wrk(port: int, scenario: Scenario, duration: float, core: int = LOAD_CORE) -> WrkResult:
    """Run wrk to completion and parse its report."""
    command = wrk_command(port, scenario, duration, core)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeasureError(f"wrk failed to run ({' '.join(command)}): {exc}") from exc
    if done.returncode != 0:
        raise MeasureError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """Parse the report of ``wrk --latency``; ``MeasureError`` when a figure is missing."""
    latencies = {p: _latency_ms(_find(rf"^\s+{p}%\s+([\d.]+\w+)", output)) for p in _PERCENTILES}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        requests=int(_find(r"(\d+) requests in", output)),
        p50_ms=latencies["50"],
        p75_ms=latencies["75"],
        p90_ms=latencies["90"],
        p99_ms=latencies["99"],
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def _find(pattern: str, output: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise MeasureError(f"wrk output has no match for {pattern!r}:\n{output}")
    return match.group(1)


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise MeasureError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _LATENCY_UNITS[match.group(2)]


# --- one measurement ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run and the CPU the DUT's process tree spent meanwhile."""

    wrk: WrkResult
    cpu_s: float
    core_busy: tuple[float, ...]
    pids: int
    steal: float = 0.0  # share of the machine's CPU time the hypervisor took meanwhile

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / max(1, self.wrk.requests)


def measure(pids: Sequence[int], port: int, scenario: Scenario, duration: float) -> Sample:
    """Run ``scenario`` and charge the CPU time of ``pids`` to the requests completed."""
    ticks, cores = cpu_ticks(pids), CoreTimes.read()
    result = run_wrk(port, scenario, duration)
    spent, after = cpu_ticks(pids) - ticks, CoreTimes.read()
    return Sample(
        result, spent / CLOCK_TICKS, after.shares_since(cores), len(pids), after.steal_since(cores)
    )


@dataclass(frozen=True, slots=True)
class Spread:
    """Median, minimum and maximum of a few rounds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        data = list(values)
        if not data:
            raise MeasureError("no values to summarize")
        return cls(statistics.median(data), min(data), max(data))


# --- servers ------------------------------------------------------------------------------


class ServerProcess:
    """A server we started in its own session (so its process group is ours to signal)."""

    __slots__ = ("name", "port", "log_path", "_process")

    def __init__(self, name: str, port: int, log_path: Path, process: subprocess.Popen[bytes]):
        self.name = name
        self.port = port
        self.log_path = log_path
        self._process = process

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        port: int,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        core: int = DUT_CORE,
    ) -> ServerProcess:
        """Start ``command`` pinned to ``core`` and wait until ``port`` accepts connections."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            try:
                process = subprocess.Popen(
                    pinned(command, core),
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise MeasureError(f"{name}: cannot start {command[0]}: {exc}") from exc
        server = cls(name, port, log_path, process)
        try:
            server.wait_until_listening()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def pid(self) -> int:
        return self._process.pid

    def pids(self) -> list[int]:
        """The server's process tree now."""
        return process_tree(self._process.pid)

    def wait_until_listening(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MeasureError(
                    f"{self.name} exited with status {self._process.returncode} before "
                    f"listening on port {self.port}; see {self.log_path}"
                )
            if is_listening(self.port):
                return
            time.sleep(0.05)
        raise MeasureError(f"{self.name} did not listen on port {self.port} within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM our process group, SIGKILL it if it lingers, then reap."""
        group = self._process.pid  # start_new_session: the group id is the leader's pid
        members = self.pids()
        if self._process.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                self._process.wait(timeout=STOP_TIMEOUT_S)
        _kill_stragglers(members, group)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(group: int, signum: signal.Signals) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _kill_stragglers(pids: Iterable[int], group: int) -> None:
    """Children that outlived their leader, but only while they are still in our group."""
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) == group:  # field 5: process group id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nobody listens on now (the kernel's picks for port 0).

    The probes stay bound until all are picked, so the ports differ; a server started
    later may still lose its port to another program (rare on loopback).
    """
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def http_exchange(
    port: int, method: str, host: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request on a fresh connection: ``(status, body)``; ``MeasureError`` if it fails."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise MeasureError(f"{method} http://{host}{path} on port {port}: {exc!r}") from exc
    finally:
        connection.close()
