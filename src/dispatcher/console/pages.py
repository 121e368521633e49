"""``Pages``: the console's read-only pages (overview, routes, namespaces, history) and the
live figures they poll. Every read goes through the credential of the session: a token
limited to some namespaces sees only those.

Example::

    pages = Pages(renderer, store, replicas, settings, live)
    response = await pages.history(request, session)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from dispatcher.admin import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT
from dispatcher.auth import Credential
from dispatcher.console.live import LiveMetrics
from dispatcher.console.render import Renderer
from dispatcher.console.resolution import explain
from dispatcher.console.sessions import Session
from dispatcher.console.web import Request, Response
from dispatcher.errors import ConfigError, StoreError
from dispatcher.replicas import Replicas
from dispatcher.routing import Route, RuleKind
from dispatcher.settings import Settings
from dispatcher.store import AuditEntry, RegistryStore, Replica
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, validate_name

HISTORY_LIMITS: Final = (50, 200, MAX_HISTORY_LIMIT)


@dataclass(frozen=True, slots=True)
class NamespaceView:
    """A namespace as the namespaces page shows it."""

    name: NamespaceName
    environment: str | None
    serving: bool
    deployments: Sequence[Deployment]


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One rule of the route table, with what the served namespace holds for it."""

    number: int
    route: Route
    worker: str
    deployed: Sequence[Deployment]


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """A replica sharing the store, and whether it serves the registry's revision."""

    replica: Replica
    is_this_one: bool
    has_applied: bool


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """The history page's filters, as given (``problem`` says which one is invalid)."""

    namespace: NamespaceName | None
    worker: WorkerName | None
    actor: str | None
    limit: int
    problem: str | None = None


class Pages:
    """Renders the read-only pages; ``live`` answers the JSON the charts poll."""

    __slots__ = ("_renderer", "_store", "_replicas", "_settings", "_live")

    def __init__(
        self,
        renderer: Renderer,
        store: RegistryStore,
        replicas: Replicas,
        settings: Settings,
        live: LiveMetrics,
    ) -> None:
        self._renderer = renderer
        self._store = store
        self._replicas = replicas
        self._settings = settings
        self._live = live

    def __repr__(self) -> str:
        return f"<Pages {self._settings.environment}>"

    # --- overview ----------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        readiness = await self._replicas.readiness()
        registry: int | None = None
        if readiness.store_reachable:
            try:
                registry = await self._store.revision()
            except StoreError:
                registry = None
        target = registry if registry is not None else readiness.revision
        rows = [
            ReplicaRow(r, r.id == readiness.replica, r.revision >= target)
            for r in readiness.replicas
        ]
        return self._renderer.page(
            "overview.html",
            session,
            page="overview",
            title="Overview",
            readiness=readiness,
            registry_revision=registry,
            replicas=rows,
            applied=sum(1 for row in rows if row.has_applied),
        )

    def live(self, request: Request, session: Session) -> Response:
        report = self._live.report()
        if not session.credential.reaches(self._settings.namespace):
            report["workers"] = {}  # per-worker traffic belongs to a namespace it cannot see
        return Response.json(200, report)

    # --- routes ------------------------------------------------------------------------------

    async def routes(self, request: Request, session: Session) -> Response:
        credential = session.credential
        url = request.query.get("url", "").strip()
        environment = request.query.get("environment", self._settings.environment)
        if environment not in self._settings.environments:
            environment = self._settings.environment
        explanation, problem = None, None
        if url:
            namespace = self._settings.bindings[environment.upper()]
            if credential.reaches(namespace):
                explanation = await explain(url, self._settings, self._store, environment)
            else:
                problem = f'your token may not read namespace "{namespace}"'
        return self._renderer.page(
            "routes.html",
            session,
            page="routes",
            title="Routes",
            rows=await self._route_rows(credential),
            patterns=self._settings.route_patterns,
            enforced=self._settings.enforce_route_patterns,
            environments=self._settings.environments,
            url=url,
            environment=environment,
            explanation=explanation,
            problem=problem,
        )

    async def _route_rows(self, credential: Credential) -> list[RouteRow]:
        deployments: list[Deployment] = []
        if credential.reaches(self._settings.namespace):
            loaded = await self._store.load_namespace(self._settings.namespace)
            deployments = loaded[1] if loaded is not None else []
        order = list(RuleKind)
        routes = sorted(
            self._settings.routes.routes,
            key=lambda r: (order.index(r.kind), -len(r.path_prefix)),
        )
        return [
            RouteRow(number, route, *_served_by(route, deployments))
            for number, route in enumerate(routes, 1)
        ]

    # --- namespaces --------------------------------------------------------------------------

    async def namespaces(self, request: Request, session: Session) -> Response:
        views = [await self._namespace_view(n) for n in await self._visible(session.credential)]
        return self._renderer.page(
            "namespaces.html",
            session,
            page="namespaces",
            title="Namespaces and workers",
            namespaces=views,
        )

    async def _visible(self, credential: Credential) -> list[NamespaceName]:
        """The namespaces the credential reaches; the one this dispatcher serves first."""
        names = [n for n in await self._store.list_namespaces() if credential.reaches(n)]
        return sorted(names, key=lambda n: (n != self._settings.namespace, n))

    async def _namespace_view(self, namespace: NamespaceName) -> NamespaceView:
        loaded = await self._store.load_namespace(namespace)
        bound = {ns: binding.lower() for binding, ns in self._settings.bindings.items()}
        return NamespaceView(
            namespace,
            bound.get(namespace),
            namespace == self._settings.namespace,
            loaded[1] if loaded is not None else (),
        )

    # --- history -----------------------------------------------------------------------------

    async def history(self, request: Request, session: Session) -> Response:
        credential = session.credential
        visible = await self._visible(credential)
        chosen = history_filter(request, visible)
        entries: list[AuditEntry] = []
        if chosen.problem is None:
            entries = await self._history(credential, chosen)
        return self._renderer.page(
            "history.html",
            session,
            page="history",
            title="History",
            chosen=chosen,
            namespaces=visible,
            limits=HISTORY_LIMITS,
            entries=entries,
        )

    async def _history(self, credential: Credential, chosen: HistoryFilter) -> list[AuditEntry]:
        """The trail, newest first. The store filters by namespace and worker; the actor
        filter looks through the newest ``MAX_HISTORY_LIMIT`` entries of that selection."""
        fetch = MAX_HISTORY_LIMIT if chosen.actor else chosen.limit
        if chosen.namespace is not None:
            scopes: Iterable[NamespaceName | None] = (chosen.namespace,)
        elif credential.namespaces is None:
            scopes = (None,)
        else:
            scopes = sorted(credential.namespaces)
        entries: list[AuditEntry] = []
        for namespace in scopes:
            entries += await self._store.history(
                namespace=namespace, worker=chosen.worker, limit=fetch
            )
        entries.sort(key=lambda e: e.revision, reverse=True)
        if chosen.actor:
            entries = [e for e in entries if e.actor == chosen.actor]
        return entries[: chosen.limit]


