"""Keeps the live ``Snapshot`` current: ``SnapshotBuilder`` turns store rows into one,
``SnapshotWatcher`` follows the store's revision and swaps it in one assignment.

Example::

    async with SnapshotWatcher(store, builder, on_change=dispatcher.install, interval=0.25):
        ...   # a deploy committed by any process is served here within ~interval
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType, TracebackType

from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.forwarding import Forwarder
from dispatcher.forwarding.asgi import AppHost
from dispatcher.forwarding.broken import BrokenForwarder
from dispatcher.forwarding.upstream import UpstreamHub
from dispatcher.namespaces import Namespace, Snapshot, Worker
from dispatcher.routing import RouteTable
from dispatcher.store import RegistryStore
from dispatcher.types import EnvironmentName, NamespaceName, WorkerName
from dispatcher.workers import Deployment, Target, UpstreamTarget

logger = logging.getLogger("dispatcher.sync")


class SnapshotBuilder:
    """Builds snapshots for one environment; loading worker apps happens here, off the hot path."""

    __slots__ = ("routes", "environment", "namespace", "_apps", "_upstreams")

    def __init__(
        self,
        routes: RouteTable,
        environment: EnvironmentName,
        namespace: NamespaceName,
        apps: AppHost,
        upstreams: UpstreamHub,
    ) -> None:
        self.routes = routes
        self.environment = environment
        self.namespace = namespace
        self._apps = apps
        self._upstreams = upstreams

    async def build(self, store: RegistryStore) -> Snapshot:
        """Read the namespace in one transaction and prepare a forwarder per worker."""
        loaded = await store.load_namespace(self.namespace)
        if loaded is None:
            return Snapshot(
                await store.revision(), self.routes, self.environment, self.namespace, None
            )
        revision, deployments = loaded
        workers: dict[WorkerName, Worker] = {}
        for deployment in deployments:
            forwarder = await self._forwarder_for(deployment)
            workers[deployment.worker] = Worker(
                deployment.worker, deployment, forwarder, self.environment
            )
        namespace = Namespace(self.namespace, self.environment, MappingProxyType(workers))
        return Snapshot(revision, self.routes, self.environment, self.namespace, namespace)

    async def _forwarder_for(self, deployment: Deployment) -> Forwarder:
        target: Target = deployment.target
        if isinstance(target, UpstreamTarget):
            return self._upstreams.forwarder_for(target)
        try:
            return await self._apps.forwarder_for(target.import_path)
        except ConfigError as exc:
            logger.error(
                "worker %s in %s cannot be served: %s", deployment.worker, deployment.namespace, exc
            )
            return BrokenForwarder(str(exc))


class SnapshotWatcher:
    """Follows the store revision; builds and installs a new snapshot when it moves.

    It checks the revision every ``interval`` seconds (SQLite's cheap change check, and the
    safety net everywhere); a store that announces its commits (PostgreSQL ``LISTEN/NOTIFY``,
    through ``listen()``) wakes it at once.
    """

    __slots__ = (
        "_store",
        "_builder",
        "_on_change",
        "_interval",
        "_revision",
        "_task",
        "_listener",
        "_wake",
        "_refreshing",
        "errors",
        "synced_at",
    )

    def __init__(
        self,
        store: RegistryStore,
        builder: SnapshotBuilder,
        *,
        on_change: Callable[[Snapshot], None],
        revision: int,
        interval: float,
    ) -> None:
        self._store = store
        self._builder = builder
        self._on_change = on_change
        self._interval = interval
        self._revision = revision
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refreshing = asyncio.Lock()
        self.errors = 0  # failed store reads (metrics: dispatcher_store_errors_total)
        self.synced_at = time.monotonic()  # when the store last confirmed our revision

    @property
    def revision(self) -> int:
        """The registry revision this process serves."""
        return self._revision

    async def __aenter__(self) -> SnapshotWatcher:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._follow())
        listen = getattr(self._store, "listen", None)
        if listen is not None:
            self._listener = loop.create_task(self._listen(listen))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in (self._listener, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    async def rebuild(self, builder: SnapshotBuilder, install: Callable[[Snapshot], None]) -> None:
        """Follow ``builder`` from now on (a reload): build its snapshot and hand it to
        ``install``, under the refresh lock, so an older builder's snapshot never lands after."""
        async with self._refreshing:
            snapshot = await builder.build(self._store)
            self._builder = builder
            self._revision = snapshot.revision
            install(snapshot)
            self.synced_at = time.monotonic()

    async def refresh(self) -> bool:
        """Install a new snapshot if the store moved on; True when one was installed.

        The follower calls it on every tick and notification, the Deploy API right after a
        write; one at a time, so an older snapshot is never installed over a newer one.
        """
        async with self._refreshing:
            revision = await self._store.revision()
            if revision == self._revision:
                self.synced_at = time.monotonic()
                return False
            snapshot = await self._builder.build(self._store)
            self._revision = snapshot.revision
            self._on_change(snapshot)
            self.synced_at = time.monotonic()
        logger.info("registry revision %d applied", snapshot.revision)
        return True

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except DispatcherError as exc:
                # Keep serving the last good snapshot; the next tick retries.
                self.errors += 1
                logger.warning("registry sync failed, keeping revision %d: %s", self._revision, exc)

    async def _listen(self, listen: Callable[[], AsyncIterator[int]]) -> None:
        """Wake the follower whenever the store announces a revision other than ours."""
        async for revision in listen():
            if revision != self._revision:
                self._wake.set()
