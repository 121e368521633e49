"""Upstream proxy: CPU per request of the dispatcher forwarding to upstream workers, vs peers.

Run from the repository root with the project's virtualenv (starlette, aiohttp and httpx
installed for the Python peers)::

    .venv/bin/python bench/proxy.py [--rounds 3] [--duration 6] [--warmup 1] [--only NAMES]
    .venv/bin/python bench/proxy.py --profile bench/results/proxy-profile.txt [--native]

The same upstream serves every configuration: one nginx worker pinned to core 1 (with wrk
``-t1``), eight "services" (the dispatcher's seed names) on free ports, each answering
``return 200`` with a ~94 B JSON body that names the service (request bodies discarded).
The device under test (DUT) is pinned to core 0:

* ``direct``: no proxy, a second instance of the upstream's nginx in the DUT's place (wrk
  goes to the service's own port), like the anchors' "direct" row;
* ``nginx``: ``proxy_pass`` with ``keepalive 64``, HTTP/1.1 and ``Connection ""`` upstream;
* ``nginx-access-log``: the same with an access log like the dispatcher's: a JSON line with
  the same fields per request, to a file, buffered (``buffer=64k flush=250ms``; the
  dispatcher writes 64 lines or every 0.25 s): the like-for-like peer of
  ``dispatcher-access-log``;
* ``haproxy``: ``nbthread 1``, ``http-reuse always``;
* ``starlette-aiohttp`` and ``starlette-httpx``: a naive Starlette proxy on uvicorn with one
  shared aiohttp ``ClientSession`` / httpx ``AsyncClient`` (``bench/peers/``);
* ``dispatcher``: ``dispatcher serve`` with the eight services as upstream workers
  (``{ url = "http://127.0.0.1:P" }`` in ``[workers."dotdo-development"]``), ``--log-level
  warning --no-access-log``; its Prometheus metrics are always counted (issue #5);
* ``dispatcher-access-log``: the same with ``--log-level info --access-log``: one JSON line
  per request on stderr, which goes to its log file (like nginx's access log to a file);
* ``dispatcher-scraped``: the plain dispatcher, while a thread of this process (pinned off
  the DUT's core, so its CPU is not the DUT's) GETs ``/metrics`` on its admin port every
  0.25 s during each of its wrk runs (Prometheus's default is 15 s: a stress test); every
  scrape must answer 200 with the request counter.
* ``dispatcher-interpreted``: the plain dispatcher with ``DISPATCHER_PURE_PYTHON=1``: its
  request path runs from source instead of the mypyc-compiled build (what compiling buys).

``--only NAMES`` (comma-separated) limits the rounds to some configurations, e.g.
``direct,nginx,nginx-access-log,dispatcher,dispatcher-access-log,dispatcher-scraped``.

Every proxy routes like the dispatcher's seed table: ``Host: db.do`` → db, ``api.do`` +
``/api/auth/...`` → auth. Scenarios are the anchors': GET ``/v1/items?id=1`` Host db.do at
``-c32`` and ``-c4``, and a 64 KiB POST to api.do ``/api/auth/upload`` at ``-c32``.
Every configuration is smoke-tested first (status 200 and the routed service's exact body);
then interleaved rounds (warm-up discarded) measure CPU µs per request of the DUT's process
tree and of the upstream. The report gives medians, min–max, ratios paired per round against
nginx and Starlette+aiohttp, and the verdicts (the access-logged dispatcher's against the
access-logged nginx); then the two dispatcher variants against the
plain one (CPU µs/req, rps, p99), whether scraping stays within noise (CPU and p99 within 10 %)
and what the access log costs. Raw rows go to ``bench/results/proxy.jsonl``.

``--profile FILE`` starts only the upstream and one configuration (``--profile-config``,
default the dispatcher) and puts the GET -c32 load on it three times: under py-spy (Python
configurations; raw collapsed stacks to FILE; user vs system CPU from ``/proc``; samples by
function and by line), under ``perf stat`` on the syscall tracepoints (system calls per
request), and under ``perf record -e cpu-clock -g`` (µs per request by binary, by kernel
path and by symbol). The perf parts are skipped when ``perf`` is not installed.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

try:
    from bench import _measure as m
    from bench.inproc import POST_SIZE, SCENARIOS, WARMUP
    from bench.peers.routing import UPSTREAMS_VARIABLE, PeerRoutes
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _measure as m
    from bench.inproc import POST_SIZE, SCENARIOS, WARMUP
    from bench.peers.routing import UPSTREAMS_VARIABLE, PeerRoutes

from dispatcher._compiled import PURE_PYTHON_VARIABLE, describe_build
from dispatcher.routing import SEED_SERVICES

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = BENCH_DIR.parent
PEERS: Final = BENCH_DIR / "peers"
RESULTS: Final = BENCH_DIR / "results" / "proxy.jsonl"
LOGS: Final = BENCH_DIR / "results" / "logs"
NAMESPACE: Final = "dotdo-development"

NGINX, AIOHTTP, HTTPX, SUBJECT, DIRECT = (
    "nginx",
    "starlette-aiohttp",
    "starlette-httpx",
    "dispatcher",
    "direct",
)
ACCESS_LOGGED, SCRAPED = "dispatcher-access-log", "dispatcher-scraped"
NGINX_LOGGED = "nginx-access-log"
INTERPRETED = "dispatcher-interpreted"
DISPATCHERS: Final = (SUBJECT, ACCESS_LOGGED, SCRAPED, INTERPRETED)
LABELS: Final = {
    DIRECT: "direct: upstream nginx `return 200` on core 0 (no proxy)",
    NGINX: "nginx proxy_pass, keepalive 64",
    NGINX_LOGGED: "nginx, access log on (JSON lines to a file, buffer=64k flush=250ms)",
    "haproxy": "HAProxy, nbthread 1, http-reuse always",
    AIOHTTP: "Starlette + aiohttp ClientSession (uvicorn)",
    HTTPX: "Starlette + httpx AsyncClient (uvicorn)",
    SUBJECT: "dispatcher, upstream workers",
    ACCESS_LOGGED: "dispatcher, access log on (--log-level info, JSON lines to a file)",
    SCRAPED: "dispatcher, /metrics scraped every 0.25 s",
    INTERPRETED: "dispatcher, interpreted (DISPATCHER_PURE_PYTHON=1: source, not compiled)",
}
UVICORN_FLAGS: Final = "--loop uvloop --http httptools --no-access-log --log-level warning"
VERSIONED: Final = (
    "dispatcher",
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "aiohttp",
    "httpx",
    "httpcore",
    "anyio",
    "sniffio",
)
ACCESS_LOG_NOTE: Final = (
    "Access log on/off: the `dispatcher` rows run with `--no-access-log` (and Prometheus "
    "metrics, which are always counted); `dispatcher-access-log` runs with `--log-level info "
    "--access-log`, one JSON line per request written to its log file. `nginx` runs with "
    "`access_log off`; `nginx-access-log` writes a JSON line with the same fields per request "
    "to a file, buffered like ours (64 KiB or 0.25 s), its like-for-like peer."
)
MAX_CPU_VS_NGINX: Final = 2.0
MIN_CPU_GAIN_VS_AIOHTTP: Final = 8.0
MAX_P99_VS_NGINX: Final = 2.0
SCRAPE_INTERVAL_S: Final = 0.25
MAX_SCRAPED_VS_PLAIN: Final = 1.10  # "within noise": CPU/req and p99 at most 10 % above plain
METRICS_PATH: Final = "/metrics"
METRICS_MARKER: Final = b"dispatcher_requests_total"  # a scrape must carry the request counter
ACCESS_LOGGER_FIELD: Final = '"logger": "dispatcher.access"'  # how an access line shows


def upstream_body(service: str) -> bytes:
    """What the upstream's ``service`` answers (``bench/peers/nginx-upstream.conf``)."""
    return (
        b'{"service":"%s","ok":true,"items":[1,2,3],"message":"hello from upstream",'
        b'"pad":"abcdefghij"}\n' % service.encode()
    )