def history_filter(request: Request, visible: Sequence[NamespaceName]) -> HistoryFilter:
    """The history filters of the query string; an invalid one is named in ``problem``."""
    query = request.query
    namespace = query.get("namespace") or None
    worker = query.get("worker", "").strip() or None
    actor = query.get("actor", "").strip() or None
    limit = _limit(query.get("limit"))
    chosen = HistoryFilter(None, None, actor, limit)
    if namespace is not None and namespace not in visible:
        return _with_problem(chosen, f'no namespace "{namespace}" that your token may read')
    if worker is not None:
        try:
            validate_name(worker, "worker name")
        except ConfigError as exc:
            return _with_problem(chosen, str(exc))
    return HistoryFilter(
        None if namespace is None else NamespaceName(namespace),
        None if worker is None else WorkerName(worker),
        actor,
        limit,
    )


def _with_problem(chosen: HistoryFilter, problem: str) -> HistoryFilter:
    return HistoryFilter(chosen.namespace, chosen.worker, chosen.actor, chosen.limit, problem)


def _limit(value: str | None) -> int:
    if value is not None and value.isdigit() and int(value) in HISTORY_LIMITS:
        return int(value)
    return DEFAULT_HISTORY_LIMIT


def _served_by(route: Route, deployments: Sequence[Deployment]) -> tuple[str, list[Deployment]]:
    """The worker a rule names and the deployments that serve it (the pinned versions, for a
    versioned subdomain rule)."""
    if route.kind is RuleKind.SUBDOMAIN:
        prefix = f"{route.service}-"
        return f"{route.service}-<version>", [d for d in deployments if d.worker.startswith(prefix)]
    worker = WorkerName(route.service)
    return worker, [d for d in deployments if d.worker == worker]
