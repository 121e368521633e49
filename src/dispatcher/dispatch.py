"""``Dispatcher``: resolve → lookup → forward, and the seed's error bodies. The hot path.

Per request it reads one immutable ``Snapshot`` (swapped whole by the ``SnapshotWatcher``):
a dict lookup or three to resolve, one to look the worker up, then the worker's forwarder
runs in a task. Errors are answered at once, without a task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dispatcher.errors import (
    NamespaceMissing,
    Overloaded,
    RequestError,
    ServiceNotFound,
    WorkerNotDeployed,
)
from dispatcher.http import BodyStream, RequestHead, ResponseWriter
from dispatcher.namespaces import Snapshot

if TYPE_CHECKING:
    from dispatcher.settings import RoutePattern

logger = logging.getLogger("dispatcher.dispatch")

HEALTH_PATH = "/health"


class Dispatcher:
    """Handles routed requests for one environment; ``snapshot`` is replaced, never mutated."""

    __slots__ = ("snapshot", "_own_hosts", "_accept_patterns")

    def reconfigure(
        self,
        snapshot: Snapshot,
        own_hosts: frozenset[str],
        accept_patterns: tuple[RoutePattern, ...],
    ) -> None:
        """Swap the snapshot and the host rules together (a reload): no await between them,
        so no request sees one without the other."""
        self.snapshot = snapshot
        self._own_hosts = own_hosts
        self._accept_patterns = accept_patterns

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        own_hosts: frozenset[str],
        accept_patterns: tuple[RoutePattern, ...] = (),
    ) -> None:
        self.snapshot = snapshot
        self._own_hosts = own_hosts
        self._accept_patterns = accept_patterns

    def handle(
        self, head: RequestHead, body: BodyStream, exchange: ResponseWriter
    ) -> Coroutine[Any, Any, None] | None:
        """Answer at once (health, errors) or return the coroutine that forwards."""
        snapshot = self.snapshot
        if head.path == HEALTH_PATH and head.host in self._own_hosts:
            self._answer_health(snapshot, exchange)
            return None
        match = snapshot.routes.resolve(head.host, head.path)
        if match is None or (self._accept_patterns and not self._is_accepted(head)):
            services = snapshot.routes.services
            exchange.fail(ServiceNotFound(head.host, head.path, services))
            return None
        head.route = match
        namespace = snapshot.namespace
        if namespace is None:
            # Logged with the request's context by the observer, like every error.
            exchange.fail(NamespaceMissing(snapshot.environment))
            return None
        worker = namespace.workers.get(match.worker)
        if worker is None:
            exchange.fail(WorkerNotDeployed(match.worker, snapshot.environment))
            return None
        return worker.forwarder.forward(worker, head, body, exchange)

    def handle_error(self, error: RequestError, exchange: ResponseWriter) -> None:
        """A request the connection could not parse or finish: answer its status and close."""
        exchange.fail(error)

    def refuse(self, head: RequestHead, exchange: ResponseWriter) -> None:
        """Over the in-flight limit: health checks are still answered (a load balancer must
        not take a busy process for a dead one); anything else is a fast 503."""
        snapshot = self.snapshot
        if head.path == HEALTH_PATH and head.host in self._own_hosts:
            self._answer_health(snapshot, exchange)
        else:
            head.route = snapshot.routes.resolve(head.host, head.path)  # to count it by service
            exchange.fail(Overloaded("too many requests in flight; retry shortly"))

    def _is_accepted(self, head: RequestHead) -> bool:
        return any(p.matches(head.host, head.path) for p in self._accept_patterns)

    def _answer_health(self, snapshot: Snapshot, exchange: ResponseWriter) -> None:
        namespace = snapshot.namespace
        fields: dict[str, Any] = {
            "status": "ok" if namespace is not None else "degraded",
            "environment": snapshot.environment,
            "namespace": snapshot.namespace_name,
            "workers": len(namespace.workers) if namespace is not None else 0,
            "revision": snapshot.revision,
        }
        if namespace is None:
            fields["reason"] = f"Namespace not found for environment: {snapshot.environment}"
        exchange.send_error(200 if namespace is not None else 503, json.dumps(fields).encode())
