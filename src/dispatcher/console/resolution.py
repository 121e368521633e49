"""``explain(url, ...)``: where a URL would go, step by step as the ``Dispatcher`` decides it
(own health check, route table, route patterns, namespace, worker), with the deployment
that would answer. The console's "where does this go" box; the same steps as
``dispatcher resolve``, plus what the registry holds.

Example::

    found = await explain("https://api.do/api/db/query", settings, store, "production")
    found.outcome, found.match.worker, found.deployment.version   # 'routed', 'db', 3
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from dispatcher.dispatch import HEALTH_PATH
from dispatcher.errors import BadRequest
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RouteMatch
from dispatcher.settings import Settings
from dispatcher.store import RegistryStore
from dispatcher.types import NamespaceName
from dispatcher.workers import Deployment

MAX_URL_LENGTH: Final = 2048


class Outcome(StrEnum):
    """What the dispatcher would do with the request."""

    ROUTED = "routed"
    HEALTH = "health"
    BAD_REQUEST = "bad_request"
    SERVICE_NOT_FOUND = "service_not_found"
    NAMESPACE_MISSING = "namespace_missing"
    NOT_DEPLOYED = "not_deployed"


@dataclass(frozen=True, slots=True)
class Explanation:
    """The answer of ``explain``: the canonical host and path, the rule that matched, and
    the deployment that would serve it (``outcome`` says how far it got)."""

    url: str
    environment: str
    namespace: NamespaceName
    outcome: Outcome
    status: int
    message: str
    host: str = ""
    path: str = ""
    normalized: bool = False
    match: RouteMatch | None = None
    deployment: Deployment | None = None

    @property
    def is_routed(self) -> bool:
        return self.outcome is Outcome.ROUTED


@dataclass(frozen=True, slots=True)
class _Located:
    host: str
    path: str
    normalized: bool


async def explain(
    url: str, settings: Settings, store: RegistryStore, environment: str
) -> Explanation:
    """Explain ``url`` (``https://host/path``, or ``host/path`` without a scheme) in
    ``environment``, one of the configured environments."""
    namespace = settings.bindings[environment.upper()]
    start = Explanation(url, environment, namespace, Outcome.BAD_REQUEST, 400, "")
    try:
        located = _locate(url)
    except BadRequest as exc:
        return replace(start, message=f"rejected with 400: {exc.message}")
    found = replace(start, host=located.host, path=located.path, normalized=located.normalized)
    if located.path == HEALTH_PATH and located.host in settings.own_hosts:
        return _ends(found, Outcome.HEALTH, 200, "the dispatcher's own health check")
    match = settings.routes.resolve(located.host, located.path)
    if match is None or not _is_accepted(settings, located):
        reason = "no route matches" if match is None else "outside every route pattern"
        return _ends(found, Outcome.SERVICE_NOT_FOUND, 404, f"Service not found: {reason}")
    found = replace(found, match=match)
    loaded = await store.load_namespace(namespace)
    if loaded is None:
        message = f'Configuration error: namespace "{namespace}" is missing from the registry'
        return _ends(found, Outcome.NAMESPACE_MISSING, 500, message)
    deployment = next((d for d in loaded[1] if d.worker == match.worker), None)
    if deployment is None:
        message = f'Service not deployed: no worker "{match.worker}" in {namespace}'
        return _ends(found, Outcome.NOT_DEPLOYED, 404, message)
    message = f"routed to {match.worker} version {deployment.version}"
    return replace(_ends(found, Outcome.ROUTED, 0, message), deployment=deployment)


def _ends(found: Explanation, outcome: Outcome, status: int, message: str) -> Explanation:
    return replace(found, outcome=outcome, status=status, message=message)


def _locate(url: str) -> _Located:
    """The canonical host and path the protocol would compute; ``BadRequest`` as it would."""
    text = url.strip()
    if not text or len(text) > MAX_URL_LENGTH:
        raise BadRequest(f"give a URL of 1 to {MAX_URL_LENGTH} characters")
    parts = urlsplit(text if "://" in text else f"http://{text}")
    raw_path = parts.path or "/"
    path = normalize_path(raw_path)
    host = normalize_host(parts.netloc.rpartition("@")[2])
    return _Located(host, path, path != raw_path)


def _is_accepted(settings: Settings, located: _Located) -> bool:
    if not settings.enforce_route_patterns:
        return True
    return any(p.matches(located.host, located.path) for p in settings.route_patterns)
