"""Registry changes reach running dispatchers: deploys, undeploys, a second instance on the
same store, restarts, and a store that fails under the watcher.

Every check is a real HTTP request to a real dispatcher on a loopback port; changes go
through the store API (``d.store.deploy``) or, to break a row, straight into the SQLite file.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from dispatcher import echo
from dispatcher.app import RunningDispatcher
from dispatcher.store import open_store
from dispatcher.store.sqlite import SQLiteStore
from dispatcher.testing import run_dispatcher
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import AppTarget

DB: Final = WorkerName("db")
AUTH: Final = WorkerName("auth")
GATEWAY: Final = WorkerName("gateway")
DEVELOPMENT: Final = NamespaceName("dotdo-development")
IDENTITY: Final = AppTarget("tests.workers:identity")
IDENTITY_V2: Final = AppTarget("tests.workers:identity_v2")
SYNC_BOUND: Final = 1.5
"""Seconds within which a committed change must be served (the promise is 1 s)."""

CONFIG: Final = """\
[workers.dotdo-development]
db = { app = "tests.workers:identity" }
"""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(url: str, host: str, path: str = "/") -> Reply:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return Reply(response.status, response.read())
    finally:
        connection.close()


async def get(d: RunningDispatcher, host: str, path: str = "/") -> Reply:
    """A real request from another thread: the dispatcher runs on this test's loop."""
    return await asyncio.to_thread(fetch, d.url, host, path)


async def seconds_until(d: RunningDispatcher, host: str, status: int, app: str | None) -> float:
    """Poll every 20 ms until ``host`` answers ``status`` (from ``app``); the time it took."""
    start = time.monotonic()
    while True:
        reply = await get(d, host)
        if reply.status == status and (app is None or reply.json().get("app") == app):
            return time.monotonic() - start
        if time.monotonic() - start > 3 * SYNC_BOUND:
            pytest.fail(f"{host} still answers {reply.status} {reply.body!r}")
        await asyncio.sleep(0.02)


def not_deployed(worker: str, environment: str = "development") -> dict[str, str]:
    return {
        "error": "Service not deployed",
        "message": f'Worker "{worker}" not found in {environment} namespace',
        "hint": "Service may not be deployed yet. Deploy via Deploy API.",
        "code": "not_deployed",
    }


def sqlite_store(d: RunningDispatcher) -> SQLiteStore:
    assert isinstance(d.store, SQLiteStore)
    return d.store


# --- Deploy and undeploy while running ------------------------------------------------------


async def test_deploy_is_served_within_a_second() -> None:
    async with run_dispatcher(workers={"gateway": echo.app}, environ={}) as d:
        assert (await get(d, "db.do")).json() == not_deployed("db")

        await d.store.deploy(d.settings.namespace, DB, IDENTITY, actor="test")
        elapsed = await seconds_until(d, "db.do", 200, "identity")

        assert elapsed < SYNC_BOUND
        assert (await get(d, "db.do", "/q")).json() == {
            "app": "identity",
            "service": "db",
            "worker": "db",
            "environment": "development",
            "namespace": "dotdo-development",
            "path": "/q",
        }


async def test_redeploy_switches_to_the_new_version_within_a_second() -> None:
    async with run_dispatcher(environ={}) as d:
        await d.store.deploy(d.settings.namespace, DB, IDENTITY, actor="test")
        await seconds_until(d, "db.do", 200, "identity")

        deployment = await d.store.deploy(d.settings.namespace, DB, IDENTITY_V2, actor="test")
        elapsed = await seconds_until(d, "db.do", 200, "identity_v2")

        assert elapsed < SYNC_BOUND
        assert deployment.version == 2


async def test_undeploy_is_not_deployed_within_a_second() -> None:
    async with run_dispatcher(environ={}) as d:
        await d.store.deploy(d.settings.namespace, DB, IDENTITY, actor="test")
        await seconds_until(d, "db.do", 200, "identity")

        await d.store.undeploy(d.settings.namespace, DB, actor="test")
        elapsed = await seconds_until(d, "db.do", 404, None)

        assert elapsed < SYNC_BOUND
        assert (await get(d, "db.do")).json() == not_deployed("db")


