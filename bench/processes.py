"""``serve --processes N``: CPU per request against N=1, and how the work is shared.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/processes.py [--rounds 3] [--duration 5] [--processes 2]

The same nginx upstream as ``bench/proxy.py`` (core 1, with wrk) serves the seed's services;
the dispatcher (``--processes 1``, then ``--processes N``; the supervisor and all serving
processes pinned to core 0) forwards wrk's GET ``-c32`` to it. For each round and each
configuration: CPU µs per request of the dispatcher's whole process tree (supervisor
included), requests per second and p99. Then a probe of 400 new connections to a worker
that answers its process id shows how the kernel shares connections among the processes.
Interleaved rounds; the verdict compares the medians (N within 10 % of N=1) and the largest
share (at most 60 %).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _measure as m  # noqa: E402
from bench.inproc import WARMUP  # noqa: E402
from bench.proxy import Layout, upstream_command, write_dispatcher_config  # noqa: E402
from dispatcher.routing import SEED_SERVICES  # noqa: E402

GET_C32: Final = m.Scenario("get_c32", 32, "db.do", "/v1/items?id=1")
MAX_CPU_RATIO: Final = 1.10
MAX_SHARE: Final = 0.60
PROBE: Final = 400
LOGS: Final = Path(__file__).resolve().parent / "results" / "logs"


def dispatcher(bin_dir: Path, port: int, admin: int, config: Path, processes: int) -> list[str]:
    return [
        str(bin_dir / "dispatcher"), "serve", "--config", str(config), "--port", str(port),
        "--admin-port", str(admin), "--log-level", "warning", "--no-access-log",
        "--processes", str(processes),
    ]  # fmt: skip


def share_probe(port: int) -> Counter[int]:
    """Which process answers each of ``PROBE`` new connections (the ``pid`` worker)."""
    counts: Counter[int] = Counter()
    for _ in range(PROBE):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/", headers={"Host": "pid.do", "Connection": "close"})
            counts[int(connection.getresponse().read().split(b'"pid": ')[1].split(b"}")[0])] += 1
        finally:
            connection.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as scratch_dir:
        scratch = Path(scratch_dir)
        layout = Layout.allocate(scratch)
        config = write_dispatcher_config(scratch / "dispatcher.toml", layout.urls)
        with open(config, "a") as extra:
            # A service answering its process id, for the share probe.
            extra.write('pid = { app = "tests.workers:process" }\n')
            services = ", ".join(f'"{s}"' for s in (*SEED_SERVICES, "pid"))
            extra.write(f"[routing]\nservices = [{services}]\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        env["DISPATCHER_STORE"] = f"sqlite:///{scratch / 'registry.db'}"
        env["ENVIRONMENT"] = "development"
        env["DISPATCHER_ADMIN_TOKEN"] = "bench-processes-token-0123456789"
        upstream = m.ServerProcess.start(
            "upstream", upstream_command(layout), layout.upstream["db"],
            log_path=LOGS / "processes-upstream.log", env=env, cwd=scratch, core=1,
        )  # fmt: skip
        counts = (1, args.processes)
        cpu: dict[int, list[float]] = {n: [] for n in counts}
        rps: dict[int, list[float]] = {n: [] for n in counts}
        p99: dict[int, list[float]] = {n: [] for n in counts}
        shares: Counter[int] = Counter()
        try:
            for rnd in range(args.rounds):
                for n in counts if rnd % 2 == 0 else counts[::-1]:
                    port, admin = m.free_ports(2)
                    server = m.ServerProcess.start(
                        f"dispatcher-{n}", dispatcher(bin_dir, port, admin, config, n), port,
                        log_path=LOGS / f"processes-{n}.log", env=env, cwd=scratch, core=0,
                    )  # fmt: skip
                    try:
                        time.sleep(2.0)  # every serving process has bound the port
                        m.run_wrk(port, WARMUP, 1.0)
                        sample = m.measure(server.pids(), port, GET_C32, args.duration)
                        cpu[n].append(sample.cpu_us_per_request)
                        rps[n].append(sample.wrk.rps)
                        p99[n].append(sample.wrk.p99_ms)
                        print(
                            f"round {rnd} N={n}: {sample.wrk.rps:,.0f} rps, "
                            f"{sample.cpu_us_per_request:.1f} µs/req, "
                            f"p99 {sample.wrk.p99_ms:.2f} ms, {sample.pids} processes",
                            flush=True,
                        )
                        if n > 1 and rnd == 0:
                            shares = share_probe(port)
                    finally:
                        server.stop()
        finally:
            upstream.stop()
    one, many = statistics.median(cpu[1]), statistics.median(cpu[args.processes])
    ratio = many / one
    top = max(shares.values()) / PROBE if shares else 1.0
    print(f"\nCPU µs/req, median of {args.rounds}: N=1 {one:.1f}, N={args.processes} {many:.1f}")
    print(f"ratio N={args.processes}/N=1: {ratio:.2f} (target <= {MAX_CPU_RATIO}): "
          f"{'PASS' if ratio <= MAX_CPU_RATIO else 'FAIL'}")  # fmt: skip
    print(f"rps median: N=1 {statistics.median(rps[1]):,.0f}, "
          f"N={args.processes} {statistics.median(rps[args.processes]):,.0f}")  # fmt: skip
    print(f"p99 median: N=1 {statistics.median(p99[1]):.2f} ms, "
          f"N={args.processes} {statistics.median(p99[args.processes]):.2f} ms")  # fmt: skip
    verdict = "PASS" if top <= MAX_SHARE else "FAIL"
    print(f"share of {PROBE} new connections: {sorted(shares.values(), reverse=True)}; "
          f"largest {top:.0%} (target <= {MAX_SHARE:.0%}): {verdict}")  # fmt: skip
    return 0 if ratio <= MAX_CPU_RATIO and top <= MAX_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