# --- configurations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contender:
    """One configuration under test: how to start it and where wrk sends each request.

    ``direct_ports`` is set for the no-proxy row only: the request goes straight to the port
    of the service the proxies would route it to. ``scrape_port`` is set for the scraped
    dispatcher only: the admin port whose ``/metrics`` is scraped during its wrk runs.
    """

    name: str
    command: tuple[str, ...]
    port: int
    env: Mapping[str, str]
    direct_ports: Mapping[str, int] | None = None
    scrape_port: int | None = None

    @property
    def is_proxy(self) -> bool:
        return self.direct_ports is None

    def port_for(self, routes: PeerRoutes, host: str, path: str) -> int:
        if self.direct_ports is None:
            return self.port
        service = routes.resolve(host, path.partition("?")[0])
        if service is None:
            raise m.MeasureError(f"{host}{path} routes nowhere")
        return self.direct_ports[service]


@dataclass(frozen=True, slots=True)
class Layout:
    """The ports of one run and its scratch directory, fixed before anything starts."""

    scratch: Path
    upstream: Mapping[str, int]
    direct: Mapping[str, int]
    listen: Mapping[str, int]

    @classmethod
    def allocate(cls, scratch: Path) -> Layout:
        peers = (NGINX, NGINX_LOGGED, "haproxy", AIOHTTP, HTTPX)
        proxies = (*peers, *DISPATCHERS, *map(admin_key, DISPATCHERS))
        ports = m.free_ports(2 * len(SEED_SERVICES) + len(proxies))
        count = len(SEED_SERVICES)
        return cls(
            scratch=scratch,
            upstream=dict(zip(SEED_SERVICES, ports[:count], strict=True)),
            direct=dict(zip(SEED_SERVICES, ports[count : 2 * count], strict=True)),
            listen=dict(zip(proxies, ports[2 * count :], strict=True)),
        )

    @property
    def urls(self) -> dict[str, str]:
        return {s: f"http://127.0.0.1:{p}" for s, p in self.upstream.items()}

    @property
    def routes(self) -> PeerRoutes:
        return PeerRoutes.from_urls(self.urls)


def admin_key(dispatcher: str) -> str:
    """The key of ``dispatcher``'s admin listener in ``Layout.listen`` (each needs its own)."""
    return f"{dispatcher}-admin"


def render(template: Path, values: Mapping[str, str]) -> str:
    """``template`` with each ``@key@`` replaced; every placeholder must have a value."""
    text = re.sub(
        r"@(\w+)@", lambda match: values.get(match.group(1), match.group(0)), template.read_text()
    )
    left = sorted(set(re.findall(r"@(\w+)@", text)))
    if left:
        raise m.MeasureError(f"{template.name}: no value for {', '.join(left)}")
    return text


def _write_config(
    layout: Layout,
    template: str,
    name: str,
    ports: Mapping[str, int],
    listen: int | None,
    extra: Mapping[str, str] | None = None,
) -> Path:
    values = {"run": str(layout.scratch), "name": name, **(extra or {})}
    values |= {f"port_{service}": str(port) for service, port in ports.items()}
    if listen is not None:
        values["listen"] = str(listen)
    path = layout.scratch / f"{name}{Path(template).suffix}"
    path.write_text(render(PEERS / template, values))
    return path


NGINX_LOG_OFF: Final = {"access_log": "access_log off;"}


def nginx_access_log(path: Path) -> str:
    """nginx's access log made like the dispatcher's: one JSON line per request with the same
    fields, to a file, written in batches (the dispatcher writes 64 lines or every 0.25 s)."""
    line = (
        '{"ts": "$time_iso8601", "level": "info", "logger": "nginx.access", '
        '"message": "$request_method $host$uri $status", "request_id": "$request_id", '
        '"method": "$request_method", "host": "$host", "path": "$uri", "status": $status, '
        '"outcome": "routed", "service": "$proxy_host", "worker": "$proxy_host", '
        '"duration_s": $request_time, "client": "$remote_addr", '
        f'"environment": "development", "namespace": "{NAMESPACE}"}}'
    )
    return (
        f"log_format dispatcher_like escape=json '{line}';\n"
        f"    access_log {path} dispatcher_like buffer=64k flush=250ms;"
    )


def upstream_command(layout: Layout) -> tuple[str, ...]:
    config = _write_config(layout, "nginx-upstream.conf", "upstream", layout.upstream, None)
    return (
        "nginx",
        "-p",
        str(layout.scratch),
        "-e",
        str(layout.scratch / "upstream.err"),
        "-c",
        str(config),
    )


def write_dispatcher_config(path: Path, urls: Mapping[str, str]) -> Path:
    """A TOML config declaring each seed service as an upstream worker at ``urls[service]``."""
    lines = [f'[workers."{NAMESPACE}"]']
    lines += [f'{service} = {{ url = "{urls[service]}" }}' for service in SEED_SERVICES]
    path.write_text("\n".join(lines) + "\n")
    return path


def contenders(bin_dir: Path, layout: Layout) -> list[Contender]:
    """Every configuration, in the order of the first round."""
    env = _environment(layout)
    scratch, listen = layout.scratch, layout.listen
    direct = _write_config(layout, "nginx-upstream.conf", DIRECT, layout.direct, None)
    nginx = _write_config(
        layout, "nginx-proxy.conf", NGINX, layout.upstream, listen[NGINX], NGINX_LOG_OFF
    )
    nginx_logged = _write_config(
        layout,
        "nginx-proxy.conf",
        NGINX_LOGGED,
        layout.upstream,
        listen[NGINX_LOGGED],
        {"access_log": nginx_access_log(layout.scratch / f"{NGINX_LOGGED}.access.log")},
    )
    haproxy = _write_config(layout, "haproxy.cfg", "haproxy", layout.upstream, listen["haproxy"])
    toml = write_dispatcher_config(scratch / "dispatcher.toml", layout.urls)
    nginx_args = ("-p", str(scratch), "-e", str(scratch / "nginx-startup.err"))
    dispatcher = _DispatcherLauncher(str(bin_dir / "dispatcher"), toml, listen)
    return [
        Contender(
            DIRECT,
            ("nginx", *nginx_args, "-c", str(direct)),
            layout.direct["db"],
            env,
            direct_ports=layout.direct,
        ),
        Contender(NGINX, ("nginx", *nginx_args, "-c", str(nginx)), listen[NGINX], env),
        Contender(
            NGINX_LOGGED,
            ("nginx", *nginx_args, "-c", str(nginx_logged)),
            listen[NGINX_LOGGED],
            env,
        ),
        Contender("haproxy", ("haproxy", "-db", "-f", str(haproxy)), listen["haproxy"], env),
        Contender(
            AIOHTTP, _uvicorn(bin_dir, "starlette_aiohttp", listen[AIOHTTP]), listen[AIOHTTP], env
        ),
        Contender(HTTPX, _uvicorn(bin_dir, "starlette_httpx", listen[HTTPX]), listen[HTTPX], env),
        Contender(SUBJECT, dispatcher(SUBJECT, access_log=False), listen[SUBJECT], env),
        Contender(
            ACCESS_LOGGED, dispatcher(ACCESS_LOGGED, access_log=True), listen[ACCESS_LOGGED], env
        ),
        Contender(
            SCRAPED,
            dispatcher(SCRAPED, access_log=False),
            listen[SCRAPED],
            env,
            scrape_port=listen[admin_key(SCRAPED)],
        ),
        Contender(
            INTERPRETED,
            dispatcher(INTERPRETED, access_log=False),
            listen[INTERPRETED],
            {**env, PURE_PYTHON_VARIABLE: "1"},
        ),
    ]


