"""The ``dispatcher`` command: exact text and exit codes through click's runner, then
``dev`` and ``serve`` as real processes answering real HTTP and stopping on a signal.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import main
from dispatcher.store import open_store
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import AppTarget

ROOT: Final = Path(__file__).resolve().parent.parent
CLI_DOC: Final = ROOT / "docs" / "cli.md"
DISPATCHER: Final = Path(sys.executable).with_name("dispatcher")
SERVICES: Final = "gateway, db, auth, schedule, webhooks, email, mcp, queue"
CLEAN_ENV: Final[Mapping[str, str | None]] = {"ENVIRONMENT": None, "DISPATCHER_STORE": None}
HELP_WIDTH: Final = 78
"""Help text as an 80-column terminal shows it: click keeps a 2-column margin there."""
STOP_WITHIN: Final = 5.0


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main,
        list(args),
        env={**CLEAN_ENV, **(env or {})},
        prog_name="dispatcher",
        terminal_width=HELP_WIDTH,
    )


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- check ----------------------------------------------------------------------------------


def test_check_default_configuration() -> None:
    result = invoke("check")

    assert (result.exit_code, result.output) == (
        0,
        "configuration OK: 21 routes, 8 services, environment development "
        "-> namespace dotdo-development\n",
    )


def test_check_a_valid_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "dispatcher.toml",
        '[vars]\nENVIRONMENT = "staging"\n\n[routing]\nservices = ["gateway", "db"]\n'
        "versioned_subdomains = false\n",
    )

    result = invoke("check", "--config", config)

    # 2 hosts, 1 path rule (db; auth and schedule are not declared), 2 defaults.
    assert (result.exit_code, result.output) == (
        0,
        "configuration OK: 5 routes, 2 services, environment staging -> namespace dotdo-staging\n",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[routing]\nservices = ["gateway", 3]\n',
            "routing.services[1]: expected a string, got a number (3)",
        ),
        (
            '[routing.aliases]\n"database.do" = "dbx"\n',
            "routing.aliases['database.do']: service 'dbx' is not declared in routing.services",
        ),
        ("[server]\nport = 70000\n", "server.port: must be an integer from 0 to 65535 (got 70000)"),
        (
            "[routing\n",
            "invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 9)",
        ),
        (
            '[workers.dotdo-nowhere]\ndb = { app = "x:y" }\n',
            "workers.dotdo-nowhere: namespace 'dotdo-nowhere' is not bound (bound namespaces: "
            "dotdo-production, dotdo-staging, dotdo-development)",
        ),
    ],
)
def test_check_an_invalid_file_names_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    config = write(tmp_path / "dispatcher.toml", text)

    result = invoke("check", "--config", config)

    assert (result.exit_code, result.output) == (2, f"Error: {config}: {problem}\n")
    assert isinstance(result.exception, SystemExit)


def test_check_a_missing_file(tmp_path: Path) -> None:
    config = str(tmp_path / "missing.toml")

    result = invoke("check", "--config", config)

    assert (result.exit_code, result.output) == (
        2,
        f"Error: {config}: cannot read the config file: No such file or directory\n",
    )


def test_check_an_unsupported_file_type(tmp_path: Path) -> None:
    config = write(tmp_path / "dispatcher.yaml", "routing: {}\n")

    result = invoke("check", "--config", config)

    assert (result.exit_code, result.output) == (
        2,
        f"Error: {config}: unsupported config file type '.yaml'; use .toml, .json or .jsonc\n",
    )


def test_check_an_unbound_environment() -> None:
    result = invoke("check", env={"ENVIRONMENT": "prod"})

    assert (result.exit_code, result.output) == (
        2,
        "Error: ENVIRONMENT (environment variable): Namespace not found for environment: prod; "
        "must be one of the bound environments production, staging, development (got 'prod')\n",
    )


# --- routes ---------------------------------------------------------------------------------


def test_routes_prints_the_table_in_precedence_order() -> None:
    result = invoke("routes")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["#", "kind", "rule", "worker", "source"]
    assert lines[1].split() == [
        "1",
        "host",
        "host",
        "gateway.do",
        "gateway",
        "routing.services['gateway']",
    ]
    assert lines[8].split() == [
        "8",
        "host",
        "host",
        "queue.do",
        "queue",
        "routing.services['queue']",
    ]
    assert lines[10].split() == [
        "10",
        "subdomain",
        "subdomain",
        "<version>.db.do",
        "db-<version>",
        "routing.versioned_subdomains",
    ]
    assert lines[19].split() == [
        "19",
        "path",
        "path",
        "/api/db",
        "and",
        "/api/db/...",
        "on",
        "any",
        "host",
        "db",
        "routing.path_services['db']",
    ]
    assert lines[20].split() == [
        "20",
        "default",
        "default",
        "for",
        "host",
        "do",
        "gateway",
        "routing.default_hosts",
    ]
    assert lines[21].split() == [
        "21",
        "default",
        "default",
        "for",
        "host",
        "api.do",
        "gateway",
        "routing.default_hosts",
    ]
    assert lines[22:] == [
        "",
        "route patterns (not enforced):",
        "  *.do/* (zone do): subdomains of do, any path",
        "  api.do/* (zone do): host api.do, any path",
        "",
        "environment development -> namespace dotdo-development",
    ]


def test_routes_follows_the_environment() -> None:
    result = invoke("routes", env={"ENVIRONMENT": "production"})

    assert result.output.splitlines()[-1] == "environment production -> namespace dotdo-production"


# --- resolve --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "output"),
    [
        (
            "http://api.do/api/db/query",
            "service:     db\n"
            "worker:      db\n"
            "rule:        path: path /api/db and /api/db/... on any host "
            "(routing.path_services['db'])\n"
            "environment: development\n"
            "namespace:   dotdo-development\n",
        ),
        (
            "GATEWAY.DO.:8080/health",
            "service:     gateway\n"
            "worker:      gateway\n"
            "rule:        host: host gateway.do (routing.services['gateway'])\n"
            "environment: development\n"
            "namespace:   dotdo-development\n",
        ),
        (
            "https://v2.gateway.do/",
            "service:     gateway\n"
            "worker:      gateway-v2\n"
            "rule:        subdomain: subdomain <version>.gateway.do "
            "(routing.versioned_subdomains)\n"
            "environment: development\n"
            "namespace:   dotdo-development\n",
        ),
        (
            "api.do/api//db/./query",
            "service:     db\n"
            "worker:      db\n"
            "rule:        path: path /api/db and /api/db/... on any host "
            "(routing.path_services['db'])\n"
            "environment: development\n"
            "namespace:   dotdo-development\n"
            "normalized path: /api/db/query\n",
        ),
        (
            "http://api.do/api/dbx/x",
            "service:     gateway\n"
            "worker:      gateway\n"
            "rule:        default: default for host api.do (routing.default_hosts)\n"
            "environment: development\n"
            "namespace:   dotdo-development\n",
        ),
    ],
)
def test_resolve_shows_where_a_url_goes(url: str, output: str) -> None:
    result = invoke("resolve", url)

    assert (result.exit_code, result.output) == (0, output)


def test_resolve_names_the_environment_and_namespace() -> None:
    result = invoke("resolve", "db.do/x", env={"ENVIRONMENT": "staging"})

    assert result.output.splitlines()[-2:] == ["environment: staging", "namespace:   dotdo-staging"]


def test_resolve_unknown_host_exits_1_with_the_seed_message() -> None:
    result = invoke("resolve", "unknown.do/x")

    assert (result.exit_code, result.output) == (
        1,
        f"no route: No worker found for unknown.do/x\navailable services: {SERVICES}\n",
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "http://api.do/a b",
            "request path contains a forbidden character (control, space, non-ASCII, '\\' or '#')",
        ),
        ("http://bad host/x", "invalid Host header: 'bad host'"),
        ("http://api.do:99999/", "invalid port in Host header: '99999'"),
        ("http://api.do/../etc", "path climbs above the root"),
    ],
)
def test_resolve_a_bad_url_is_a_usage_error(url: str, reason: str) -> None:
    result = invoke("resolve", url)

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {url!r} would be rejected with 400: {reason}"


# --- docs/cli.md shows real output -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentedRun:
    """One ``$ dispatcher ...`` line of docs/cli.md, what it prints and its exit status."""

    args: tuple[str, ...]
    output: str
    exit_code: int


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """Each fenced code block of a Markdown text as (info string, body)."""
    blocks: list[tuple[str, str]] = []
    info: str | None = None
    body: list[str] = []
    for line in markdown.splitlines(keepends=True):
        if info is None and line.startswith("```"):
            info, body = line[3:].strip(), []
        elif info is not None and line.rstrip("\n") == "```":
            blocks.append((info, "".join(body)))
            info = None
        elif info is not None:
            body.append(line)
    return blocks


def documented_runs(markdown: str) -> list[DocumentedRun]:
    """The runs of ``check``, ``routes``, ``resolve`` and ``--help`` shown in the doc."""
    runs: list[DocumentedRun] = []
    for _, block in fenced_blocks(markdown):
        previous: DocumentedRun | None = None
        for chunk in re.split(r"^(?=\$ )", block, flags=re.MULTILINE):
            command, _, output = chunk.partition("\n")
            if command == "$ echo $?" and previous is not None:
                runs[-1] = replace(previous, exit_code=int(output))
                continue
            previous = None
            args = shlex.split(command[2:]) if command.startswith("$ ") else []
            if args[:1] == ["dispatcher"] and args[1:2] in (
                ["check"],
                ["routes"],
                ["resolve"],
                ["--help"],
            ):
                previous = DocumentedRun(tuple(args[1:]), output.rstrip("\n"), 0)
                runs.append(previous)
    return runs


def documented_config(markdown: str) -> str:
    """The ``dispatcher.toml`` the doc's examples run with: its first TOML block."""
    return next(body for info, body in fenced_blocks(markdown) if info == "toml")


