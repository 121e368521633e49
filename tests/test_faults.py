"""Store faults while dispatchers run: PostgreSQL unreachable (a TCP proxy in front of it is
cut, then restored) and SQLite locked by another connection. Routed traffic keeps being
served from the last snapshot; ``/ready`` says degraded; admin writes answer 503; everything
recovers by itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest

from dispatcher.app import RunningDispatcher
from dispatcher.errors import ConfigError
from dispatcher.settings import Settings
from dispatcher.testing import run_dispatcher
from tests.admin.conftest import DEV, TOKEN, Answer, send
from tests.admin.test_end_to_end import fetch, upstream
from tests.store.conftest import pg_server, pg_url
from tests.store.test_contract import Proxy

__all__ = ["pg_server", "pg_url"]  # the PostgreSQL fixtures, shared with tests/store

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"
HOST: Final = "gateway.do"
ENVIRON: Final = {"DISPATCHER_ADMIN_TOKEN": TOKEN}
UNAVAILABLE: Final = {
    "error": "Service unavailable",
    "message": "the registry store is unavailable; retry shortly",
    "code": "unavailable",
}
STORE_TIMEOUT: Final = 1.0


def config(tmp_path: Path, timeout: float = STORE_TIMEOUT) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(f"[store]\ntimeout = {timeout}\n")
    return path


async def admin(d: RunningDispatcher, method: str, path: str, body: object = None) -> Answer:
    return await asyncio.to_thread(send, d.admin_url, method, path, body=body)


async def routed(d: RunningDispatcher) -> tuple[int, str]:
    return await asyncio.to_thread(fetch, d.url, HOST)


def problems(d: RunningDispatcher) -> tuple[str, ...]:
    """What the store says when no pooled connection comes within the bound."""
    return (
        f"registry store is unavailable: {where(d)} (no free connection within {STORE_TIMEOUT} s)",
    )


def where(d: RunningDispatcher) -> str:
    parts = urlsplit(d.settings.store_url)
    return f"127.0.0.1:{parts.port}{parts.path}"


async def ready_answers(d: RunningDispatcher, status: int, within: float) -> Answer:
    """Poll ``GET /ready`` until it answers ``status``; that answer."""
    started = time.monotonic()
    while True:
        answer = await admin(d, "GET", "/ready")
        if answer.status == status:
            return answer
        elapsed = time.monotonic() - started
        assert elapsed < within, f"/ready still {answer.status} after {within} s: {answer.body!r}"
        await asyncio.sleep(0.05)


# --- PostgreSQL unreachable ----------------------------------------------------------------


@asynccontextmanager
async def proxied(pg_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    """The test server behind a proxy that can be cut; yields it and the URL through it."""
    proxy = Proxy(pg_url)
    await proxy.start()
    try:
        yield proxy, pg_url.replace(urlsplit(pg_url).netloc, f"postgres@127.0.0.1:{proxy.port}")
    finally:
        await proxy.stop()
        await asyncio.sleep(0.1)  # let the cut connections' pipes finish before the loop ends


async def test_postgres_unreachable_keeps_serving_degrades_and_recovers(
    pg_url: str, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    async with (
        upstream("A") as a,
        upstream("B") as b,
        proxied(pg_url) as (proxy, url),
        run_dispatcher(settings, store=url, environ=ENVIRON) as first,
        run_dispatcher(settings, store=url, environ=ENVIRON) as second,
    ):
        deployed = await admin(first, "PUT", WORKER, {"url": a})
        assert (deployed.status, len(deployed.json["replicas"])) == (201, 2)
        assert [await routed(d) for d in (first, second)] == [(200, "A")] * 2

        await proxy.stop()

        # Routed requests never touch the store: served at once from the last snapshot.
        for _ in range(5):
            assert [await routed(d) for d in (first, second)] == [(200, "A")] * 2
        degraded = [await ready_answers(d, 503, within=5) for d in (first, second)]
        started = time.monotonic()
        refused = await admin(second, "PUT", WORKER, {"url": b})
        refused_after = time.monotonic() - started
        convergence = await first.replicas.converge(deployed.json["revision"] + 1, 0.2)
        assert [await routed(d) for d in (first, second)] == [(200, "A")] * 2

        await proxy.start()

        restored = time.monotonic()
        for d in (first, second):
            await ready_answers(d, 200, within=15)
        print(f"\nready again {time.monotonic() - restored:.2f} s after the proxy came back")
        redeployed = await admin(second, "PUT", WORKER, {"url": b})
        served = [await routed(d) for d in (first, second)]

    for answer, d in zip(degraded, (first, second), strict=True):
        body = answer.json
        reason = body.pop("reason")
        assert body == {
            "status": "degraded",
            "revision": deployed.json["revision"],
            "replica": d.replica_id,
            "store": "unavailable",
            "replicas": [],
        }
        # The failed heartbeat's error, or the probe's own timeout, whichever came first.
        assert reason.startswith("the registry store is unavailable (")
        assert reason.endswith(
            f"); serving the last snapshot, revision {deployed.json['revision']}"
        )
    assert (refused.status, refused.json, refused.headers["retry-after"]) == (
        503,
        UNAVAILABLE,
        "1",
    )
    assert refused_after < 3 * STORE_TIMEOUT
    assert (convergence.converged, convergence.replicas) == (False, ())
    assert convergence.problem in ("the store did not answer in time", *problems(first))
    assert (redeployed.status, redeployed.json["converged"]) == (200, True)
    assert redeployed.json["revision"] == deployed.json["revision"] + 1
    assert served == [(200, "B")] * 2


# --- SQLite locked -------------------------------------------------------------------------


@asynccontextmanager
async def write_lock_held(path: str) -> AsyncIterator[sqlite3.Connection]:
    """Another connection holds the write lock (BEGIN IMMEDIATE) until the block ends."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield locker
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()


