"""Dispatchers sharing one PostgreSQL registry see a deploy at once, through LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dispatcher.app import RunningDispatcher
from dispatcher.testing import run_dispatcher
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import AppTarget

NAMESPACE = NamespaceName("dotdo-development")


async def served_worker(dispatcher: RunningDispatcher, name: str) -> str | None:
    namespace = dispatcher.snapshot.namespace
    worker = namespace.lookup(WorkerName(name)) if namespace is not None else None
    return worker.deployment.target.describe() if worker is not None else None


async def test_a_deploy_reaches_every_dispatcher_through_notify(
    pg_url: str, tmp_path: Path
) -> None:
    # A poll interval far above the bound: only the notification can make it in time.
    config = tmp_path / "slow-poll.toml"
    config.write_text("[store]\nsync_interval = 30\n")
    async with (
        run_dispatcher(config, store=pg_url, environ={}) as first,
        run_dispatcher(config, store=pg_url, environ={}) as second,
    ):
        started = time.monotonic()
        await first.store.deploy(
            NAMESPACE, WorkerName("db"), AppTarget("dispatcher.echo:app"), actor="test"
        )
        while time.monotonic() - started < 2.0:
            seen = [await served_worker(d, "db") for d in (first, second)]
            if all(s == "app dispatcher.echo:app" for s in seen):
                break
            await asyncio.sleep(0.01)
        took = time.monotonic() - started

    assert seen == ["app dispatcher.echo:app", "app dispatcher.echo:app"]
    assert took < 1.0
