"""The registry store seam: the ``RegistryStore`` Protocol and ``open_store(url)``.

Example::

    # or open_store("postgresql://dispatcher@db.internal/registry")
    async with open_store("sqlite:///var/lib/dispatcher/registry.db") as store:
        await store.ensure_namespaces([NamespaceName("dotdo-production")])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Protocol

from dispatcher.errors import ConfigError
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, Target

if TYPE_CHECKING:
    from dispatcher.store.sqlite import AuditEntry


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

    async def delete_namespace(self, name: NamespaceName, *, force: bool = False) -> None:
        """Remove a namespace; ``NamespaceNotEmpty`` unless it is empty or ``force``."""
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

    async def undeploy(self, namespace: NamespaceName, worker: WorkerName, *, actor: str) -> None:
        """Remove the worker from the namespace; ``WorkerNotFound`` if it is not there."""
        ...

    async def load_namespace(self, namespace: NamespaceName) -> tuple[int, list[Deployment]] | None:
        """The revision and the current deployments, or ``None`` if the namespace is missing."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...


DEFAULT_STORE_URL = "sqlite:///.dispatcher/registry.db"


POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
"""URL prefixes that name a PostgreSQL database (libpq accepts both)."""


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[RegistryStore]:
    """Open the store a URL names and close it after.

    ``postgresql://`` and ``postgres://`` open a ``PostgresStore``; ``sqlite:///path`` or a bare
    file path open a ``SQLiteStore``. Each backend is imported only when it is used.
    """
    store = await _open(url)
    try:
        yield store
    finally:
        await store.close()


async def _open(url: str) -> RegistryStore:
    if is_postgres_url(url):
        from dispatcher.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    from dispatcher.store.sqlite import SQLiteStore

    return await SQLiteStore.open(sqlite_path(url))


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
