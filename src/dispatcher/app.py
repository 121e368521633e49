"""``running(settings)``: the composition root. Builds the store, the worker apps, the
snapshot, the dispatcher, the watcher, the replica heartbeat, the listener and the admin
listener (Deploy API), and tears them down in reverse.

Example::

    async with running(settings) as dispatcher:
        print(dispatcher.url, dispatcher.admin_url)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from dispatcher import __version__
from dispatcher._compiled import describe_build
from dispatcher.access import AccessLog, ErrorLog
from dispatcher.admin import DeployAPI
from dispatcher.auth import BearerTokenAuth, ensure_token_file
from dispatcher.console import Console
from dispatcher.dispatch import Dispatcher
from dispatcher.errors import ConfigError, ListenFailed
from dispatcher.forwarding.asgi import AppHandler, AppHost
from dispatcher.forwarding.upstream import UpstreamHub
from dispatcher.logs import ACCESS_LOGGER
from dispatcher.metrics import ProcessSample, RequestMetrics, render, sample_process
from dispatcher.namespaces import Snapshot
from dispatcher.replicas import Heartbeat, Replicas, new_replica_id, this_process
from dispatcher.server.listeners import Listener
from dispatcher.settings import Limits, Settings
from dispatcher.store import (
    RegistryStore,
    ReplicaInfo,
    is_postgres_url,
    open_store,
    sqlite_path,
)
from dispatcher.sync import SnapshotBuilder, SnapshotWatcher
from dispatcher.types import ASGIApp, NamespaceName, WorkerName
from dispatcher.workers import Target

logger = logging.getLogger("dispatcher")

CONFIG_ACTOR = "config"
TOKEN_FILE_NAME: Final = "admin-token"
DEFAULT_TOKEN_DIRECTORY: Final = ".dispatcher"


@dataclass(frozen=True, slots=True)
class RunningDispatcher:
    """A started dispatcher: its settings, store, request handler, listeners and watcher."""

    settings: Settings
    store: RegistryStore
    dispatcher: Dispatcher
    listener: Listener
    watcher: SnapshotWatcher
    admin_listener: Listener
    replicas: Replicas
    metrics: RequestMetrics
    sample: Callable[[], ProcessSample]
    """This process's metrics now (what ``/metrics`` renders, with its peers' in a group)."""
    reload: Callable[[], Awaitable[dict[str, Any]]]
    """Re-read the configuration and apply what can change live (SIGHUP, ``POST /reload``);
    ``ConfigError`` when it is invalid, and the old one keeps serving."""

    @property
    def replica_id(self) -> str:
        """This process's replica id in the store (``host:pid:random``)."""
        return self.replicas.heartbeat.replica_id

    @property
    def url(self) -> str:
        return url_for(self.settings.host, self.listener.port)

    @property
    def admin_url(self) -> str:
        """Where the Deploy API answers (``DISPATCHER_ADMIN_URL`` for the CLI)."""
        return url_for(self.settings.admin.host, self.admin_listener.port)

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
    load_settings: Callable[[], Settings] | None = None,
    on_reload: Callable[[], None] | None = None,
    serve_traffic: bool = True,
    reuse_port: bool = False,
    group_samples: Callable[[], list[ProcessSample]] | None = None,
) -> AsyncIterator[RunningDispatcher]:
    """Start everything ``settings`` describes; ``apps`` preloads worker apps by import path.

    ``load_settings`` re-reads the configuration on a reload (with the same command-line
    overrides); ``on_reload`` runs after a reload succeeded (a process group passes it on).
    A process group's supervisor runs with ``serve_traffic=False`` and renders
    ``group_samples`` at ``/metrics``; its serving processes bind with ``reuse_port``.
    """
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(settings.store_url, timeout=settings.store_timeout)
        )
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
        heartbeat = Heartbeat(
            store, new_replica_id(), replica_info(settings), revision=snapshot.revision
        )

        def install(built: Snapshot) -> None:
            dispatcher.snapshot = built
            heartbeat.applied(built.revision)

        async def reload() -> dict[str, Any]:
            """What a reload can change without a restart; the rest is named in a warning."""
            if load_settings is None:
                raise ConfigError("this dispatcher was not started from a configuration source")
            new = load_settings()
            kept = restart_only_changes(settings, new)
            if kept:
                logger.warning("reload: %s take effect only on restart", ", ".join(kept))
            await store.ensure_namespaces(new.bindings.values())
            await apply_declared_workers(store, new.workers)
            rebuilt = SnapshotBuilder(
                new.routes, new.environment, new.namespace, app_host, upstreams
            )
            patterns = new.route_patterns if new.enforce_route_patterns else ()

            def swap(built: Snapshot) -> None:
                dispatcher.reconfigure(built, new.own_hosts, patterns)
                heartbeat.applied(built.revision)

            await watcher.rebuild(rebuilt, swap)
            logger.info(
                "configuration reloaded: %d routes, namespace %s, revision %d",
                len(new.routes.routes),
                new.namespace,
                dispatcher.snapshot.revision,
            )
            if on_reload is not None:
                on_reload()
            return {
                "environment": new.environment,
                "namespace": new.namespace,
                "routes": len(new.routes.routes),
                "revision": dispatcher.snapshot.revision,
                "restart_required": kept,
            }

        watcher = SnapshotWatcher(
            store,
            builder,
            on_change=install,
            revision=snapshot.revision,
            interval=settings.sync_interval,
        )
        # Registered before the listeners open, retired after they close: a write never
        # counts as converged while a replica serves an older snapshot unseen.
        await stack.enter_async_context(heartbeat)
        await stack.enter_async_context(watcher)
        replicas = Replicas(store, heartbeat, watcher.refresh, lambda: dispatcher.snapshot)
        metrics = await request_metrics(stack, settings)
        listener = Listener(dispatcher, settings.limits, observer=metrics)

        def sample() -> ProcessSample:
            return sample_process(
                metrics, lambda: process_gauges(listener, dispatcher, watcher, upstreams)
            )

        async def metrics_text() -> bytes:
            samples = group_samples() if group_samples is not None else [sample()]
            return render(samples, settings.environment)

        if serve_traffic:
            await _start(listener, settings.host, settings.port, "", reuse_port=reuse_port)
            stack.push_async_callback(listener.stop, settings.limits.drain_timeout)
        auth = admin_auth(settings)
        api = DeployAPI(
            store,
            auth,
            replicas,
            bindings=settings.bindings,
            served=settings.namespace,
            metrics=metrics_text,
            reload=reload,
        )
        console = await stack.enter_async_context(Console(api, auth, store, replicas, settings))
        admin_listener = Listener(AppHandler(console), admin_limits(settings))
        await _start(admin_listener, settings.admin.host, settings.admin.port, " (admin API)")
        grace = settings.limits.drain_timeout

        async def stop_listeners() -> None:
            # The main listener drains first, while /ready and /metrics still answer; then
            # the admin listener. (Stopping a listener twice is harmless.)
            await listener.stop(grace)
            await admin_listener.stop(grace)

        stack.push_async_callback(stop_listeners)
        listens = {"listen": _address(settings.host, listener.port)} if serve_traffic else {}
        await heartbeat.describe(
            replica_info(
                settings, **listens, admin=_address(settings.admin.host, admin_listener.port)
            )
        )
        if serve_traffic:
            logger.info(
                "dispatcher serving %s on %s:%d (namespace %s, revision %d, %d workers; "
                "request path %s)",
                settings.environment,
                settings.host,
                listener.port,
                settings.namespace,
                snapshot.revision,
                len(snapshot.namespace.workers) if snapshot.namespace else 0,
                describe_build(),
            )
        logger.info(
            "Deploy API on %s:%d (%s)",
            settings.admin.host,
            admin_listener.port,
            "tokens configured" if settings.admin.has_tokens else "generated token",
        )
        yield RunningDispatcher(
            settings,
            store,
            dispatcher,
            listener,
            watcher,
            admin_listener,
            replicas,
            metrics,
            sample,
            reload,
        )