async def test_second_instance_on_the_same_store_sees_the_deploy(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    async with (
        run_dispatcher(store=store, environ={}) as first,
        run_dispatcher(store=store, environ={}) as second,
    ):
        assert first.store is not second.store
        assert (await get(second, "db.do")).status == 404

        await first.store.deploy(first.settings.namespace, DB, IDENTITY, actor="test")
        elapsed_second = await seconds_until(second, "db.do", 200, "identity")
        elapsed_first = await seconds_until(first, "db.do", 200, "identity")

        assert elapsed_second < SYNC_BOUND
        assert elapsed_first < SYNC_BOUND


async def test_deploy_to_another_namespace_changes_nothing_served() -> None:
    async with run_dispatcher(workers={"db": echo.app}, environ={}) as d:
        before = d.snapshot

        await d.store.deploy(NamespaceName("dotdo-staging"), AUTH, IDENTITY, actor="test")
        await seconds_until_revision(d, before.revision + 1)

        assert (await get(d, "auth.do")).json() == not_deployed("auth")
        assert (await get(d, "db.do")).status == 200


async def seconds_until_revision(d: RunningDispatcher, revision: int) -> float:
    start = time.monotonic()
    while d.snapshot.revision < revision:
        if time.monotonic() - start > 3 * SYNC_BOUND:
            pytest.fail(f"revision {revision} never applied (at {d.snapshot.revision})")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- Restarts -------------------------------------------------------------------------------


async def test_restart_keeps_workers_and_versions(tmp_path: Path) -> None:
    config, store = tmp_path / "dispatcher.toml", tmp_path / "registry.db"
    config.write_text(CONFIG)
    async with run_dispatcher(config, store=store, environ={}) as d:
        await d.store.deploy(d.settings.namespace, AUTH, IDENTITY_V2, actor="test")
        await seconds_until(d, "auth.do", 200, "identity_v2")
        before = await d.store.load_namespace(DEVELOPMENT)

    async with run_dispatcher(config, store=store, environ={}) as d:
        after = await d.store.load_namespace(DEVELOPMENT)
        db, auth = await get(d, "db.do"), await get(d, "auth.do")
        history = await sqlite_store(d).history(namespace=DEVELOPMENT, worker=DB)

    assert before is not None and after is not None
    assert after == before  # same revision, same deployments, same versions
    assert [(x.worker, x.version) for x in after[1]] == [(AUTH, 1), (DB, 1)]
    assert (db.json()["app"], auth.json()["app"]) == ("identity", "identity_v2")
    assert [(e.action, e.version, e.actor) for e in history] == [("deploy", 1, "config")]


async def test_restart_with_a_changed_config_deploys_a_new_version(tmp_path: Path) -> None:
    config, store = tmp_path / "dispatcher.toml", tmp_path / "registry.db"
    config.write_text(CONFIG)
    async with run_dispatcher(config, store=store, environ={}):
        pass
    config.write_text(CONFIG.replace(":identity", ":identity_v2"))

    async with run_dispatcher(config, store=store, environ={}) as d:
        reply = await get(d, "db.do")
        history = await sqlite_store(d).history(namespace=DEVELOPMENT, worker=DB)

    assert reply.json()["app"] == "identity_v2"
    assert [(e.version, e.target, e.actor) for e in history] == [
        (2, IDENTITY_V2, "config"),
        (1, IDENTITY, "config"),
    ]


# --- A failing store keeps the last snapshot serving ----------------------------------------


async def test_closed_store_keeps_the_last_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "registry.db"
    async with run_dispatcher(workers={"gateway": echo.app}, store=store, environ={}) as d:
        revision = d.snapshot.revision
        await d.store.close()
        async with open_store(str(store)) as other:
            await other.deploy(d.settings.namespace, DB, IDENTITY, actor="test")
        await asyncio.sleep(4 * d.settings.sync_interval)

        gateway, db = await get(d, "gateway.do"), await get(d, "db.do")

    assert gateway.status == 200
    assert db.json() == not_deployed("db")  # the deploy could not be synced
    assert d.snapshot.revision == revision
    failures = [r.getMessage() for r in caplog.records if r.name == "dispatcher.sync"]
    assert failures
    assert failures[0] == (
        f"registry sync failed, keeping revision {revision}: registry store is closed: {store}"
    )


async def test_unreadable_row_keeps_the_last_snapshot_until_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "registry.db"
    async with run_dispatcher(workers={"gateway": echo.app}, store=store, environ={}) as d:
        revision = d.snapshot.revision
        corrupt_current_target(store, "gateway")
        await asyncio.sleep(4 * d.settings.sync_interval)

        assert (await get(d, "gateway.do")).status == 200
        assert d.snapshot.revision == revision

        await d.store.deploy(d.settings.namespace, GATEWAY, IDENTITY, actor="test")
        elapsed = await seconds_until(d, "gateway.do", 200, "identity")

    assert elapsed < SYNC_BOUND
    failures = [r for r in caplog.records if r.name == "dispatcher.sync"]
    assert failures and failures[0].levelno == logging.WARNING
    assert (
        failures[0]
        .getMessage()
        .startswith(
            f"registry sync failed, keeping revision {revision}: registry store load_namespace "
            f"failed: {store} (unreadable row: target '{{\"bogus\": 1}}'"
        )
    )


def corrupt_current_target(path: Path, worker: str) -> None:
    """Write a target no dispatcher can read, and announce it as a new revision."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "UPDATE deployments SET target = '{\"bogus\": 1}' WHERE id = "
            "(SELECT deployment_id FROM workers WHERE name = ?)",
            (worker,),
        )
        connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        connection.execute("COMMIT")
    finally:
        connection.close()