def _environment(layout: Layout) -> dict[str, str]:
    """The repository on PYTHONPATH (for ``bench.peers``), the upstreams, the store in scratch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env[UPSTREAMS_VARIABLE] = json.dumps(layout.urls)
    env["DISPATCHER_STORE"] = f"sqlite:///{layout.scratch / 'registry.db'}"
    env["ENVIRONMENT"] = "development"  # the namespace the generated config fills
    return env


def _uvicorn(bin_dir: Path, module: str, port: int) -> tuple[str, ...]:
    app = f"bench.peers.{module}:app"
    where = ("--host", "127.0.0.1", "--port", str(port))
    return (str(bin_dir / "uvicorn"), app, *where, *UVICORN_FLAGS.split())


class _DispatcherLauncher:
    """Command lines of ``dispatcher serve`` on the listen and admin ports of a name."""

    __slots__ = ("_program", "_config", "_listen", "_admin_option")

    def __init__(self, program: str, config: Path, listen: Mapping[str, int]) -> None:
        self._program, self._config, self._listen = program, config, listen
        # Its default admin port is fixed: a free one each, so the dispatchers cannot collide.
        self._admin_option = _has_option(program, "serve", "--admin-port")

    def __call__(self, name: str, *, access_log: bool) -> tuple[str, ...]:
        serve: tuple[str, ...] = ("serve", "--config", str(self._config))
        serve += ("--port", str(self._listen[name]))
        # Access records are INFO: "warning" alone would silence them, so the plain rows
        # also turn the log off outright (no record is even queued).
        if access_log:
            serve += ("--log-level", "info", "--access-log")
        else:
            serve += ("--log-level", "warning", "--no-access-log")
        if self._admin_option:
            serve += ("--admin-port", str(self._listen[admin_key(name)]))
        return (self._program, *serve)


def _has_option(program: str, command: str, option: str) -> bool:
    """Whether ``program command --help`` lists ``option`` (the CLI grows while we measure)."""
    try:
        done = subprocess.run(
            [program, command, "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise m.MeasureError(f"cannot run {program} {command} --help: {exc}") from exc
    return option in done.stdout


# --- smoke test -------------------------------------------------------------------------------


# (method, host, path, body, service that must answer)
SMOKE_REQUESTS: Final = (
    ("GET", "db.do", "/v1/items?id=1", None, "db"),
    ("GET", "api.do", "/api/auth/login", None, "auth"),
    ("POST", "api.do", "/api/auth/upload", b"x" * POST_SIZE, "auth"),
    ("GET", "api.do", "/", None, "gateway"),
)


def smoke_test(server: m.ServerProcess, contender: Contender, routes: PeerRoutes) -> None:
    """Each request answers 200 with the exact body of the service it must route to."""
    for method, host, path, body, service in SMOKE_REQUESTS:
        port = contender.port_for(routes, host, path)
        status, answer = m.http_exchange(port, method, host, path, body)
        if status != 200 or answer != upstream_body(service):
            raise m.MeasureError(
                f"smoke test of {server.name}: {method} {host}{path} answered {status} "
                f"{answer[:120]!r}, expected 200 from {service}: {upstream_body(service)!r}"
            )
    print(
        f"  smoke {server.name:<21} GET db.do → db, GET/POST 64 KiB api.do/api/auth → auth, "
        "api.do/ → gateway: 200, exact bodies",
        flush=True,
    )


def smoke_test_variant(server: m.ServerProcess, contender: Contender) -> None:
    """The scraped dispatcher answers ``/metrics``; the access-logged one writes its lines."""
    if contender.scrape_port is not None:
        status, body = m.http_exchange(contender.scrape_port, "GET", "127.0.0.1", METRICS_PATH)
        if status != 200 or METRICS_MARKER not in body:
            raise m.MeasureError(f"{server.name}: {METRICS_PATH} answered {status} {body[:120]!r}")
        print(f"  smoke {server.name:<21} {METRICS_PATH} on the admin port: 200", flush=True)
    if contender.name == ACCESS_LOGGED:
        # The log is written in batches, every FLUSH_SECONDS (0.25 s): give it a few.
        deadline = time.monotonic() + 5
        while access_lines(server.log_path) < len(SMOKE_REQUESTS):
            if time.monotonic() > deadline:
                raise m.MeasureError(f"{server.name}: no access log lines in {server.log_path}")
            time.sleep(0.1)
        print(f"  smoke {server.name:<21} access log lines in {server.log_path}", flush=True)


@dataclass(frozen=True, slots=True)
class ScrapeCost:
    """What one ``/metrics`` scrape costs the dispatcher's process, measured idle."""

    scrapes: int
    cpu_ms: float  # the DUT's CPU per scrape, its idle background subtracted
    size: int  # bytes of one answer

    def note(self, rows: Sequence[Row]) -> str:
        """The scrape's CPU spread over the plain dispatcher's requests at the bench's rate.

        Unlike the paired ratios, this does not depend on the machine being quiet: it is
        the part of the scraped rows' CPU per request that scraping can explain.
        """
        per_second = self.cpu_ms / SCRAPE_INTERVAL_S
        parts = []
        for scenario in (s.name for s in SCENARIOS):
            plain = [r for r in rows if r.config == SUBJECT and r.scenario == scenario]
            if plain:
                rps = statistics.median(r.rps for r in plain)
                cpu = statistics.median(r.cpu_us_per_req for r in plain)
                extra = per_second * 1000 / rps  # µs per request
                parts.append(f"{scenario} {extra:.2f} µs/req = {100 * extra / cpu:.1f} %")
        return (
            f"A scrape costs the dispatcher {self.cpu_ms:.2f} ms CPU ({self.scrapes} scrapes "
            f"of {self.size:,} B, idle): every {SCRAPE_INTERVAL_S:g} s that is "
            f"{per_second:.1f} ms per second, spread over the plain rows' median rps: "
            + "; ".join(parts)
            + " of their CPU per request."
        )


def measure_scrape_cost(server: m.ServerProcess, port: int, scrapes: int = 200) -> ScrapeCost:
    """The DUT's CPU per scrape, from back-to-back scrapes with no other load.

    The CPU clock ticks every 10 ms, so a few hundred scrapes are needed; the process's idle
    CPU (timers) is measured first over a second and subtracted.
    """
    pids = server.pids()
    started, ticks = time.monotonic(), m.cpu_ticks(pids)
    time.sleep(1.0)
    idle_per_second = (m.cpu_ticks(pids) - ticks) / (time.monotonic() - started)
    started, ticks, size = time.monotonic(), m.cpu_ticks(pids), 0
    for _ in range(scrapes):
        status, body = m.http_exchange(port, "GET", "127.0.0.1", METRICS_PATH)
        if status != 200 or METRICS_MARKER not in body:
            raise m.MeasureError(f"{server.name}: {METRICS_PATH} answered {status} {body[:120]!r}")
        size = len(body)
    spent = m.cpu_ticks(pids) - ticks - idle_per_second * (time.monotonic() - started)
    cost = ScrapeCost(scrapes, max(0.0, spent) * 1000 / m.CLOCK_TICKS / scrapes, size)
    print(f"  scrape cost {server.name:<15} {cost.cpu_ms:.2f} ms CPU per scrape", flush=True)
    return cost


