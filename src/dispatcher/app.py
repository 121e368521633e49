"""``running(settings)``: the composition root. Builds the store, the worker apps, the
snapshot, the dispatcher, the watcher and the listener, and tears them down in reverse.

Example::

    async with running(settings) as dispatcher:
        print(dispatcher.url)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from dispatcher.dispatch import Dispatcher
from dispatcher.forwarding.asgi import AppHost
from dispatcher.forwarding.upstream import UpstreamHub
from dispatcher.namespaces import Snapshot
from dispatcher.server.listeners import Listener
from dispatcher.settings import Settings
from dispatcher.store import RegistryStore, open_store
from dispatcher.sync import SnapshotBuilder, SnapshotWatcher
from dispatcher.types import ASGIApp, NamespaceName, WorkerName
from dispatcher.workers import Target

logger = logging.getLogger("dispatcher")

CONFIG_ACTOR = "config"


@dataclass(frozen=True, slots=True)
class RunningDispatcher:
    """A started dispatcher: its settings, store, request handler, listener and watcher."""

    settings: Settings
    store: RegistryStore
    dispatcher: Dispatcher
    listener: Listener
    watcher: SnapshotWatcher

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.listener.port}"

    @property
    def snapshot(self) -> Snapshot:
        return self.dispatcher.snapshot


Preparation = Callable[[RegistryStore, Settings], Awaitable[None]]
"""A step run against the store before the first snapshot (``dispatcher dev`` deploys here)."""


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    apps: Mapping[str, ASGIApp] | None = None,
    prepare: Preparation | None = None,
) -> AsyncIterator[RunningDispatcher]:
    """Start everything ``settings`` describes; ``apps`` preloads worker apps by import path."""
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings.store_url))
        await store.ensure_namespaces(settings.bindings.values())
        await apply_declared_workers(store, settings.workers)
        if prepare is not None:
            await prepare(store, settings)
        app_host = AppHost(apps)
        stack.push_async_callback(app_host.aclose)
        upstreams = await stack.enter_async_context(UpstreamHub(settings.proxy))
        builder = SnapshotBuilder(
            settings.routes, settings.environment, settings.namespace, app_host, upstreams
        )
        snapshot = await builder.build(store)
        dispatcher = Dispatcher(
            snapshot,
            own_hosts=settings.own_hosts,
            accept_patterns=settings.route_patterns if settings.enforce_route_patterns else (),
        )
        watcher = SnapshotWatcher(
            store,
            builder,
            on_change=lambda s: setattr(dispatcher, "snapshot", s),
            revision=snapshot.revision,
            interval=settings.sync_interval,
        )
        await stack.enter_async_context(watcher)
        listener = Listener(dispatcher, settings.limits)
        await listener.start(settings.host, settings.port)
        stack.push_async_callback(listener.stop, settings.limits.drain_timeout)
        logger.info(
            "dispatcher serving %s on %s:%d (namespace %s, revision %d, %d workers)",
            settings.environment,
            settings.host,
            listener.port,
            settings.namespace,
            snapshot.revision,
            len(snapshot.namespace.workers) if snapshot.namespace else 0,
        )
        yield RunningDispatcher(settings, store, dispatcher, listener, watcher)


async def apply_declared_workers(
    store: RegistryStore, declared: Mapping[NamespaceName, Mapping[WorkerName, Target]]
) -> None:
    """Deploy the workers the configuration declares, where the store holds something else.

    The configuration is the source of truth for the workers it names: a restart with an
    unchanged file writes nothing; a changed target becomes a new version by ``config``.
    """
    for namespace, workers in declared.items():
        loaded = await store.load_namespace(namespace)
        current = {d.worker: d.target for d in loaded[1]} if loaded is not None else {}
        for name, target in workers.items():
            if current.get(name) != target:
                await store.deploy(namespace, name, target, actor=CONFIG_ACTOR)