RESTART_ONLY: Final = ("host", "port", "store_url", "store_timeout", "limits", "proxy", "admin")


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """Settings a reload cannot apply to a running process (listeners, store, pools)."""
    return [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


async def request_metrics(stack: AsyncExitStack, settings: Settings) -> RequestMetrics:
    """The main listener's observer: counters, the error log and (unless off) the access log."""
    context = {"environment": settings.environment, "namespace": settings.namespace}
    access = None
    # Off by flag, or by level (--log-level warning): then nothing is even queued.
    if settings.access_log and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO):
        access = await stack.enter_async_context(AccessLog(**context))
    errors = ErrorLog(**context, client_errors=access is None)
    return RequestMetrics(settings.environment, access_log=access, error_log=errors)


def process_gauges(
    listener: Listener, dispatcher: Dispatcher, watcher: SnapshotWatcher, upstreams: UpstreamHub
) -> dict[str, Any]:
    """This process's gauges, read at scrape time (never counted per request)."""
    return {
        "dispatcher_requests_in_flight": listener.in_flight,
        "dispatcher_connections": listener.connection_count,
        "dispatcher_store_errors_total": watcher.errors,
        "dispatcher_snapshot_revision": dispatcher.snapshot.revision,
        "dispatcher_snapshot_age_seconds": time.monotonic() - watcher.synced_at,
        "upstream_connections": [
            [pool.url.url, len(pool.idle), len(pool.connections) - len(pool.idle)]
            for pool in upstreams.pools
        ],
        "upstream_failures": dict(upstreams.outcomes),
    }


def replica_info(settings: Settings, **listeners: str) -> ReplicaInfo:
    """What this process tells the other replicas about itself (``/ready`` shows it)."""
    details = {
        "version": __version__,
        "environment": settings.environment,
        "namespace": settings.namespace,
        **listeners,
    }
    return this_process(details)


def admin_auth(settings: Settings) -> BearerTokenAuth:
    """The admin tokens; with none configured (loopback only), the generated token file's."""
    admin = settings.admin
    if admin.has_tokens:
        return BearerTokenAuth.from_tokens(env_token=admin.token, granted=admin.tokens)
    return BearerTokenAuth.from_tokens(env_token=ensure_token_file(admin_token_path(settings)))


def admin_token_path(settings: Settings) -> str:
    """Beside the SQLite registry file; ``.dispatcher/admin-token`` with PostgreSQL."""
    if is_postgres_url(settings.store_url):
        directory = Path(DEFAULT_TOKEN_DIRECTORY)
        os.makedirs(directory, mode=0o700, exist_ok=True)
    else:
        directory = Path(sqlite_path(settings.store_url)).parent
    return str(directory / TOKEN_FILE_NAME)


def admin_limits(settings: Settings) -> Limits:
    """The main limits, but bodies bounded by the Deploy API's 1 MiB, so the server refuses a
    larger Content-Length before reading a byte."""
    return replace(settings.limits, max_body_bytes=settings.admin.max_body_bytes)


async def _start(
    listener: Listener, host: str, port: int, role: str, *, reuse_port: bool = False
) -> None:
    try:
        await listener.start(host, port, reuse_port=reuse_port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenFailed(f"cannot listen on {_address(host, port)}{role}: {reason}") from exc


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_for(host: str, port: int) -> str:
    """``http://host:port``, IPv6 addresses in brackets."""
    return f"http://{_address(host, port)}"


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
