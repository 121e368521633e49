"""Route rules as data, compiled once into hash indexes; ``resolve(host, path)`` is pure.

Example::

    table = RouteTable.from_config(RoutingConfig())
    table.resolve("api.do", "/api/db/query").worker   # 'db'
    table.resolve("v2.gateway.do", "/").worker         # 'gateway-v2'

Precedence, highest first (documented in docs/configuration.md):

1. ``host``: an exact host (``<service>.<zone>`` and every alias);
2. ``subdomain``: one label in front of a service host (``v2.gateway.do`` → ``gateway-v2``);
3. ``path``: a segment-bounded path prefix (``/api/db`` matches ``/api/db`` and ``/api/db/…``,
   never ``/api/dbx``), rules bound to the request's host before rules for any host, the
   longest prefix first;
4. ``default``: a host whose remaining traffic goes to one service (``api.do`` → gateway).

Hosts and paths given to ``resolve`` must already be canonical (see ``normalize``): the
protocol computes them once per request. Resolution costs a few dict lookups whatever the
number of services or aliases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, cast

from dispatcher.errors import ConfigError
from dispatcher.types import ServiceName, WorkerName

ANY_HOST: Final = "*"

SEED_SERVICES: Final = (
    "gateway",
    "db",
    "auth",
    "schedule",
    "webhooks",
    "email",
    "mcp",
    "queue",
)
SEED_PATH_SERVICES: Final = ("db", "auth", "schedule")


class RuleKind(StrEnum):
    """The four kinds of rule, in precedence order."""

    HOST = "host"
    SUBDOMAIN = "subdomain"
    PATH = "path"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule: where it applies (``host``, ``path_prefix``) and which service it names.

    ``source`` says where the rule came from in the configuration, so that a conflict can
    name both sides.
    """

    kind: RuleKind
    service: ServiceName
    host: str = ANY_HOST
    path_prefix: str = "/"
    source: str = ""

    def describe(self) -> str:
        """A one-line human form, as ``dispatcher routes`` prints it."""
        if self.kind is RuleKind.HOST:
            return f"host {self.host}"
        if self.kind is RuleKind.SUBDOMAIN:
            return f"subdomain <version>.{self.host}"
        if self.kind is RuleKind.PATH:
            where = "any host" if self.host == ANY_HOST else self.host
            return f"path {self.path_prefix} and {self.path_prefix}/... on {where}"
        return f"default for host {self.host}"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The result of ``resolve``: the rule that matched, its service and the worker name."""

    route: Route
    service: ServiceName
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The routing section of the configuration; the defaults are the seed's table."""

    zone: str = "do"
    services: tuple[ServiceName, ...] = tuple(ServiceName(s) for s in SEED_SERVICES)
    path_base: str = "/api"
    path_services: tuple[ServiceName, ...] = tuple(ServiceName(s) for s in SEED_PATH_SERVICES)
    default_hosts: tuple[str, ...] = ("do", "api.do")
    default_service: ServiceName | None = ServiceName("gateway")
    aliases: Mapping[str, ServiceName] = field(default_factory=lambda: MappingProxyType({}))
    paths: Mapping[str, ServiceName] = field(default_factory=lambda: MappingProxyType({}))
    versioned_subdomains: bool = True

    def routes(self) -> list[Route]:
        """Expand this configuration into the list of rules it means."""
        routes = [
            Route(RuleKind.HOST, s, f"{s}.{self.zone}", source=f"routing.services[{s!r}]")
            for s in self.services
        ]
        routes += [
            Route(RuleKind.HOST, s, h, source=f"routing.aliases[{h!r}]")
            for h, s in self.aliases.items()
        ]
        if self.versioned_subdomains:
            routes += [
                Route(
                    RuleKind.SUBDOMAIN, s, f"{s}.{self.zone}", source="routing.versioned_subdomains"
                )
                for s in self.services
            ]
        base = self.path_base.rstrip("/")
        routes += [
            Route(
                RuleKind.PATH, s, path_prefix=f"{base}/{s}", source=f"routing.path_services[{s!r}]"
            )
            for s in self.path_services
        ]
        routes += [
            Route(RuleKind.PATH, s, path_prefix=p, source=f"routing.paths[{p!r}]")
            for p, s in self.paths.items()
        ]
        if self.default_service is not None:
            routes += [
                Route(RuleKind.DEFAULT, self.default_service, h, source="routing.default_hosts")
                for h in self.default_hosts
            ]
        return routes


_PathIndex = tuple[tuple[int, dict[str, RouteMatch]], ...]
_VERSIONED_MEMO_SIZE: Final = 4096
_UNSEEN: Final = object()