async def test_a_write_waits_out_a_short_sqlite_lock(tmp_path: Path) -> None:
    store = str(tmp_path / "registry.db")
    async with (
        upstream("A") as a,
        upstream("B") as b,
        run_dispatcher(config(tmp_path, timeout=2.0), store=store, environ=ENVIRON) as d,
    ):
        await admin(d, "PUT", WORKER, {"url": a})
        async with write_lock_held(store) as locker:
            writing = asyncio.ensure_future(admin(d, "PUT", WORKER, {"url": b}))
            await asyncio.sleep(0.3)
            assert not writing.done()
            locker.execute("ROLLBACK")
            answer = await writing
        served = await routed(d)

    assert (answer.status, answer.json["version"], answer.json["converged"]) == (200, 2, True)
    assert served == (200, "B")


async def test_a_write_to_a_locked_sqlite_store_is_503_past_the_bound(tmp_path: Path) -> None:
    store = str(tmp_path / "registry.db")
    async with (
        upstream("A") as a,
        upstream("B") as b,
        run_dispatcher(config(tmp_path), store=store, environ=ENVIRON) as d,
    ):
        deployed = await admin(d, "PUT", WORKER, {"url": a})
        async with write_lock_held(store):
            started = time.monotonic()
            writing = asyncio.ensure_future(admin(d, "PUT", WORKER, {"url": b}))
            served_meanwhile = []
            while not writing.done():
                served_meanwhile.append(await routed(d))
            refused, took = await writing, time.monotonic() - started
            degraded = await ready_answers(d, 503, within=5)
        await ready_answers(d, 200, within=5)
        after = await admin(d, "PUT", WORKER, {"url": b})
        served = await routed(d)

    # Behind the lock, a heartbeat may hold the store's thread for one bound first.
    assert STORE_TIMEOUT <= took < 2 * STORE_TIMEOUT + 1.0
    assert (refused.status, refused.json, refused.headers["retry-after"]) == (
        503,
        UNAVAILABLE,
        "1",
    )
    assert served_meanwhile and set(served_meanwhile) == {(200, "A")}
    assert degraded.json["store"] == "unavailable"
    # The heartbeat's "locked", or the probe finding the store's one thread busy with it.
    assert degraded.json["reason"].startswith("the registry store is unavailable (")
    # Nothing was written by the refused deploy: the next one is version 2.
    assert (after.status, after.json["version"]) == (200, 2)
    assert after.json["revision"] == deployed.json["revision"] + 1
    assert served == (200, "B")


# --- the bound ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0", "must be a number of seconds from 0.05 to 60 (got 0)"),
        ("61", "must be a number of seconds from 0.05 to 60 (got 61)"),
        ('"5"', "must be a number of seconds from 0.05 to 60 (got '5')"),
        ("nan", "must be a number of seconds from 0.05 to 60 (got nan)"),
        ("true", "must be a number of seconds from 0.05 to 60 (got True)"),
    ],
)
def test_the_store_timeout_is_a_bounded_number_of_seconds(
    tmp_path: Path, value: str, error: str
) -> None:
    path = tmp_path / "dispatcher.toml"
    path.write_text(f"[store]\ntimeout = {value}\n")

    with pytest.raises(ConfigError) as raised:
        Settings.load(str(path), {})

    assert str(raised.value) == f"{path}: store.timeout: {error}"


def test_the_store_timeout_defaults_to_5_seconds(tmp_path: Path) -> None:
    assert Settings.load(None, {}).store_timeout == 5.0
    assert Settings.load(str(config(tmp_path, 0.5)), {}).store_timeout == 0.5