def access_lines(log: Path) -> int:
    """How many access log lines ``log`` holds."""
    with open(log, "rb") as lines:
        return sum(1 for line in lines if ACCESS_LOGGER_FIELD.encode() in line)


def access_log_note(log: Path, rows: Sequence[Row]) -> str:
    """What the access log wrote during the run, next to the requests wrk counted."""
    measured = sum(r.requests for r in rows if r.config == ACCESS_LOGGED)
    return (
        f"Access log written: {access_lines(log):,} lines, {log.stat().st_size / 1e6:,.0f} MB "
        f"in {log}, for {measured:,} measured requests (plus warm-ups and smoke tests)."
    )


# --- measuring --------------------------------------------------------------------------------


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
    upstream_cpu_us_per_req: float | None
    core0_busy: float
    core1_busy: float
    pids: int
    scrapes: int | None = None  # the scraped dispatcher's: /metrics GETs answered 200
    scrape_max_ms: float | None = None
    steal: float = 0.0  # share of the machine's CPU the hypervisor took during the run


@dataclass(frozen=True, slots=True)
class Running:
    """A started configuration with its server and the wrk run length it gets."""

    contender: Contender
    server: m.ServerProcess
    duration: float


@dataclass(frozen=True, slots=True)
class ScrapeTally:
    """The scrapes during one wrk run: how many answered 200 with the counter, the slowest."""

    count: int
    slowest_ms: float


class Scraper:
    """GETs ``/metrics`` every ``interval`` seconds from a thread of this process.

    Like Prometheus, it is not the DUT's child: its own CPU (the request, reading the
    answer) is not charged to the DUT, and the thread is pinned off the DUT's core so it
    does not compete with it either. The DUT pays what a scrape costs it: rendering the
    metrics on the event loop that also serves the routed requests.
    """

    __slots__ = ("_port", "_interval", "_stop", "_latencies", "_failures", "_thread")

    def __init__(self, port: int, interval: float = SCRAPE_INTERVAL_S) -> None:
        self._port, self._interval = port, interval
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._failures: list[str] = []
        self._thread = threading.Thread(
            target=self._scrape_until_stopped, name=f"scraper-{port}", daemon=True
        )

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def tally(self) -> ScrapeTally:
        """The run's scrapes; ``MeasureError`` if one failed or none happened."""
        if self._failures:
            raise m.MeasureError(
                f"{len(self._failures)} scrape(s) of :{self._port}{METRICS_PATH} failed, "
                f"the first: {self._failures[0]}"
            )
        if not self._latencies:
            raise m.MeasureError(f"no scrape of :{self._port}{METRICS_PATH} during the run")
        return ScrapeTally(len(self._latencies), max(self._latencies) * 1000)

    def _scrape_until_stopped(self) -> None:
        _pin_off_dut_core()
        due = time.monotonic()
        while True:
            # On a fixed beat; a scrape slower than the beat delays the next, never bunches.
            due = max(due + self._interval, time.monotonic())
            if self._stop.wait(due - time.monotonic()):
                return
            self._scrape_once()

    def _scrape_once(self) -> None:
        started = time.perf_counter()
        try:
            status, body = m.http_exchange(self._port, "GET", "127.0.0.1", METRICS_PATH)
        except m.MeasureError as exc:
            self._failures.append(str(exc))
            return
        if status != 200 or METRICS_MARKER not in body:
            self._failures.append(f"answered {status} {body[:120]!r}")
            return
        self._latencies.append(time.perf_counter() - started)


def _pin_off_dut_core() -> None:
    """Move the calling thread (pid 0 names the thread on Linux) off the DUT's core."""
    others = os.sched_getaffinity(0) - {m.DUT_CORE}
    if others:
        os.sched_setaffinity(0, others)


def measure_one(
    running: Running, upstream: m.ServerProcess, routes: PeerRoutes, scenario: m.Scenario
) -> tuple[m.Sample, float | None, ScrapeTally | None]:
    """One wrk run on ``running``: the DUT's sample, the upstream's CPU µs per request and,
    for the scraped dispatcher, the scrapes made meanwhile."""
    c = running.contender
    port = c.port_for(routes, scenario.host, scenario.path)
    upstream_pids = upstream.pids()
    before = m.cpu_ticks(upstream_pids)
    tally = None
    if c.scrape_port is None:
        sample = m.measure(running.server.pids(), port, scenario, running.duration)
    else:
        with Scraper(c.scrape_port) as scraper:
            sample = m.measure(running.server.pids(), port, scenario, running.duration)
        tally = scraper.tally()
    spent = (m.cpu_ticks(upstream_pids) - before) / m.CLOCK_TICKS
    per_request = spent * 1e6 / max(1, sample.wrk.requests) if c.is_proxy else None
    return sample, per_request, tally


def run_rounds(
    running: Sequence[Running],
    upstream: m.ServerProcess,
    routes: PeerRoutes,
    rounds: int,
    warmup: float,
    out: Path,
) -> list[Row]:
    """Interleaved rounds; each round starts with the next configuration in turn."""
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[Row] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as jsonl:
        for rnd in range(rounds):
            shift = rnd % len(running)
            for r in [*running[shift:], *running[:shift]]:
                warm_port = r.contender.port_for(routes, WARMUP.host, WARMUP.path)
                m.run_wrk(warm_port, WARMUP, warmup)
                for scenario in SCENARIOS:
                    sample, upstream_cost, scrapes = measure_one(r, upstream, routes, scenario)
                    row = _row(run, rnd, r, scenario, sample, upstream_cost, scrapes)
                    jsonl.write(json.dumps(asdict(row)) + "\n")
                    jsonl.flush()
                    rows.append(row)
                    print(_progress(row), flush=True)
                    time.sleep(0.5)  # let a slow proxy finish its backlog before the next run
    return rows


def _row(
    run: str,
    rnd: int,
    running: Running,
    scenario: m.Scenario,
    sample: m.Sample,
    upstream_cost: float | None,
    scrapes: ScrapeTally | None,
) -> Row:
    w = sample.wrk
    return Row(
        run=run,
        round=rnd,
        config=running.contender.name,
        scenario=scenario.name,
        connections=scenario.connections,
        duration_s=running.duration,
        rps=w.rps,
        requests=w.requests,
        p50_ms=w.p50_ms,
        p90_ms=w.p90_ms,
        p99_ms=w.p99_ms,
        non2xx=w.non2xx,
        socket_errors=w.socket_errors,
        cpu_s=sample.cpu_s,
        cpu_us_per_req=sample.cpu_us_per_request,
        upstream_cpu_us_per_req=upstream_cost,
        core0_busy=sample.core_busy[0],
        core1_busy=sample.core_busy[1],
        pids=sample.pids,
        scrapes=scrapes.count if scrapes is not None else None,
        scrape_max_ms=scrapes.slowest_ms if scrapes is not None else None,
        steal=sample.steal,
    )