class RouteTable:
    """The compiled, immutable route table.

    Duplicate claims (one host twice, one prefix twice on the same hosts) raise
    ``ConfigError`` naming both rules.
    """

    __slots__ = (
        "routes",
        "services",
        "_exact",
        "_subdomains",
        "_versioned",
        "_paths",
        "_any_paths",
        "_defaults",
    )

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self.services: tuple[ServiceName, ...] = tuple(
            dict.fromkeys(r.service for r in self.routes)
        )
        by_kind = _index_by_claim(self.routes)
        self._exact = _matches(by_kind[RuleKind.HOST])
        self._subdomains = {host: r for (host, _), r in by_kind[RuleKind.SUBDOMAIN].items()}
        # Memo of hosts looked up as versioned subdomains (``v2.gateway.do``), misses
        # included, so that a repeated host costs one dict lookup and allocates nothing.
        self._versioned: dict[str, RouteMatch | None] = {}
        self._defaults = _matches(by_kind[RuleKind.DEFAULT])
        self._paths, self._any_paths = _path_indexes(by_kind[RuleKind.PATH])

    @classmethod
    def from_config(cls, config: RoutingConfig) -> RouteTable:
        """Compile the rules a ``RoutingConfig`` describes."""
        return cls(config.routes())

    def __repr__(self) -> str:
        return f"<RouteTable {len(self.routes)} routes, {len(self.services)} services>"

    def resolve(self, host: str, path: str) -> RouteMatch | None:
        """Map a canonical host and path to the matching rule, or ``None``."""
        match = self._exact.get(host)
        if match is not None:
            return match
        if self._subdomains:
            memo: object = self._versioned.get(host, _UNSEEN)
            if memo is _UNSEEN:
                match = self._resolve_versioned(host)
            else:
                match = cast("RouteMatch | None", memo)
            if match is not None:
                return match
        if self._paths:
            per_host = self._paths.get(host)
            if per_host is not None:
                match = _match_prefix(per_host, path)
                if match is not None:
                    return match
        if self._any_paths:
            match = _match_prefix(self._any_paths, path)
            if match is not None:
                return match
        return self._defaults.get(host)

    def _resolve_versioned(self, host: str) -> RouteMatch | None:
        dot = host.find(".")
        route = self._subdomains.get(host[dot + 1 :]) if dot > 0 else None
        match = None
        if route is not None:
            match = RouteMatch(route, route.service, WorkerName(f"{route.service}-{host[:dot]}"))
        if len(self._versioned) >= _VERSIONED_MEMO_SIZE:
            self._versioned.clear()
        self._versioned[host] = match
        return match


def _index_by_claim(routes: Iterable[Route]) -> dict[RuleKind, dict[tuple[str, str], Route]]:
    """Group rules by kind and claim (host, prefix); a second claim is a ConfigError."""
    by_kind: dict[RuleKind, dict[tuple[str, str], Route]] = {kind: {} for kind in RuleKind}
    claimed_hosts: dict[str, Route] = {}
    for route in routes:
        _validate_route(route)
        claim = (route.host, route.path_prefix)
        previous = by_kind[route.kind].get(claim)
        if route.kind in (RuleKind.HOST, RuleKind.DEFAULT):
            previous = claimed_hosts.get(route.host)
            claimed_hosts[route.host] = route
        if previous is not None:
            raise ConfigError(
                f"duplicate route: {route.describe()} ({route.source}) is already claimed by "
                f"{previous.describe()} -> {previous.service} ({previous.source})"
            )
        by_kind[route.kind][claim] = route
    return by_kind


def _validate_route(route: Route) -> None:
    if not route.service:
        raise ConfigError(f"route {route.describe()} ({route.source}) names no service")
    if route.kind is RuleKind.PATH:
        prefix = route.path_prefix
        if not prefix.startswith("/") or prefix == "/" or prefix.endswith("/") or "//" in prefix:
            raise ConfigError(
                f"path prefix {prefix!r} ({route.source}) must start with '/', name at least "
                "one segment and not end with '/'"
            )
    elif route.host == ANY_HOST or not route.host:
        raise ConfigError(f"{route.kind} rule ({route.source}) needs a host")


def _matches(claims: Mapping[tuple[str, str], Route]) -> dict[str, RouteMatch]:
    """Precompute one RouteMatch per host so that a hit allocates nothing."""
    return {
        host: RouteMatch(r, r.service, WorkerName(r.service)) for (host, _), r in claims.items()
    }


def _path_indexes(
    claims: Mapping[tuple[str, str], Route],
) -> tuple[dict[str, _PathIndex], _PathIndex]:
    """Per host, prefixes grouped by segment count, deepest first; ``*`` rules kept apart."""
    grouped: dict[str, dict[int, dict[str, RouteMatch]]] = {}
    for (host, prefix), route in claims.items():
        depth = prefix.count("/")
        match = RouteMatch(route, route.service, WorkerName(route.service))
        grouped.setdefault(host, {}).setdefault(depth, {})[prefix] = match
    indexes = {
        host: tuple(sorted(levels.items(), reverse=True)) for host, levels in grouped.items()
    }
    any_host = indexes.pop(ANY_HOST, ())
    return indexes, any_host


def _match_prefix(index: _PathIndex, path: str) -> RouteMatch | None:
    """Cut ``path`` after ``depth`` segments for each indexed depth and look the cut up."""
    for depth, prefixes in index:
        head = _first_segments(path, depth)
        if head is not None:
            match = prefixes.get(head)
            if match is not None:
                return match
    return None


def _first_segments(path: str, depth: int) -> str | None:
    """``/a/b/c`` cut to 2 segments is ``/a/b``; ``None`` when the path has fewer segments."""
    parts = path.split("/", depth + 1)
    if len(parts) <= depth:
        return None
    return "/".join(parts[: depth + 1])
