"""The registry store seam: the ``RegistryStore`` Protocol and ``open_store(url)``.

Example::

    async with open_store("sqlite:///var/lib/dispatcher/registry.db") as store:
        await store.ensure_namespaces([NamespaceName("dotdo-production")])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

from dispatcher.errors import ConfigError
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, Target


class RegistryStore(Protocol):
    """Persistence of namespaces, their current workers and the deployment history.

    Every write is one transaction and bumps the store-wide revision by one.
    """

    async def revision(self) -> int:
        """The current revision; goes up by one with every committed change."""
        ...

    async def ensure_namespaces(self, names: Iterable[NamespaceName]) -> None:
        """Create the namespaces that do not exist yet (one revision bump if any was created)."""
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
    ) -> Deployment:
        """Make ``target`` the current version of ``worker``; returns the new record."""
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


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[RegistryStore]:
    """Open the store a URL names (``sqlite:///path``, or a bare file path) and close it after."""
    from dispatcher.store.sqlite import SQLiteStore

    path = sqlite_path(url)
    store = await SQLiteStore.open(path)
    try:
        yield store
    finally:
        await store.close()


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
            f"DISPATCHER_STORE: unsupported store scheme {scheme!r} (supported: sqlite)"
        )
    return url
