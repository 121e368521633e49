"""Run a real dispatcher inside your own tests.

Async (pytest-asyncio, anyio)::

    from dispatcher.testing import run_dispatcher

    async def test_db_route(tmp_path):
        async with run_dispatcher("dispatcher.toml", workers={"db": my_asgi_app}) as d:
            ...  # send HTTP to d.url with Host: db.do

Synchronous (plain pytest, requests/httpx/urllib)::

    from dispatcher.testing import DispatcherThread

    def test_gateway():
        with DispatcherThread(workers={"gateway": my_asgi_app}) as d:
            ...  # d.url is http://127.0.0.1:<free port>

The dispatcher listens on a free loopback port, keeps its registry in a temporary SQLite
file (unless ``store`` is given), and serves the given ASGI apps as workers in the
namespace of the chosen environment. Its Deploy API listens on another free loopback port,
``d.admin_url``; it accepts ``DISPATCHER_ADMIN_TOKEN`` from ``environ`` when set there.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType, TracebackType

import uvloop

from dispatcher.app import RunningDispatcher, running
from dispatcher.settings import Settings
from dispatcher.types import ASGIApp, WorkerName
from dispatcher.workers import AppTarget, Target, validate_name

__all__ = ["DispatcherThread", "run_dispatcher"]


@asynccontextmanager
async def run_dispatcher(
    config: str | Path | None = None,
    *,
    workers: Mapping[str, ASGIApp] | None = None,
    environment: str | None = None,
    store: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningDispatcher]:
    """Start a dispatcher on 127.0.0.1 (free port) serving ``workers`` (name → ASGI app)."""
    env = dict(environ if environ is not None else os.environ)
    if environment is not None:
        env["ENVIRONMENT"] = environment
    with tempfile.TemporaryDirectory(prefix="dispatcher-test-") as scratch:
        env["DISPATCHER_STORE"] = str(store) if store is not None else f"{scratch}/registry.db"
        settings = Settings.load(
            str(config) if config is not None else None,
            env,
            host="127.0.0.1",
            port=0,
            admin_host="127.0.0.1",
            admin_port=0,
        )
        apps, declared = _preloaded(workers or {})
        merged = dict(settings.workers)
        merged[settings.namespace] = MappingProxyType(
            {**settings.workers.get(settings.namespace, {}), **declared}
        )
        settings = replace(settings, workers=MappingProxyType(merged))
        async with running(settings, apps=apps) as dispatcher:
            yield dispatcher


def _preloaded(
    workers: Mapping[str, ASGIApp],
) -> tuple[dict[str, ASGIApp], dict[WorkerName, Target]]:
    """Give each app a synthetic import path the AppHost resolves without importing."""
    apps: dict[str, ASGIApp] = {}
    declared: dict[WorkerName, Target] = {}
    for name, app in workers.items():
        validate_name(name, "worker name")
        path = f"dispatcher.testing:worker_{re.sub(r'[^a-z0-9]', '_', name)}"
        apps[path] = app
        declared[WorkerName(name)] = AppTarget(path)
    return apps, declared


class DispatcherThread:
    """``run_dispatcher`` on its own event loop in a background thread, for synchronous tests."""

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        workers: Mapping[str, ASGIApp] | None = None,
        environment: str | None = None,
        store: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._kwargs = {
            "workers": workers,
            "environment": environment,
            "store": store,
            "environ": environ,
        }
        self._config = config
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher-test", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.running: RunningDispatcher | None = None

    @property
    def url(self) -> str:
        assert self.running is not None, "DispatcherThread is not started"
        return self.running.url

    @property
    def admin_url(self) -> str:
        assert self.running is not None, "DispatcherThread is not started"
        return self.running.admin_url

    def __enter__(self) -> RunningDispatcher:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.running is not None
        return self.running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            uvloop.run(self._serve())
        except BaseException as exc:  # surfaced to the test thread by __enter__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with run_dispatcher(self._config, **self._kwargs) as running:  # type: ignore[arg-type]
            self.running = running
            self._ready.set()
            await self._stop.wait()
