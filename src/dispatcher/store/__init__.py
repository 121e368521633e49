"""The registry store seam: the ``RegistryStore`` Protocol and ``open_store(url)``.

Example::

    # or open_store("postgresql://dispatcher@db.internal/registry")
    async with open_store("sqlite:///var/lib/dispatcher/registry.db") as store:
        await store.ensure_namespaces([NamespaceName("dotdo-production")])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NewType, Protocol

from dispatcher.errors import ConfigError
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, Target

AuditAction = Literal["deploy", "undeploy", "rollback"]
SYSTEM_ACTOR: Final = "system"
"""Who the audit trail names for changes the store makes on its own (forced namespace delete)."""
REPLICA_RETENTION: Final = 3600.0
"""Seconds after which a replica that stopped heartbeating is dropped from the table."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the append-only audit trail: a deploy, an undeploy or a rollback, at one
    revision. A rollback names the version whose target it restored (``restored_version``)."""

    revision: int
    namespace: NamespaceName
    worker: WorkerName
    action: AuditAction
    version: int | None
    target: Target | None
    actor: str
    at: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    version_label: str | None = None
    restored_version: int | None = None


ReplicaId = NewType("ReplicaId", str)
"""One dispatcher process sharing the store: ``host:pid:random`` (``web-1:4242:9f3ab2c1``)."""

DEFAULT_STORE_TIMEOUT: Final = 5.0
"""Seconds an operation waits for a connection or a lock before ``StoreUnavailable``."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What a replica says about itself in each heartbeat: where it runs, and ``details``
    (environment, namespace, listen addresses, version) for people reading ``/ready``."""

    host: str
    pid: int
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Replica:
    """A replica as the store last saw it. Times are the store's clock (UTC text); ``age`` is
    how many seconds ago, by that same clock, so no two machines' clocks are compared."""

    id: ReplicaId
    revision: int
    host: str
    pid: int
    started_at: str
    last_seen: str
    age: float
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class RegistryStore(Protocol):
    """Persistence of namespaces, their current workers and the deployment history.

    Every write is one transaction and bumps the store-wide revision by one.
    """

    async def revision(self) -> int:
        """The current revision; goes up by one with every committed change."""
        ...

    async def ensure_namespaces(self, names: Iterable[NamespaceName]) -> list[NamespaceName]:
        """Create the namespaces that do not exist yet (one revision bump if any was created);
        returns the ones it created, sorted."""
        ...

    async def list_namespaces(self) -> list[NamespaceName]:
        """All namespace names, sorted."""
        ...

    async def delete_namespace(self, name: NamespaceName, *, force: bool = False) -> int:
        """Remove a namespace and return the revision that recorded it; ``NamespaceNotEmpty``
        unless it is empty or ``force``."""
        ...

    async def deploy(
        self,
        namespace: NamespaceName,
        worker: WorkerName,
        target: Target,
        *,
        actor: str,
        metadata: Mapping[str, str] | None = None,
        version_label: str | None = None,
        pinned: WorkerName | None = None,
    ) -> Deployment:
        """Make ``target`` the current version of ``worker``; returns the new record.

        ``pinned`` (``gateway-v2``) gets the same target in the same transaction, so a
        versioned subdomain keeps reaching this version after later deploys of ``worker``.
        """
        ...

    async def rollback(
        self, namespace: NamespaceName, worker: WorkerName, *, actor: str
    ) -> Deployment:
        """Deploy the previous version's target again as a new record (action ``rollback``);
        ``WorkerNotFound`` if nothing is deployed, ``NothingToRollBack`` if there is no
        previous version. Repeated rollbacks keep stepping back."""
        ...

    async def history(
        self,
        *,
        namespace: NamespaceName | None = None,
        worker: WorkerName | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """The audit trail, newest first, optionally for one namespace and/or worker name."""
        ...

    async def undeploy(self, namespace: NamespaceName, worker: WorkerName, *, actor: str) -> int:
        """Remove the worker from the namespace and return the revision that recorded it;
        ``WorkerNotFound`` if it is not there."""
        ...

    async def load_namespace(self, namespace: NamespaceName) -> tuple[int, list[Deployment]] | None:
        """The revision and the current deployments, or ``None`` if the namespace is missing."""
        ...

    async def heartbeat(self, replica_id: ReplicaId, revision: int, info: ReplicaInfo) -> None:
        """Record that ``replica_id`` serves ``revision``, seen now by the store's clock.

        The one write that does not bump the revision: replicas report, they change nothing.
        A replica's recorded revision never goes down. Rows not seen for an hour are dropped.
        """
        ...

    async def replicas(self, live_within: float) -> list[Replica]:
        """The replicas seen within the last ``live_within`` seconds, sorted by id."""
        ...

    async def retire(self, replica_id: ReplicaId) -> None:
        """Forget a replica that stops cleanly, so nobody waits for it until it ages out."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...


DEFAULT_STORE_URL = "sqlite:///.dispatcher/registry.db"


POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
"""URL prefixes that name a PostgreSQL database (libpq accepts both)."""


@asynccontextmanager
async def open_store(
    url: str, *, timeout: float = DEFAULT_STORE_TIMEOUT
) -> AsyncIterator[RegistryStore]:
    """Open the store a URL names and close it after.

    ``postgresql://`` and ``postgres://`` open a ``PostgresStore``; ``sqlite:///path`` or a bare
    file path open a ``SQLiteStore``. Each backend is imported only when it is used.
    ``timeout`` bounds each wait for a lock (SQLite's busy timeout, PostgreSQL's
    ``lock_timeout``) and, with PostgreSQL, for a connection.
    """
    store = await _open(url, timeout)
    try:
        yield store
    finally:
        await store.close()


async def _open(url: str, timeout: float) -> RegistryStore:
    if is_postgres_url(url):
        from dispatcher.store.postgres import PostgresStore

        return await PostgresStore.open(url, connect_timeout=timeout, lock_timeout=timeout)
    from dispatcher.store.sqlite import SQLiteStore

    return await SQLiteStore.open(sqlite_path(url), busy_timeout=timeout)


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def masked_store_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and reprs."""
    if is_postgres_url(url):
        from dispatcher.store.postgres import mask_url

        return mask_url(url)
    return url


def check_store_url(url: str) -> None:
    """``ConfigError`` unless ``open_store`` can open the URL (settings validate with it)."""
    if is_postgres_url(url):
        from dispatcher.store.postgres import check_url

        check_url(url)
    else:
        sqlite_path(url)


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` and ``sqlite:////abs/path.db`` and bare paths → file path."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ConfigError(f"DISPATCHER_STORE: expected sqlite:///path, got {url!r}")
        return rest[1:]
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"DISPATCHER_STORE: unsupported store scheme {scheme!r} "
            "(supported: sqlite, postgresql, postgres)"
        )
    return url