def test_cli_doc_shows_every_command() -> None:
    commands = {run.args[0] for run in documented_runs(CLI_DOC.read_text())}

    assert commands == {"check", "routes", "resolve", "--help"}


@pytest.mark.parametrize(
    "run", documented_runs(CLI_DOC.read_text()), ids=lambda run: " ".join(run.args)
)
def test_cli_doc_output_is_real(
    run: DocumentedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markdown = CLI_DOC.read_text()
    write(tmp_path / "dispatcher.toml", documented_config(markdown))
    write(tmp_path / "bad.toml", '[routing.aliases]\n"database.do" = "dbx"\n')
    monkeypatch.chdir(tmp_path)  # the doc runs in the directory that holds its files

    result = invoke(*run.args)

    assert (result.exit_code, result.output.rstrip("\n")) == (run.exit_code, run.output)


# --- serve and dev: configuration errors ----------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_unbound_environment_exits_2_before_serving(command: str) -> None:
    result = invoke(command, "--port", "0", env={"ENVIRONMENT": "prod"})

    assert result.exit_code == 2
    assert "Namespace not found for environment: prod" in result.output
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


def serve_on_a_taken_port(tmp_path: Path) -> tuple[Result, int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        store = str(tmp_path / "registry.db")
        result = invoke(
            "serve", "--port", str(port), "--admin-port", "0", env={"DISPATCHER_STORE": store}
        )
        return result, port


def test_serve_on_a_taken_port_exits_1(tmp_path: Path) -> None:
    result, port = serve_on_a_taken_port(tmp_path)

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert result.output.lower().endswith("address already in use\n")
    assert result.output.count("\n") == 1


def test_serve_on_a_taken_port_names_the_address_once(tmp_path: Path) -> None:
    result, port = serve_on_a_taken_port(tmp_path)

    assert result.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# --- dev and serve as real processes --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(port: int, host: str, path: str) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return Reply(response.status, response.read())
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Served:
    """A ``dispatcher`` process that is listening on ``port``."""

    process: subprocess.Popen[str]
    port: int

    def stop(self, sig: signal.Signals) -> tuple[int, str, str, float]:
        """Send ``sig``; the exit status, stdout, stderr and the seconds it took to exit."""
        start = time.monotonic()
        self.process.send_signal(sig)
        stdout, stderr = self.process.communicate(timeout=STOP_WITHIN + 5)
        return self.process.returncode, stdout, stderr, time.monotonic() - start


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """Start ``dispatcher <args> --port <free>`` in ``tmp_path``; killed if a test leaves it."""
    started: list[subprocess.Popen[str]] = []
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def start(*args: str) -> Served:
        port = free_port()
        process = subprocess.Popen(
            [str(DISPATCHER), *args, "--port", str(port), "--admin-port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        wait_for_port(process, port)
        return Served(process, port)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for_port(process: subprocess.Popen[str], port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"dispatcher exited with {process.returncode}: {stderr}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"dispatcher did not listen on {port} within {within} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dev_serves_echo_workers_and_stops_on_signal(
    launch: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    served: Served = launch("dev")

    health = fetch(served.port, "127.0.0.1", "/health")
    gateway = fetch(served.port, "gateway.do", "/hello")
    db = fetch(served.port, "api.do", "/api/db/query?id=1")
    unknown = fetch(served.port, "unknown.do", "/test")
    status, stdout, stderr, took = served.stop(sig)

    assert health.status == 200
    assert health.json() | {"revision": 0} == {
        "status": "ok",
        "environment": "development",
        "namespace": "dotdo-development",
        "workers": 8,
        "revision": 0,
    }
    assert (gateway.status, gateway.json()["service"], gateway.json()["path"]) == (
        200,
        "gateway",
        "/hello",
    )
    assert (db.json()["service"], db.json()["query"]) == ("db", "id=1")
    assert unknown.status == 404
    assert (status, stdout) == (0, "")
    assert took < STOP_WITHIN
    url = f"http://127.0.0.1:{served.port}"
    assert f"listening on {url}\n" in stderr
    assert f"  curl {url}/health\n" in stderr
    assert f"  curl -H 'Host: gateway.do' {url}/hello\n" in stderr
    assert f"  curl -H 'Host: unknown.do' {url}/test      # 404 Service not found\n" in stderr
    assert "Traceback" not in stderr
    assert (tmp_path / ".dispatcher" / "registry.db").is_file()


def test_serve_serves_declared_workers_and_stops_on_sigterm(launch: Any, tmp_path: Path) -> None:
    write(
        tmp_path / "dispatcher.toml",
        '[workers.dotdo-development]\ngateway = { app = "tests.workers:identity" }\n',
    )
    served: Served = launch("serve", "--config", "dispatcher.toml")

    health = fetch(served.port, "localhost", "/health")
    gateway = fetch(served.port, "gateway.do", "/x")
    db = fetch(served.port, "db.do", "/x")
    status, stdout, stderr, took = served.stop(signal.SIGTERM)

    assert (health.status, health.json()["workers"]) == (200, 1)
    assert gateway.json() == {
        "app": "identity",
        "service": "gateway",
        "worker": "gateway",
        "environment": "development",
        "namespace": "dotdo-development",
        "path": "/x",
    }
    assert (db.status, db.json()["message"]) == (
        404,
        'Worker "db" not found in development namespace',
    )
    assert (status, stdout) == (0, "")
    assert took < STOP_WITHIN
    url = f"http://127.0.0.1:{served.port}"
    assert f"dispatcher serving development (dotdo-development) on {url}\n" in stderr
    assert "Traceback" not in stderr


async def deploy_identity_db(store: Path) -> None:
    async with open_store(str(store)) as registry:
        namespace = NamespaceName("dotdo-development")
        await registry.ensure_namespaces([namespace])
        await registry.deploy(
            namespace, WorkerName("db"), AppTarget("tests.workers:identity"), actor="test"
        )


def test_dev_keeps_a_worker_already_deployed(launch: Any, tmp_path: Path) -> None:
    asyncio.run(deploy_identity_db(tmp_path / ".dispatcher" / "registry.db"))
    served: Served = launch("dev")

    db = fetch(served.port, "db.do", "/")
    served.stop(signal.SIGTERM)

    assert db.json().get("app") == "identity"


# --- dev --upstream ---------------------------------------------------------------------------


class _NamedUpstream(http.server.BaseHTTPRequestHandler):
    """A local HTTP server standing in for a user's own service."""

    def do_GET(self) -> None:
        body = json.dumps({"upstream": "local", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_dev_points_a_service_at_a_local_upstream(launch: Any) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NamedUpstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        served: Served = launch("dev", "--upstream", f"db=http://127.0.0.1:{upstream.server_port}")
        db = fetch(served.port, "db.do", "/items?id=1")
        gateway = fetch(served.port, "gateway.do", "/hello")
        served.stop(signal.SIGTERM)
    finally:
        upstream.shutdown()
        upstream.server_close()

    assert (db.status, db.json()) == (200, {"upstream": "local", "path": "/items?id=1"})
    assert gateway.json()["service"] == "gateway"  # the others keep their echo worker


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("db", "expected SERVICE=URL, got 'db'"),
        ("nope=http://127.0.0.1:9", "'nope' is not a configured service"),
        ("db=ftp://127.0.0.1:9", "db: scheme must be one of http, https, http+unix"),
        ("db=http://user:pw@127.0.0.1:9", "db: credentials in an upstream URL are not allowed"),
    ],
)
def test_dev_upstream_option_is_validated(option: str, message: str) -> None:
    result = invoke("dev", "--upstream", option)

    assert result.exit_code == 2
    assert message in result.output