def _progress(row: Row) -> str:
    extra = (
        "" if row.upstream_cpu_us_per_req is None else f" up={row.upstream_cpu_us_per_req:5.1f}us"
    )
    if row.scrapes is not None and row.scrape_max_ms is not None:
        extra += f" scrapes={row.scrapes} (max {row.scrape_max_ms:.1f}ms)"
    return (
        f"r{row.round} {row.config:<21} {row.scenario:<12} rps={row.rps:9.0f} "
        f"p50={row.p50_ms:7.3f}ms p99={row.p99_ms:7.3f}ms cpu/req={row.cpu_us_per_req:7.1f}us"
        f"{extra} core0={row.core0_busy:.2f} core1={row.core1_busy:.2f} "
        f"steal={row.steal:.1%} err={row.non2xx}+{row.socket_errors}"
    )


# --- report -----------------------------------------------------------------------------------


def paired_ratios(
    rows: Sequence[Row], scenario: str, subject: str, baseline: str, figure: Callable[[Row], float]
) -> list[float]:
    """``figure`` of ``subject`` ÷ that of ``baseline`` per round (the pair shares the noise)."""
    by_round = {(r.round, r.config): figure(r) for r in rows if r.scenario == scenario}
    rounds = sorted({rnd for rnd, _ in by_round})
    return [
        by_round[(rnd, subject)] / by_round[(rnd, baseline)]
        for rnd in rounds
        if (rnd, subject) in by_round and (rnd, baseline) in by_round and by_round[(rnd, baseline)]
    ]


def _cpu(row: Row) -> float:
    return row.cpu_us_per_req


def _p99(row: Row) -> float:
    return row.p99_ms


def _rps(row: Row) -> float:
    return row.rps


def _ratio_cell(
    rows: Sequence[Row], scenario: str, config: str, baseline: str, figure: Callable[[Row], float]
) -> str:
    if config == baseline:
        return "1"
    ratios = paired_ratios(rows, scenario, config, baseline, figure)
    if not ratios:
        return "–"
    return f"{_num(statistics.median(ratios))}× ({_num(min(ratios))}–{_num(max(ratios))})"


