"""``dispatcher.testing``: the example of docs/testing.md runs as written, and each documented
promise of ``run_dispatcher`` and ``DispatcherThread`` holds.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from dispatcher import ConfigError, echo
from dispatcher.store import sqlite_path
from dispatcher.testing import DispatcherThread, run_dispatcher
from dispatcher.types import Message, Receive, Scope, Send

ROOT: Final = Path(__file__).resolve().parent.parent
TESTING_DOC: Final = ROOT / "docs" / "testing.md"
UNBOUND_PROD: Final = (
    "ENVIRONMENT (environment variable): Namespace not found for environment: prod; must be "
    "one of the bound environments production, staging, development (got 'prod')"
)
DECLARING_DB: Final = '[workers.dotdo-development]\ndb = { app = "tests.workers:identity" }\n'


def get(url: str, host: str, path: str = "/") -> tuple[int, Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# --- The documented example, run as a user's project ----------------------------------------


def documented_files(markdown: str) -> dict[str, str]:
    """Fenced blocks whose first line is a comment naming a file: ``# tests/test_x.py``."""
    files: dict[str, str] = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL):
        first, _, rest = block.partition("\n")
        name = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first)
        if name is not None:
            files[name.group(1)] = block if first.endswith(".py") else rest
    return files


def documented_summary(markdown: str) -> str:
    """The summary line of the documented ``pytest -q`` run, without its timing."""
    match = re.search(r"^(\d+ passed) in [\d.]+s$", markdown, re.MULTILINE)
    assert match is not None, "docs/testing.md shows no pytest summary line"
    return match.group(1)


def test_documented_example_runs_as_written(tmp_path: Path) -> None:
    markdown = TESTING_DOC.read_text()
    files = documented_files(markdown)
    assert sorted(files) == ["dispatcher.toml", "pyproject.toml", "tests/test_routing.py"]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("ENVIRONMENT", "DISPATCHER_STORE")}

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        + ["tests/test_routing.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{documented_summary(markdown)} in " in run.stdout.splitlines()[-1]


# --- The two forms ------------------------------------------------------------------------


def test_thread_form_serves_workers_on_a_free_loopback_port() -> None:
    thread = DispatcherThread(workers={"gateway": echo.app}, environ={})
    with thread as d:
        status, body = get(d.url, "gateway.do", "/hello")

    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", d.url)
    assert thread.url == d.url
    assert (status, body["service"], body["environment"]) == (200, "gateway", "development")


async def test_async_form_serves_workers_on_the_test_loop() -> None:
    async with run_dispatcher(workers={"db": echo.app}, environ={}) as d:
        status, body = await asyncio.to_thread(get, d.url, "api.do", "/api/db/query")

    assert (status, body["service"], body["path"]) == (200, "db", "/api/db/query")


def test_two_threads_run_side_by_side() -> None:
    with (
        DispatcherThread(workers={"db": echo.app}, environment="staging", environ={}) as a,
        DispatcherThread(workers={"db": echo.app}, environment="production", environ={}) as b,
    ):
        assert a.url != b.url
        assert get(a.url, "db.do")[1]["environment"] == "staging"
        assert get(b.url, "db.do")[1]["environment"] == "production"


# --- Arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "environ", "expected"),
    [
        (None, {}, "development"),
        (None, {"ENVIRONMENT": "staging"}, "staging"),
        ("production", {"ENVIRONMENT": "staging"}, "production"),
    ],
)
async def test_environment_argument_overrides_environ(
    environment: str | None, environ: dict[str, str], expected: str
) -> None:
    async with run_dispatcher(environment=environment, environ=environ) as d:
        status, body = await asyncio.to_thread(get, d.url, "localhost", "/health")

    assert (d.settings.environment, body["environment"]) == (expected, expected)
    assert body["namespace"] == f"dotdo-{expected}"


async def test_workers_join_those_the_config_declares(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    config.write_text(DECLARING_DB)

    async with run_dispatcher(config, workers={"gateway": echo.app}, environ={}) as d:
        db = await asyncio.to_thread(get, d.url, "db.do")
        gateway = await asyncio.to_thread(get, d.url, "gateway.do")

    assert (db[1]["app"], gateway[1]["service"]) == ("identity", "gateway")


async def test_workers_win_over_the_config_on_a_name_clash(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    config.write_text(DECLARING_DB)

    async with run_dispatcher(config, workers={"db": echo.app}, environ={}) as d:
        status, body = await asyncio.to_thread(get, d.url, "db.do")

    assert "app" not in body  # the echo answered, not tests.workers:identity
    assert (status, body["service"]) == (200, "db")


async def test_temporary_store_is_removed_on_exit() -> None:
    async with run_dispatcher(environ={}) as d:
        path = Path(sqlite_path(d.settings.store_url))
        assert path.is_file()

    assert not path.exists()


async def test_given_store_is_kept_and_reused(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    async with run_dispatcher(workers={"db": echo.app}, store=store, environ={}) as d:
        revision = d.snapshot.revision

    async with run_dispatcher(workers={"db": echo.app}, store=store, environ={}) as d:
        assert d.snapshot.revision == revision  # nothing redeployed
        assert (await asyncio.to_thread(get, d.url, "db.do"))[0] == 200


# --- Errors ---------------------------------------------------------------------------------


def test_thread_raises_the_config_error_on_enter() -> None:
    with pytest.raises(ConfigError) as caught, DispatcherThread(environment="prod", environ={}):
        pytest.fail("the dispatcher should not start")

    assert str(caught.value) == UNBOUND_PROD


async def test_async_form_raises_the_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        async with run_dispatcher(environment="prod", environ={}):
            pytest.fail("the dispatcher should not start")

    assert str(caught.value) == UNBOUND_PROD


async def test_invalid_config_file_is_named_in_the_error(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    config.write_text('[routing]\nservices = ["gateway", "gateway"]\n')

    with pytest.raises(ConfigError) as caught:
        async with run_dispatcher(config, environ={}):
            pytest.fail("the dispatcher should not start")

    assert str(caught.value) == (
        f"{config}: routing.services[1]: service 'gateway' is listed twice"
    )


@pytest.mark.parametrize("name", ["DB", "", "-db", "db_x"])
async def test_invalid_worker_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="worker name must be 1 to 63 characters"):
        async with run_dispatcher(workers={name: echo.app}, environ={}):
            pass


# --- Worker lifespans -----------------------------------------------------------------------


class LifespanRecorder:
    """An ASGI app that records its lifespan events and answers with them."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = json.dumps({"events": self.events}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            kind = message["type"].removeprefix("lifespan.")
            self.events.append(kind)
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return


@pytest.fixture
def recorder() -> Iterator[LifespanRecorder]:
    yield LifespanRecorder()


def test_worker_lifespan_starts_before_serving_and_shuts_down_on_exit(
    recorder: LifespanRecorder,
) -> None:
    with DispatcherThread(workers={"db": recorder}, environ={}) as d:
        status, body = get(d.url, "db.do")

    assert (status, body["events"]) == (200, ["startup"])
    assert recorder.events == ["startup", "shutdown"]


def test_one_app_under_several_names_runs_one_lifespan(recorder: LifespanRecorder) -> None:
    with DispatcherThread(workers={"db": recorder, "auth": recorder}, environ={}) as d:
        db, auth = get(d.url, "db.do"), get(d.url, "auth.do")

    assert (db, auth) == ((200, {"events": ["startup"]}), (200, {"events": ["startup"]}))
    assert recorder.events == ["startup", "shutdown"]
