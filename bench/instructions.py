"""Instructions per proxied request, counted by callgrind: a figure the machine's noise
cannot move, for comparing one commit of the request path with another.

Run from the repository root with the project's virtualenv (needs valgrind and nginx)::

    .venv/bin/python bench/instructions.py [--requests 3000] [--only nginx,dispatcher]

The upstream is ``bench/proxy.py``'s (nginx answering ~94 B of JSON). Each proxy runs under
``valgrind --tool=callgrind`` with instrumentation off; once it listens, one keep-alive
connection sends 500 GETs (Host db.do) to warm it, the counters are zeroed, N more GETs are
sent one after the other, and the counters are dumped. Reported per request, user space only
(the kernel's part, about half of a request's CPU, is not counted):

* ``all``: every instruction the process ran in that window. For the dispatcher this
  includes its background tasks (the registry poll, the metrics publisher), which run per
  second, not per request, and a run under valgrind lasts about a minute: so it is an upper
  bound.
* ``request path`` (the dispatcher only): the instructions under the event loop's read
  callbacks and the write batch's flushes, where every request's work happens.

Instructions are not time (a cache miss costs more than an add), so the figure compares a
build with another build, not the dispatcher with nginx; ``bench/proxy.py`` measures time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

try:
    from bench import _measure as m
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _measure as m
from bench.proxy import (
    NGINX,
    NGINX_LOG_OFF,
    SUBJECT,
    Layout,
    _write_config,
    admin_key,
    upstream_command,
    write_dispatcher_config,
)

WARM_REQUESTS: Final = 500
STARTUP_SECONDS: Final = 300.0  # importing everything under valgrind is slow
REQUEST_PATH: Final = (
    "__pyx_f_6uvloop_4loop___uv_stream_on_read",  # every read: parsing, routing, forwarding
    "CPyDef_writes___WriteBatch____flush_scheduled",  # the writes, batched per loop turn
)
CONFIGS: Final = (NGINX, SUBJECT)


@dataclass(frozen=True, slots=True)
class Count:
    config: str
    requests: int
    total: int
    request_path: int | None

    def line(self) -> str:
        per = self.total / self.requests
        path = (
            f", request path {self.request_path / self.requests:,.0f}"
            if self.request_path is not None
            else ""
        )
        return f"{self.config:<11} all {per:,.0f}{path} instructions per request"


def command_for(config: str, layout: Layout, scratch: Path) -> tuple[list[str], int]:
    """The proxy's command line (without valgrind) and the port it listens on."""
    port = layout.listen[config]
    if config == NGINX:
        conf = _write_config(
            layout, "nginx-proxy.conf", NGINX, layout.upstream, port, NGINX_LOG_OFF
        )
        # One process: callgrind then follows the one that serves.
        command = ["nginx", "-p", str(scratch), "-e", str(scratch / "nginx.err"), "-c", str(conf)]
        return [*command, "-g", "master_process off;"], port
    toml = write_dispatcher_config(scratch / "dispatcher.toml", layout.urls)
    program = str(Path(sys.executable).parent / "dispatcher")
    serve = ["serve", "--config", str(toml), "--port", str(port)]
    serve += ["--admin-port", str(layout.listen[admin_key(config)])]
    return [program, *serve, "--log-level", "warning", "--no-access-log"], port


def count(config: str, requests: int, layout: Layout, scratch: Path) -> Count:
    command, port = command_for(config, layout, scratch)
    out = scratch / f"callgrind.{config}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    valgrind.append(f"--callgrind-out-file={out}")
    env = dict(os.environ)
    env["DISPATCHER_STORE"] = f"sqlite:///{scratch / 'registry.db'}"
    env["ENVIRONMENT"] = "development"
    with open(scratch / f"{config}.log", "wb") as log:
        process = subprocess.Popen(
            [*valgrind, *command], env=env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        wait_listening(process, port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        control(process.pid, "-i", "on")
        send(connection, WARM_REQUESTS)
        control(process.pid, "-z")
        send(connection, requests)
        control(process.pid, "-d")
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=120)
    dump = Path(f"{out}.1")
    if not dump.exists():
        raise m.MeasureError(f"{config}: callgrind wrote no dump ({dump})")
    path = request_path(dump) if config != NGINX else None
    return Count(config, requests, totals(dump), path)


def wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not m.is_listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise m.MeasureError(f"the proxy under valgrind did not listen on {port}")
        time.sleep(0.5)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def send(connection: http.client.HTTPConnection, requests: int) -> None:
    for _ in range(requests):
        connection.request("GET", "/v1/items?id=1", headers={"Host": "db.do"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200 or b'"service":"db"' not in body:
            raise m.MeasureError(f"unexpected answer {response.status}: {body[:80]!r}")


def totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise m.MeasureError(f"{dump}: no totals line")


def request_path(dump: Path) -> int:
    """The inclusive instructions of the request path's entry points."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = 0
    for name in REQUEST_PATH:
        match = re.search(rf"^\s*([\d,]+) .*:{name} \[", annotated, re.MULTILINE)
        if match is None:
            raise m.MeasureError(f"{dump}: {name} not in callgrind's report")
        found += int(match.group(1).replace(",", ""))
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="GETs counted (default 3000)")
    parser.add_argument(
        "--only",
        default=",".join(CONFIGS),
        help=f"comma list of {', '.join(CONFIGS)} (default both)",
    )
    args = parser.parse_args(argv)
    args.only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    if not args.only or set(args.only) - set(CONFIGS):
        parser.error(f"--only: choose among {', '.join(CONFIGS)}")
    if args.requests < 100:
        parser.error("--requests must be at least 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [
        tool for tool in ("valgrind", "callgrind_control", "nginx") if not shutil.which(tool)
    ]
    if missing:
        print(f"bench/instructions.py: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        layout = Layout.allocate(Path(scratch))
        upstream = subprocess.Popen(upstream_command(layout), start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while not m.is_listening(layout.upstream["db"]):
                if time.monotonic() > deadline:
                    raise m.MeasureError("the upstream nginx did not start")
                time.sleep(0.05)
            for config in args.only:
                print(count(config, args.requests, layout, Path(scratch)).line(), flush=True)
        except m.MeasureError as exc:
            print(f"bench/instructions.py: {exc}", file=sys.stderr)
            return 1
        finally:
            upstream.terminate()
            upstream.wait(timeout=30)
    print(f"({args.requests:,} GETs over one keep-alive connection, user space, callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
