"""Logs of a real ``dispatcher serve``: JSON lines on stderr, one access line per request,
every error with its request's context, ``--log-level`` and ``--no-access-log``, and never
a secret (the admin token, an Authorization header)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.test_cli import CLEAN_ENV, DISPATCHER, ROOT, free_port, wait_for_port

TOKEN: Final = "sekret-admin-token-0123456789abcdef"
CLIENT_SECRET: Final = "Bearer client-password-98765"
CONFIG: Final = (
    "[workers.dotdo-development]\n"
    'gateway = { app = "tests.workers:identity" }\n'
    'auth = { app = "tests.workers:raising" }\n'
)


def request(port: int, host: str, path: str, headers: dict[str, str] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def run_and_stop(tmp_path: Path, *flags: str, traffic: Any) -> list[dict[str, Any]]:
    """Serve with ``flags``, run ``traffic(port, admin_port)``, stop with SIGTERM; every
    stderr line parsed as JSON (a line that is not JSON fails the test)."""
    (tmp_path / "dispatcher.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["DISPATCHER_ADMIN_TOKEN"] = TOKEN
    port, admin_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(DISPATCHER), "serve", "--config", "dispatcher.toml", "--port", str(port),
         "--admin-port", str(admin_port), *flags],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(process, port)
        wait_for_port(process, admin_port)
        traffic(port, admin_port)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert TOKEN not in stderr and "client-password" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    others = [line for line in stderr.splitlines() if not line.startswith("{")]
    # The only plain line is the start banner click prints for people.
    assert len(others) == 1 and others[0].startswith("dispatcher serving"), others
    return [json.loads(line) for line in lines]


def traffic(port: int, admin_port: int) -> None:
    secret = {"Authorization": CLIENT_SECRET, "X-Request-Id": "trace-me-1"}
    assert request(port, "gateway.do", "/hello?token=abc", secret) == 200
    assert request(port, "db.do", "/missing", {"X-Request-Id": "trace-me-2"}) == 404
    assert request(port, "nowhere.example", "/x") == 404
    assert request(port, "auth.do", "/boom", {"X-Request-Id": "trace-me-3"}) == 500
    assert (
        request(admin_port, "127.0.0.1", "/namespaces", {"Authorization": f"Bearer {TOKEN}"}) == 200
    )
    assert request(admin_port, "127.0.0.1", "/namespaces", {"Authorization": "Bearer wrong"}) == 401


@pytest.fixture
def lines(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    yield run_and_stop(tmp_path, traffic=traffic)


def test_every_line_is_json_with_time_level_and_logger(lines: list[dict[str, Any]]) -> None:
    assert lines
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys()
        assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_one_access_line_per_routed_request(lines: list[dict[str, Any]]) -> None:
    access = [line for line in lines if line["logger"] == "dispatcher.access"]
    assert [(a["host"], a["path"], a["status"], a["outcome"]) for a in access] == [
        ("gateway.do", "/hello", 200, "routed"),
        ("db.do", "/missing", 404, "not_deployed"),
        ("nowhere.example", "/x", 404, "service_not_found"),
        ("auth.do", "/boom", 500, "internal_error"),
    ]
    first = access[0]
    assert first["request_id"] == "trace-me-1"
    assert first["method"] == "GET"
    assert (first["service"], first["worker"]) == ("gateway", "gateway")
    assert (first["environment"], first["namespace"]) == ("development", "dotdo-development")
    assert first["duration_ms"] >= 0
    assert first["client"] == "127.0.0.1"
    assert "token=abc" not in json.dumps(access)  # the query string is never logged


def test_errors_are_logged_with_their_requests_context(lines: list[dict[str, Any]]) -> None:
    errors = [line for line in lines if line["logger"] == "dispatcher.request"]
    by_id = {line["request_id"]: line for line in errors}
    failed = by_id["trace-me-3"]
    assert (failed["level"], failed["outcome"], failed["status"]) == (
        "error",
        "internal_error",
        500,
    )
    assert (failed["method"], failed["host"], failed["path"]) == ("GET", "auth.do", "/boom")
    assert (failed["service"], failed["worker"]) == ("auth", "auth")
    assert (failed["environment"], failed["namespace"]) == ("development", "dotdo-development")
    assert failed["duration_ms"] >= 0
    assert "worker" in failed["reason"] or "Unexpected" in failed["reason"]
    # The worker's traceback is logged too, with the same request id.
    traced = [line for line in lines if "worker exploded" in line.get("exception", "")]
    assert [line["request_id"] for line in traced] == ["trace-me-3"]
    # A client's mistake is one access line, reason included; not a second error line.
    assert "trace-me-2" not in by_id
    access = {line["request_id"]: line for line in lines if line["logger"] == "dispatcher.access"}
    assert access["trace-me-2"]["reason"] == 'Worker "db" not found in development namespace'


def test_without_the_access_log_client_errors_get_their_own_line(tmp_path: Path) -> None:
    lines = run_and_stop(tmp_path, "--no-access-log", traffic=traffic)
    errors = {line["request_id"]: line for line in lines if line["logger"] == "dispatcher.request"}
    assert (errors["trace-me-2"]["level"], errors["trace-me-2"]["outcome"]) == (
        "info",
        "not_deployed",
    )


def test_no_access_log_and_a_higher_level_silence_the_info_lines(tmp_path: Path) -> None:
    lines = run_and_stop(tmp_path, "--no-access-log", "--log-level", "warning", traffic=traffic)
    assert not [line for line in lines if line["logger"] == "dispatcher.access"]
    assert all(line["level"] in ("warning", "error") for line in lines)


def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(DISPATCHER), "serve", "--log-level", "loud"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "loud" in result.stderr and "Traceback" not in result.stderr


def test_access_lines_escape_what_the_client_chose(tmp_path: Path) -> None:
    awkward = 'quote"back\\slash{}'

    def traffic(port: int, admin_port: int) -> None:
        assert request(port, "gateway.do", "/caf%C3%A9", {"X-Request-Id": awkward}) == 200

    lines = run_and_stop(tmp_path, traffic=traffic)
    [access] = [line for line in lines if line["logger"] == "dispatcher.access"]
    assert access["request_id"] == awkward
    assert access["path"] == "/caf%C3%A9"
    assert access["message"] == "GET gateway.do/caf%C3%A9 200"