def _num(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _latency(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.0f}"


def _cell(spread: m.Spread) -> str:
    return f"**{spread.median:.1f}** ({spread.low:.1f}–{spread.high:.1f})"


def scenario_table(rows: Sequence[Row], scenario: str) -> str:
    """A markdown table of one scenario: medians over rounds, ratios paired per round."""
    lines = [
        "| config | rps | p50 ms | p99 ms | CPU µs/req (min–max) | CPU vs nginx | "
        "CPU vs Starlette+aiohttp | p99 vs nginx | upstream µs/req | core0/core1 busy | n "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, label in LABELS.items():
        mine = [r for r in rows if r.scenario == scenario and r.config == config]
        if not mine:
            continue
        cpu = m.Spread.of(r.cpu_us_per_req for r in mine)
        upstream = [
            r.upstream_cpu_us_per_req for r in mine if r.upstream_cpu_us_per_req is not None
        ]
        upstream_cell = f"{statistics.median(upstream):.1f}" if upstream else "–"
        lines.append(
            f"| {label} | {statistics.median(r.rps for r in mine):,.0f} "
            f"| {_latency(statistics.median(r.p50_ms for r in mine))} "
            f"| {_latency(statistics.median(r.p99_ms for r in mine))} | {_cell(cpu)} "
            f"| {_ratio_cell(rows, scenario, config, NGINX, _cpu)} "
            f"| {_ratio_cell(rows, scenario, config, AIOHTTP, _cpu)} "
            f"| {_ratio_cell(rows, scenario, config, NGINX, _p99)} | {upstream_cell} "
            f"| {statistics.median(r.core0_busy for r in mine):.2f}/"
            f"{statistics.median(r.core1_busy for r in mine):.2f} "
            f"| {len(mine)} | {sum(r.non2xx + r.socket_errors for r in mine)} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target: the median paired ratio against its limit."""

    scenario: str
    description: str
    ratio: float
    limit: float
    at_most: bool

    @property
    def measured(self) -> bool:
        """False when a configuration it compares was not run (``--only``)."""
        return not math.isnan(self.ratio)

    @property
    def passed(self) -> bool:
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    def line(self) -> str:
        sign = "≤" if self.at_most else "≥"
        if not self.measured:
            return (
                f"SKIP: {self.scenario} {self.description} (not run; needs {sign} {self.limit:g})"
            )
        outcome = "PASS" if self.passed else "FAIL"
        figure = f"{self.description} = {self.ratio:.2f} (needs {sign} {self.limit:g})"
        return f"{outcome}: {self.scenario} {figure}"


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """The issue's targets, each on the median of per-round ratios."""

    median = functools.partial(_median_ratio, rows)
    return [
        Verdict(
            "get_c32",
            "CPU µs/req dispatcher ÷ nginx",
            median("get_c32", SUBJECT, NGINX, _cpu),
            MAX_CPU_VS_NGINX,
            True,
        ),
        Verdict(
            "get_c32",
            "CPU µs/req Starlette+aiohttp ÷ dispatcher",
            median("get_c32", AIOHTTP, SUBJECT, _cpu),
            MIN_CPU_GAIN_VS_AIOHTTP,
            False,
        ),
        Verdict(
            "get_c4",
            "p99 dispatcher ÷ nginx",
            median("get_c4", SUBJECT, NGINX, _p99),
            MAX_P99_VS_NGINX,
            True,
        ),
        Verdict(
            "post64k_c32",
            "CPU µs/req dispatcher ÷ nginx",
            median("post64k_c32", SUBJECT, NGINX, _cpu),
            MAX_CPU_VS_NGINX,
            True,
        ),
        *access_log_verdicts(rows),
    ]


def access_log_verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """The same targets with the access log on, like for like: each proxy writes one JSON
    line per request to a file, in batches. (Against nginx without its log, the scenario
    tables' "CPU vs nginx" column gives the access-logged dispatcher's ratio too.)"""
    median = functools.partial(_median_ratio, rows)
    limits = [("get_c32", _cpu, "CPU µs/req"), ("get_c4", _p99, "p99")]
    limits.append(("post64k_c32", _cpu, "CPU µs/req"))
    return [
        Verdict(
            scenario,
            f"{what} {ACCESS_LOGGED} ÷ {NGINX_LOGGED}",
            median(scenario, ACCESS_LOGGED, NGINX_LOGGED, figure),
            MAX_P99_VS_NGINX if figure is _p99 else MAX_CPU_VS_NGINX,
            True,
        )
        for scenario, figure, what in limits
    ]


def _median_ratio(
    rows: Sequence[Row], scenario: str, subject: str, baseline: str, figure: Callable[[Row], float]
) -> float:
    """The median of the per-round ratios; NaN when either configuration was not run."""
    ratios = paired_ratios(rows, scenario, subject, baseline, figure)
    return statistics.median(ratios) if ratios else float("nan")


def _overall(found: Sequence[Verdict]) -> str:
    measured = [v for v in found if v.measured]
    if not measured:
        return "not measured"
    return "PASS" if all(v.passed for v in measured) else "FAIL"


# --- issue #5: metrics, scraping, the access log -----------------------------------------------


def variants_table(rows: Sequence[Row]) -> str:
    """The access-logged and scraped dispatchers against the plain one, paired per round."""
    lines = [
        "| variant | scenario | CPU µs/req | CPU ÷ plain | rps ÷ plain | p99 ÷ plain "
        "| scrapes per run (slowest ms) | n | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in (ACCESS_LOGGED, SCRAPED):
        for scenario in (s.name for s in SCENARIOS):
            mine = [r for r in rows if r.scenario == scenario and r.config == config]
            if mine:
                cells = [
                    _ratio_cell(rows, scenario, config, SUBJECT, f) for f in (_cpu, _rps, _p99)
                ]
                lines.append(
                    f"| {LABELS[config]} | {scenario} "
                    f"| {_cell(m.Spread.of(r.cpu_us_per_req for r in mine))} "
                    f"| {' | '.join(cells)} | {_scrapes_cell(mine)} | {len(mine)} "
                    f"| {sum(r.non2xx + r.socket_errors for r in mine)} |"
                )
    return "\n".join(lines)


def _scrapes_cell(rows: Sequence[Row]) -> str:
    counts = [r.scrapes for r in rows if r.scrapes is not None]
    slowest = [r.scrape_max_ms for r in rows if r.scrape_max_ms is not None]
    if not counts or not slowest:
        return "–"
    return f"{min(counts)}–{max(counts)} ({max(slowest):.1f})"


def scraping_verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """Scraping must not slow routed requests: CPU/req and p99 within 10 % of the plain rows."""
    median = functools.partial(_median_ratio, rows)
    found = []
    for scenario in (s.name for s in SCENARIOS):
        for what, figure in (("CPU µs/req", _cpu), ("p99", _p99)):
            ratio = median(scenario, SCRAPED, SUBJECT, figure)
            description = f"{what} scraped ÷ plain dispatcher"
            found.append(Verdict(scenario, description, ratio, MAX_SCRAPED_VS_PLAIN, True))
    return found


def access_log_cost(rows: Sequence[Row]) -> str:
    """The access log's cost: extra CPU per request in %, and what it does to rps and p99."""
    parts = []
    for scenario in (s.name for s in SCENARIOS):
        cpu = paired_ratios(rows, scenario, ACCESS_LOGGED, SUBJECT, _cpu)
        if cpu:
            rps = _median_ratio(rows, scenario, ACCESS_LOGGED, SUBJECT, _rps)
            p99 = _median_ratio(rows, scenario, ACCESS_LOGGED, SUBJECT, _p99)
            parts.append(
                f"{scenario} {_percent(statistics.median(cpu))} CPU µs/req "
                f"({_percent(min(cpu))} to {_percent(max(cpu))}), rps ×{rps:.2f}, p99 ×{p99:.2f}"
            )
    if not parts:
        return "Access log cost: not measured (run `dispatcher` and `dispatcher-access-log`)."
    return "Access log cost (on ÷ off, paired per round): " + "; ".join(parts) + "."


def compiled_gain(rows: Sequence[Row]) -> str:
    """What compiling the request path buys: the compiled dispatcher ÷ the interpreted one."""
    parts = []
    for scenario in (s.name for s in SCENARIOS):
        cpu = paired_ratios(rows, scenario, SUBJECT, INTERPRETED, _cpu)
        if cpu:
            rps = _median_ratio(rows, scenario, SUBJECT, INTERPRETED, _rps)
            parts.append(
                f"{scenario} CPU µs/req ×{statistics.median(cpu):.2f} "
                f"({min(cpu):.2f}–{max(cpu):.2f}), rps ×{rps:.2f}"
            )
    if not parts:
        return f"Compiled ÷ interpreted: not measured (run `{SUBJECT}` and `{INTERPRETED}`)."
    return "Compiled ÷ interpreted request path (paired per round): " + "; ".join(parts) + "."


DISTURBED_STEAL: Final = 0.05
"""A wrk run during which the hypervisor took more than this share of the CPU is disturbed."""


def steal_note(rows: Sequence[Row]) -> str:
    """How much CPU the hypervisor took from the machine during the wrk runs: the figures of
    a disturbed run say as much about the machine as about the code."""
    if not rows:
        return "Steal: no runs."
    steals = [r.steal for r in rows]
    disturbed = [r for r in rows if r.steal > DISTURBED_STEAL]
    worst = max(rows, key=lambda r: r.steal)
    line = (
        f"Steal (CPU time the hypervisor gave to other guests, from /proc/stat): median "
        f"{statistics.median(steals):.1%} of the machine during the wrk runs, at most "
        f"{worst.steal:.1%} ({worst.config} {worst.scenario}, round {worst.round})"
    )
    if not disturbed:
        return line + "; no run was disturbed."
    return (
        line + f"; {len(disturbed)} of {len(rows)} runs above {DISTURBED_STEAL:.0%}, "
        "whose figures are less reliable."
    )


def _percent(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def issue5_section(rows: Sequence[Row], notes: Sequence[str]) -> str:
    title = "### Metrics, scraping and the access log (issue #5)"
    if not any(r.config in (ACCESS_LOGGED, SCRAPED) for r in rows):
        return f"{title}\n\nNot run: neither {ACCESS_LOGGED} nor {SCRAPED} was measured."
    found = scraping_verdicts(rows)
    lines = [
        title,
        "",
        "Metrics are always counted: every dispatcher row above, the verdicts' included, ran "
        "with them.",
        "",
        variants_table(rows),
        "",
        f"Scraping /metrics every {SCRAPE_INTERVAL_S:g} s within noise: {_overall(found)}",
        *(f"* {v.line()}" for v in found),
        f"* {access_log_cost(rows)}",
        *(f"* {note}" for note in notes),
    ]
    return "\n".join(lines)


def report(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    titles = {
        "get_c32": "GET /v1/items?id=1, Host db.do, ~94 B JSON, wrk -t1 -c32 (throughput)",
        "get_c4": "GET /v1/items?id=1, Host db.do, ~94 B JSON, wrk -t1 -c4 (latency)",
        "post64k_c32": "POST 64 KiB to api.do/api/auth/upload (path-routed), wrk -t1 -c32",
    }
    parts = [f"### {titles[s.name]}\n\n{scenario_table(rows, s.name)}" for s in SCENARIOS]
    found = verdicts(rows)
    lines = [f"Verdict: {_overall(found)}", *(f"* {v.line()}" for v in found)]
    lines.append(f"* {ACCESS_LOG_NOTE}")
    lines.append(f"* {compiled_gain(rows)}")
    lines.append(f"* {steal_note(rows)}")
    parts += ["\n".join(lines), issue5_section(rows, notes)]
    return "\n\n".join(parts)


def versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    tools = []
    for command in (("nginx", "-v"), ("haproxy", "-v")):
        if shutil.which(command[0]) is None:  # HAProxy is needed only when it is measured
            tools.append(f"{command[0]} (not installed)")
            continue
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        tools.append((done.stderr or done.stdout).splitlines()[0].strip())
    return (
        f"Python {platform.python_version()}, {', '.join(found)} (request path "
        f"{describe_build()}); {'; '.join(tools)}; "
        f"kernel {platform.release()}, {os.cpu_count()} CPUs"
    )


# --- profile ------------------------------------------------------------------------------------


PROFILE_SCENARIOS: Final = {s.name: s for s in SCENARIOS}
PYTHON_CONFIGS: Final = frozenset({AIOHTTP, HTTPX, SUBJECT})
SYSCALLS: Final = (
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
)
# Inclusive kernel paths worth naming (perf --children): where system time goes.
KERNEL_PATHS: Final = {
    "entry_SYSCALL_64_after_hwframe": "all system calls",
    "ksys_write": "  write()",
    "do_writev": "  writev()",
    "__sys_sendto": "  sendto()",
    "net_rx_action": "    of which loopback delivery, run in the writer's context",
    "sock_def_readable": "      of which waking the reader (wrk or the upstream, core 1)",
    "ksys_read": "  read()",
    "__sys_recvfrom": "  recvfrom()",
    "do_epoll_wait": "  epoll_wait()",
}


@dataclass(frozen=True, slots=True)
class CpuSplit:
    """User and system CPU seconds of a process tree (a reading, or the difference of two)."""

    user_s: float
    system_s: float

    @classmethod
    def read(cls, pids: Sequence[int]) -> CpuSplit:
        user = system = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        return cls(user / m.CLOCK_TICKS, system / m.CLOCK_TICKS)

    def since(self, before: CpuSplit) -> CpuSplit:
        return CpuSplit(self.user_s - before.user_s, self.system_s - before.system_s)


def profile(server: m.ServerProcess, out: Path, args: argparse.Namespace) -> str:
    """Where ``server``'s CPU goes under one load (``--profile-scenario``, GET -c32 by
    default): py-spy (Python peers), then perf if present."""
    scenario = PROFILE_SCENARIOS[args.profile_scenario]
    sections = []
    if server.name in PYTHON_CONFIGS:
        sections.append(
            py_spy_section(server, scenario, out, args.profile_seconds, args.native, args.rate)
        )
    if shutil.which("perf") is None:
        sections.append("perf not found: no system call counts, no kernel/user split.")
    else:
        sections.append(syscall_section(server, scenario, args.profile_seconds))
        sections.append(perf_section(server, scenario, args.profile_seconds, args.perf_data))
    return "\n\n".join(sections)


def py_spy_section(
    server: m.ServerProcess,
    scenario: m.Scenario,
    out: Path,
    seconds: float,
    native: bool,
    rate: int,
) -> str:
    """Record ``server`` with py-spy (raw collapsed stacks in ``out``) under the load."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    record = [py_spy, "record", "--pid", str(server.pid), "-d", f"{seconds:g}", "-r", str(rate)]
    # py-spy refuses --native with --nonblocking: native stacks need the process paused.
    record += ["-f", "raw", "-o", str(out), "--native" if native else "--nonblocking"]
    load = subprocess.Popen(
        m.wrk_command(server.port, scenario, seconds + 4),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.5)  # let wrk open its connections before sampling
        before, started = CpuSplit.read(server.pids()), time.monotonic()
        done = subprocess.run(record, capture_output=True, text=True, check=False)
        split, elapsed = CpuSplit.read(server.pids()).since(before), time.monotonic() - started
        output, _ = load.communicate(timeout=seconds + 40)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if done.returncode != 0:
        raise m.MeasureError(f"py-spy failed ({' '.join(record)}): {done.stderr.strip()}")
    result = m.parse_wrk(output)
    requests = max(1.0, result.rps * elapsed)
    stacks = read_collapsed(out)
    total = sum(stacks.values())
    lines = [
        f"py-spy, wrk {_load_label(scenario)}: {result.rps:,.0f} rps, "
        f"p99 {result.p99_ms:.2f} ms; CPU over "
        f"{elapsed:.1f} s: user {split.user_s:.2f} s + system {split.system_s:.2f} s = "
        f"{(split.user_s + split.system_s) * 1e6 / requests:.1f} µs/req "
        f"({split.user_s * 1e6 / requests:.1f} user + {split.system_s * 1e6 / requests:.1f} "
        "system)",
        f"{total} samples in {out}; {_share(stacks.get('', 0), total)} with no Python frame",
        "",
        "self samples by function (leaf frame), top 20:",
        *_ranked(_leaf_counts(stacks, by_line=False), total, 20),
        "",
        "self samples by line (leaf frame), top 15:",
        *_ranked(_leaf_counts(stacks, by_line=True), total, 15),
    ]
    return "\n".join(lines)


def read_collapsed(path: Path) -> Counter[str]:
    """py-spy's raw output: ``frame;frame;...;leaf count`` per line (empty: no Python frame)."""
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks[stack.strip()] += int(count)
    return stacks


def _leaf_counts(stacks: Counter[str], *, by_line: bool) -> Counter[str]:
    counts: Counter[str] = Counter()
    for stack, count in stacks.items():
        if stack:
            counts[_short(stack.split(";")[-1], by_line)] += count
    return counts


def _short(frame: str, by_line: bool) -> str:
    """``name (path/to/module.py:123)`` → ``name (module.py)``, or ``(module.py:123)``."""
    match = re.fullmatch(r"(.*) \((?:.*/)?([^/:]+?)(:\d+)?\)", frame)
    if match is None:
        return frame
    where = match.group(2) + (match.group(3) or "" if by_line else "")
    return f"{match.group(1)} ({where})"


def _ranked(counts: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {_share(n, total):>6}  {frame}" for frame, n in counts.most_common(top)]


def _share(part: float, total: float) -> str:
    return f"{100 * part / max(1.0, total):.1f}%"


def _perf_under_load(
    server: m.ServerProcess, scenario: m.Scenario, perf: list[str], seconds: float
) -> tuple[str, int]:
    """Run ``perf ... -p <server> -- wrk``: perf's stderr and the requests wrk completed."""
    pids = ",".join(str(pid) for pid in server.pids())
    command = [*perf, "-p", pids, "--", *m.wrk_command(server.port, scenario, seconds)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise m.MeasureError(f"perf failed ({' '.join(command[:4])} ...): {done.stderr.strip()}")
    return done.stderr, m.parse_wrk(done.stdout).requests


def _load_label(scenario: m.Scenario) -> str:
    method = "POST 64 KiB" if scenario.script is not None else "GET"
    return f"{method} -c{scenario.connections}"


def syscall_section(server: m.ServerProcess, scenario: m.Scenario, seconds: float) -> str:
    """System calls per request, counted by perf on the kernel's syscall tracepoints."""
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    perf = ["perf", "stat", "-x", ",", "-e", events]
    report, requests = _perf_under_load(server, scenario, perf, seconds)
    counts = []
    for line in report.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and int(fields[0]):
            counts.append(
                f"{fields[2].removeprefix('syscalls:sys_enter_')} {int(fields[0]) / requests:.2f}"
            )
    label = f"({server.name}, {_load_label(scenario)})"
    return f"system calls per request {label}: " + ", ".join(counts)


def perf_section(
    server: m.ServerProcess, scenario: m.Scenario, seconds: float, keep: Path | None = None
) -> str:
    """CPU µs per request by binary, by kernel path and by symbol, from ``perf record``."""
    with tempfile.TemporaryDirectory(prefix="bench-proxy-perf-") as scratch:
        data = Path(scratch) / "perf.data"
        record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(data)]
        _, requests = _perf_under_load(server, scenario, record, seconds)
        by_dso, total_ns = _perf_report(data, ["--no-children", "--sort", "dso"])
        by_path, _ = _perf_report(data, ["--children", "--sort", "sym"])
        by_symbol, _ = _perf_report(data, ["--no-children", "--sort", "dso,sym"])
        if keep is not None:
            shutil.copy(data, keep)

    def cost(percent: float) -> str:
        return f"{percent * total_ns / 1e5 / requests:6.2f} µs/req {percent:5.1f}%"

    label = f"({server.name}, {_load_label(scenario)})"
    lines = [f"perf record {label}: {total_ns / 1e3 / requests:.1f} µs/req"]
    lines += ["by binary:", *(f"  {cost(p)}  {name}" for name, p in by_dso[:8])]
    paths = {re.sub(r"^\[[.k]\] ", "", name): percent for name, percent in by_path}
    lines += ["kernel paths (inclusive):"]
    lines += [f"  {cost(paths[k])}  {label}" for k, label in KERNEL_PATHS.items() if k in paths]
    lines += ["top symbols (self):", *(f"  {cost(p)}  {name}" for name, p in by_symbol[:15])]
    return "\n".join(lines)


def _perf_report(data: Path, sort: list[str]) -> tuple[list[tuple[str, float]], float]:
    """``perf report`` rows as (name, self-or-children percent) and the event count (ns)."""
    command = ["perf", "report", "-i", str(data), "--stdio", "-g", "none", *sort]
    text = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    found = re.search(r"^# Event count \(approx\.\): (\d+)", text, re.MULTILINE)
    if found is None:
        raise m.MeasureError(f"perf report of {data} has no event count")
    rows = []
    for line in text.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(?:([\d.]+)%\s+)?(.*\S)", line)
        if match and not line.startswith("#"):
            name = re.sub(r"\s+(\[[.k]\])\s+", r" \1 ", match.group(3))
            rows.append((name, float(match.group(1))))
    return rows, float(found.group(1))


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument(
        "--httpx-duration",
        type=float,
        default=None,
        help="seconds per wrk run for Starlette+httpx (default: --duration)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded warm-up seconds")
    parser.add_argument(
        "--only",
        type=_names,
        default=(),
        metavar="NAMES",
        help=f"comma list of configurations to run (default all: {','.join(LABELS)})",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines file (appended)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="instead of the rounds: profile one configuration, py-spy raw stacks to this file",
    )
    parser.add_argument(
        "--profile-config",
        choices=sorted(LABELS),
        default=SUBJECT,
        help="configuration to profile (default: dispatcher)",
    )
    parser.add_argument("--profile-seconds", type=float, default=8.0, help="seconds sampled")
    parser.add_argument(
        "--profile-scenario",
        choices=sorted(PROFILE_SCENARIOS),
        default=SCENARIOS[0].name,
        help=f"the load to profile under (default {SCENARIOS[0].name})",
    )
    parser.add_argument(
        "--perf-data",
        type=Path,
        default=None,
        help="with --profile: keep perf's recording here (for `perf report -i`)",
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (pauses it)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 1:
        parser.error("--rounds, --duration and --warmup must be at least 1")
    if args.httpx_duration is not None and args.httpx_duration < 1:
        parser.error("--httpx-duration must be at least 1")
    if {ACCESS_LOGGED, SCRAPED} & set(args.only) and SUBJECT not in args.only:
        parser.error(f"--only: {ACCESS_LOGGED} and {SCRAPED} are compared with {SUBJECT}")
    return args


def _names(text: str) -> tuple[str, ...]:
    """``--only``'s comma list, each a configuration's name."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in LABELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown configuration(s) {', '.join(unknown) or '(none)'}; known: {', '.join(LABELS)}"
        )
    return names


# What each configuration needs beyond taskset, wrk and nginx (the upstream's): programs on
# PATH, programs of this virtualenv, Python packages.
NEEDS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]] = {
    "haproxy": (("haproxy",), (), ()),
    AIOHTTP: ((), ("uvicorn",), ("starlette", "aiohttp")),
    HTTPX: ((), ("uvicorn",), ("starlette", "httpx")),
    **{name: ((), ("dispatcher",), ()) for name in DISPATCHERS},
}


def check_machine(bin_dir: Path, names: Sequence[str]) -> None:
    """The tools the configurations ``names`` need are here, and two cores to pin to."""
    tools = {"taskset", "wrk", "nginx"}
    programs: set[str] = set()
    modules: set[str] = set()
    for name in names:
        more_tools, more_programs, more_modules = NEEDS.get(name, ((), (), ()))
        tools.update(more_tools)
        programs.update(more_programs)
        modules.update(more_modules)
    missing = [tool for tool in sorted(tools) if shutil.which(tool) is None]
    missing += [str(p) for p in (bin_dir / n for n in sorted(programs)) if not p.exists()]
    for module in sorted(modules):
        try:
            metadata.version(module)
        except metadata.PackageNotFoundError:
            missing.append(f"python package {module}")
    if missing:
        raise m.MeasureError(f"missing: {', '.join(missing)}")
    if len(os.sched_getaffinity(0)) < 2:
        raise m.MeasureError("needs two cores: the DUT on core 0, wrk and the upstream on core 1")


def _start(
    stack: ExitStack, contender: Contender, cwd: Path, core: int = m.DUT_CORE
) -> m.ServerProcess:
    log = LOGS / f"proxy-{contender.name}.log"
    if contender.name == ACCESS_LOGGED:
        log.unlink(missing_ok=True)  # hundreds of MB a run: keep the last run's only
    server = m.ServerProcess.start(
        contender.name,
        contender.command,
        contender.port,
        log_path=log,
        env=contender.env,
        cwd=cwd,
        core=core,
    )
    stack.callback(server.stop)
    return server


def run(args: argparse.Namespace) -> int:
    bin_dir = Path(sys.executable).parent  # uvicorn and dispatcher of this venv
    if args.profile is not None:
        check_machine(bin_dir, [args.profile_config])
    else:
        check_machine(bin_dir, args.only or tuple(LABELS))
    print(versions(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as scratch, ExitStack() as stack:
        layout = Layout.allocate(Path(scratch))
        routes = layout.routes
        everyone = contenders(bin_dir, layout)
        upstream = Contender(
            "upstream", upstream_command(layout), layout.upstream["db"], everyone[0].env
        )
        upstream_server = _start(stack, upstream, REPO_ROOT, core=m.LOAD_CORE)
        if args.profile is not None:
            return _run_profile(stack, args, everyone, routes)
        running = []
        for c in (c for c in everyone if not args.only or c.name in args.only):
            duration = (
                args.httpx_duration if c.name == HTTPX and args.httpx_duration else args.duration
            )
            running.append(Running(c, _start(stack, c, REPO_ROOT), duration))
        time.sleep(1)
        for r in running:
            smoke_test(r.server, r.contender, routes)
            smoke_test_variant(r.server, r.contender)
        scrape_costs = [
            measure_scrape_cost(r.server, r.contender.scrape_port)
            for r in running
            if r.contender.scrape_port is not None
        ]
        rows = run_rounds(running, upstream_server, routes, args.rounds, args.warmup, args.out)
    notes = [cost.note(rows) for cost in scrape_costs]
    # Counted once the servers have stopped: the access log's last batch is flushed on exit.
    notes += [
        access_log_note(r.server.log_path, rows)
        for r in running
        if r.contender.name == ACCESS_LOGGED
    ]
    print()
    print(report(rows, notes))
    print(f"\nraw rows appended to {args.out}")
    return 0


def _run_profile(
    stack: ExitStack, args: argparse.Namespace, everyone: Sequence[Contender], routes: PeerRoutes
) -> int:
    chosen = next(c for c in everyone if c.name == args.profile_config)
    server = _start(stack, chosen, REPO_ROOT)
    smoke_test(server, chosen, routes)
    m.run_wrk(chosen.port_for(routes, WARMUP.host, WARMUP.path), WARMUP, args.warmup)
    args.profile.parent.mkdir(parents=True, exist_ok=True)
    print(profile(server, args.profile, args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except m.MeasureError as exc:
        print(f"bench/proxy.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
