"""What the hot path reads: an immutable ``Snapshot`` of routes and the environment's namespace.

Example::

    worker = snapshot.namespace.lookup(WorkerName("gateway"))   # Worker | None
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.routing import RouteTable
from dispatcher.types import EnvironmentName, NamespaceName, WorkerName
from dispatcher.workers import Deployment

if TYPE_CHECKING:
    from dispatcher.forwarding import Forwarder


@dataclass(frozen=True, slots=True)
class Worker:
    """A deployment made ready to serve: the record plus the forwarder that reaches it."""

    name: WorkerName
    deployment: Deployment
    forwarder: Forwarder
    environment: EnvironmentName


@dataclass(frozen=True, slots=True)
class Namespace:
    """The deployed workers of one environment (the seed's dispatch namespace)."""

    name: NamespaceName
    environment: EnvironmentName
    workers: Mapping[WorkerName, Worker]

    def lookup(self, worker: WorkerName) -> Worker | None:
        """The worker of that name, or ``None`` when it is not deployed here."""
        return self.workers.get(worker)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs, replaced whole when the registry or the config changes.

    ``namespace`` is ``None`` when the environment's namespace is missing from the store:
    every routed request then gets the seed's 500 "Configuration error".
    """

    revision: int
    routes: RouteTable
    environment: EnvironmentName
    namespace_name: NamespaceName
    namespace: Namespace | None
