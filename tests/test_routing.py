"""Routing: the seed's tables verbatim, config as data, precedence, conflicts and properties."""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import MappingProxyType
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import BadRequest, ConfigError, ServiceNotFound
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import (
    ANY_HOST,
    SEED_PATH_SERVICES,
    SEED_SERVICES,
    Route,
    RouteMatch,
    RouteTable,
    RoutingConfig,
    RuleKind,
)
from dispatcher.types import ServiceName

SEED_TABLE: Final = RouteTable.from_config(RoutingConfig())

HOST: Final = RuleKind.HOST
SUBDOMAIN: Final = RuleKind.SUBDOMAIN
PATH: Final = RuleKind.PATH
DEFAULT: Final = RuleKind.DEFAULT

Outcome = tuple[RuleKind, str, str] | None
"""What a resolve yields, flattened for comparison: (rule kind, service, worker name)."""


def outcome(match: RouteMatch | None) -> Outcome:
    return None if match is None else (match.route.kind, match.service, match.worker)


def services(*names: str) -> tuple[ServiceName, ...]:
    return tuple(ServiceName(name) for name in names)


def mapping(pairs: dict[str, str]) -> MappingProxyType[str, ServiceName]:
    return MappingProxyType({key: ServiceName(value) for key, value in pairs.items()})


def table_of(routes: Iterable[Route]) -> RouteTable:
    return RouteTable(routes)


def path_rule(prefix: str, service: str, host: str = ANY_HOST, source: str = "") -> Route:
    return Route(PATH, ServiceName(service), host, prefix, source or f"test[{prefix!r}]")


# --- The seed's tables, verbatim -------------------------------------------------------------

SEED_SUBDOMAIN_ROWS: Final = [
    ("gateway.do", "/health", "gateway"),
    ("db.do", "/query", "db"),
    ("auth.do", "/login", "auth"),
    ("schedule.do", "/jobs", "schedule"),
    ("webhooks.do", "/stripe", "webhooks"),
    ("email.do", "/send", "email"),
    ("mcp.do", "/tools", "mcp"),
    ("queue.do", "/messages", "queue"),
]


@pytest.mark.parametrize(("host", "path", "service"), SEED_SUBDOMAIN_ROWS)
def test_seed_subdomain_table(host: str, path: str, service: str) -> None:
    # The seed calls these "subdomain" routes; in our rule kinds an exact service host is HOST.
    assert outcome(SEED_TABLE.resolve(host, path)) == (HOST, service, service)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.do", "/api/db/query", (PATH, "db", "db")),
        ("api.do", "/api/auth/login", (PATH, "auth", "auth")),
        ("api.do", "/api/schedule/jobs", (PATH, "schedule", "schedule")),
        ("api.do", "/api/db", (PATH, "db", "db")),
        ("api.do", "/api/db/", (PATH, "db", "db")),
        # Partial segments are not prefixes: these fall through to api.do's default.
        ("api.do", "/api/dbx/x", (DEFAULT, "gateway", "gateway")),
        ("api.do", "/api/notdb/x", (DEFAULT, "gateway", "gateway")),
        ("api.do", "/api", (DEFAULT, "gateway", "gateway")),
        ("api.do", "/api/", (DEFAULT, "gateway", "gateway")),
        ("api.do", "/apiary/db", (DEFAULT, "gateway", "gateway")),
        # ...and on a host without a default, to nothing.
        ("unknown.do", "/api/dbx/x", None),
        ("unknown.do", "/api/notdb/x", None),
        # Path rules of the seed apply on any host.
        ("unknown.do", "/api/db/query", (PATH, "db", "db")),
        ("do", "/api/auth/login", (PATH, "auth", "auth")),
    ],
)
def test_seed_path_table(host: str, path: str, expected: Outcome) -> None:
    assert outcome(SEED_TABLE.resolve(host, path)) == expected


@pytest.mark.parametrize(("host", "path"), [("do", "/"), ("api.do", "/"), ("api.do", "/x/y")])
def test_seed_default_table(host: str, path: str) -> None:
    assert outcome(SEED_TABLE.resolve(host, path)) == (DEFAULT, "gateway", "gateway")


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("unknown.do", "/test"),
        ("a.b.gateway.do", "/"),
        (".gateway.do", "/"),  # an empty label is not a version
        ("gateway.do.evil", "/"),
        ("gateway", "/"),
        ("nope.example", "/"),
        ("v2.database.do", "/"),  # no alias configured, and aliases get no versions anyway
        ("", "/"),
    ],
)
def test_seed_misses(host: str, path: str) -> None:
    assert SEED_TABLE.resolve(host, path) is None


@pytest.mark.parametrize(
    ("host", "service", "worker"),
    [
        ("v2.gateway.do", "gateway", "gateway-v2"),
        ("v10.db.do", "db", "db-v10"),
        ("canary.queue.do", "queue", "queue-canary"),
        ("gateway.gateway.do", "gateway", "gateway-gateway"),
    ],
)
def test_versioned_subdomain(host: str, service: str, worker: str) -> None:
    assert outcome(SEED_TABLE.resolve(host, "/")) == (SUBDOMAIN, service, worker)


def test_match_carries_the_rule_that_matched() -> None:
    match = SEED_TABLE.resolve("api.do", "/api/db/query")
    assert match is not None
    assert match.route == Route(
        PATH, ServiceName("db"), ANY_HOST, "/api/db", "routing.path_services['db']"
    )


def test_seed_services_feed_available_services() -> None:
    assert SEED_TABLE.services == SEED_SERVICES
    error = ServiceNotFound("unknown.do", "/test", SEED_TABLE.services)
    assert error.status == 404
    assert error.fields() == {
        "error": "Service not found",
        "message": "No worker found for unknown.do/test",
        "available_services": [
            "gateway",
            "db",
            "auth",
            "schedule",
            "webhooks",
            "email",
            "mcp",
            "queue",
        ],
        "code": "service_not_found",
    }


def test_seed_table_repr() -> None:
    # 8 hosts + 8 versioned subdomains + 3 path rules + 2 defaults.
    assert repr(SEED_TABLE) == "<RouteTable 21 routes, 8 services>"


# --- Configuration as data -------------------------------------------------------------------

BILLING_CONFIG: Final = RoutingConfig(
    services=(*RoutingConfig().services, ServiceName("billing")),
    aliases=mapping({"database.do": "db", "pay.example.com": "billing"}),
    paths=mapping({"/v1/billing": "billing", "/v1/billing/admin": "auth"}),
)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("database.do", "/q", (HOST, "db", "db")),
        ("pay.example.com", "/", (HOST, "billing", "billing")),
        ("billing.do", "/", (HOST, "billing", "billing")),
        ("v3.billing.do", "/", (SUBDOMAIN, "billing", "billing-v3")),
        ("api.do", "/v1/billing", (PATH, "billing", "billing")),
        ("api.do", "/v1/billing/invoices/42", (PATH, "billing", "billing")),
        ("unknown.do", "/v1/billing/invoices/42", (PATH, "billing", "billing")),
        ("api.do", "/v1/billing/admin/users", (PATH, "auth", "auth")),
        ("api.do", "/v1/billing/administrators", (PATH, "billing", "billing")),
        ("api.do", "/v1/billingx", (DEFAULT, "gateway", "gateway")),
        ("api.do", "/v1", (DEFAULT, "gateway", "gateway")),
        ("unknown.do", "/v1/billingx", None),
        ("api.do", "/api/db/x", (PATH, "db", "db")),
    ],
)
def test_config_aliases_paths_and_new_service(host: str, path: str, expected: Outcome) -> None:
    table = RouteTable.from_config(BILLING_CONFIG)
    assert outcome(table.resolve(host, path)) == expected


def test_new_services_are_listed_after_the_configured_ones() -> None:
    table = RouteTable.from_config(
        RoutingConfig(
            services=services("db", "auth"),
            aliases=mapping({"x.example": "extra"}),
            path_services=services("db"),
            default_service=ServiceName("front"),
        )
    )
    assert table.services == ("db", "auth", "extra", "front")


@pytest.mark.parametrize(
    ("config", "host", "path", "expected"),
    [
        (RoutingConfig(zone="example.com"), "db.example.com", "/", (HOST, "db", "db")),
        (RoutingConfig(zone="example.com"), "v2.db.example.com", "/", (SUBDOMAIN, "db", "db-v2")),
        (RoutingConfig(zone="example.com"), "db.do", "/", None),
        (RoutingConfig(path_base="/svc"), "unknown.do", "/svc/auth/x", (PATH, "auth", "auth")),
        (RoutingConfig(path_base="/svc"), "unknown.do", "/api/auth/x", None),
        (RoutingConfig(path_base="/api/"), "unknown.do", "/api/auth/x", (PATH, "auth", "auth")),
        (RoutingConfig(path_base="/"), "unknown.do", "/auth/x", (PATH, "auth", "auth")),
        (RoutingConfig(versioned_subdomains=False), "v2.gateway.do", "/", None),
        (RoutingConfig(default_service=None), "api.do", "/", None),
        (RoutingConfig(default_service=ServiceName("db")), "do", "/", (DEFAULT, "db", "db")),
        (RoutingConfig(path_services=()), "api.do", "/api/db/x", (DEFAULT, "gateway", "gateway")),
    ],
)
def test_config_knobs(config: RoutingConfig, host: str, path: str, expected: Outcome) -> None:
    assert outcome(RouteTable.from_config(config).resolve(host, path)) == expected


# --- Precedence: exact host > subdomain > path > default ------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # exact host beats a path rule that would match
        ("gateway.do", "/api/db/x", (HOST, "gateway", "gateway")),
        # an alias that looks versioned is an exact host, and beats the subdomain rule
        ("v2.gateway.do", "/", (HOST, "db", "db")),
        # subdomain beats a path rule
        ("v3.gateway.do", "/api/db/x", (SUBDOMAIN, "gateway", "gateway-v3")),
        # path beats the default
        ("api.do", "/api/auth/x", (PATH, "auth", "auth")),
        ("api.do", "/health", (DEFAULT, "gateway", "gateway")),
    ],
)
def test_precedence_between_kinds(host: str, path: str, expected: Outcome) -> None:
    table = RouteTable.from_config(RoutingConfig(aliases=mapping({"v2.gateway.do": "db"})))
    assert outcome(table.resolve(host, path)) == expected


PRECEDENCE_ROUTES: Final = (
    path_rule("/v1", "one"),
    path_rule("/v1/billing", "two"),
    path_rule("/v1/billing/invoices", "three"),
    path_rule("/api", "bound-short", host="api.do"),
    path_rule("/api/db/admin", "bound-long", host="api.do"),
    path_rule("/api/db", "any-db"),
    Route(DEFAULT, ServiceName("gateway"), "api.do", source="test-default"),
)


@pytest.mark.parametrize(
    ("host", "path", "service"),
    [
        # longest prefix first, segment-bounded
        ("x.do", "/v1/billing/invoices/42", "three"),
        ("x.do", "/v1/billing/invoices", "three"),
        ("x.do", "/v1/billing/x", "two"),
        ("x.do", "/v1/billingx", "one"),
        ("x.do", "/v1", "one"),
        ("x.do", "/v1x", None),
        # rules bound to the request's host come before any-host rules, even shorter ones
        ("api.do", "/api/db/x", "bound-short"),
        ("api.do", "/api/db/admin/x", "bound-long"),
        ("api.do", "/api", "bound-short"),
        ("api.do", "/apix", "gateway"),
        ("other.do", "/api/db/x", "any-db"),
        ("other.do", "/api/db/admin/x", "any-db"),
        ("other.do", "/api/x", None),
        # the any-host rules still apply on a host that has bound rules
        ("api.do", "/v1/billing/x", "two"),
    ],
)
def test_path_precedence(host: str, path: str, service: str | None) -> None:
    match = table_of(PRECEDENCE_ROUTES).resolve(host, path)
    assert (None if match is None else match.service) == service


# --- Conflicts and invalid rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            [
                Route(HOST, ServiceName("db"), "x.do", source="first"),
                Route(HOST, ServiceName("auth"), "x.do", source="second"),
            ],
            "duplicate route: host x.do (second) is already claimed by host x.do -> db (first)",
        ),
        (
            [
                Route(DEFAULT, ServiceName("db"), "x.do", source="first"),
                Route(HOST, ServiceName("auth"), "x.do", source="second"),
            ],
            "duplicate route: host x.do (second) is already claimed by default for host x.do "
            "-> db (first)",
        ),
        (
            [
                path_rule("/a", "db", host="x.do", source="first"),
                path_rule("/a", "auth", host="x.do", source="second"),
            ],
            "duplicate route: path /a and /a/... on x.do (second) is already claimed by "
            "path /a and /a/... on x.do -> db (first)",
        ),
        (
            [
                Route(SUBDOMAIN, ServiceName("db"), "db.do", source="first"),
                Route(SUBDOMAIN, ServiceName("auth"), "db.do", source="second"),
            ],
            "duplicate route: subdomain <version>.db.do (second) is already "
            "claimed by subdomain <version>.db.do -> db (first)",
        ),
    ],
)
def test_conflicting_routes_name_both(routes: list[Route], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        table_of(routes)
    assert str(caught.value) == message


def test_same_prefix_on_different_hosts_is_no_conflict() -> None:
    table = table_of([path_rule("/a", "db", host="x.do"), path_rule("/a", "auth")])
    assert [outcome(table.resolve(h, "/a")) for h in ("x.do", "y.do")] == [
        (PATH, "db", "db"),
        (PATH, "auth", "auth"),
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            RoutingConfig(aliases=mapping({"gateway.do": "db"})),
            "duplicate route: host gateway.do (routing.aliases['gateway.do']) is already claimed "
            "by host gateway.do -> gateway (routing.services['gateway'])",
        ),
        (
            RoutingConfig(default_hosts=("do", "db.do")),
            "duplicate route: default for host db.do (routing.default_hosts) is already claimed "
            "by host db.do -> db (routing.services['db'])",
        ),
        (
            RoutingConfig(services=services("gateway", "api")),
            "duplicate route: default for host api.do (routing.default_hosts) is already claimed "
            "by host api.do -> api (routing.services['api'])",
        ),
        (
            RoutingConfig(default_hosts=("do", "do")),
            "duplicate route: default for host do (routing.default_hosts) is already claimed "
            "by default for host do -> gateway (routing.default_hosts)",
        ),
        (
            RoutingConfig(services=services("db", "db")),
            "duplicate route: host db.do (routing.services['db']) is already claimed "
            "by host db.do -> db (routing.services['db'])",
        ),
        (
            RoutingConfig(paths=mapping({"/api/db": "billing"})),
            "duplicate route: path /api/db and /api/db/... on any host (routing.paths['/api/db']) "
            "is already claimed by path /api/db and /api/db/... on any host -> db "
            "(routing.path_services['db'])",
        ),
        (
            RoutingConfig(path_services=services("db", "db")),
            "duplicate route: path /api/db and /api/db/... on any host "
            "(routing.path_services['db']) is already claimed by path /api/db and /api/db/... "
            "on any host -> db (routing.path_services['db'])",
        ),
    ],
)
def test_conflicting_config_names_both_sources(config: RoutingConfig, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RouteTable.from_config(config)
    assert str(caught.value) == message


@pytest.mark.parametrize("prefix", ["/", "api", "/a/", "/a//b", "", "api/db", "//a"])
def test_invalid_path_prefix(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RouteTable.from_config(RoutingConfig(paths=mapping({prefix: "db"})))
    assert str(caught.value) == (
        f"path prefix {prefix!r} (routing.paths[{prefix!r}]) must start with '/', name at least "
        "one segment and not end with '/'"
    )


def test_invalid_path_base() -> None:
    with pytest.raises(ConfigError) as caught:
        RouteTable.from_config(RoutingConfig(path_base="api"))
    assert str(caught.value).startswith("path prefix 'api/db' (routing.path_services['db'])")


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route(HOST, ServiceName(""), "x.do", source="s"), "route host x.do (s) names no service"),
        (Route(HOST, ServiceName("db"), source="s"), "host rule (s) needs a host"),
        (Route(HOST, ServiceName("db"), "", source="s"), "host rule (s) needs a host"),
        (Route(SUBDOMAIN, ServiceName("db"), source="s"), "subdomain rule (s) needs a host"),
        (Route(DEFAULT, ServiceName("db"), source="s"), "default rule (s) needs a host"),
    ],
)
def test_invalid_route(route: Route, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        table_of([route])
    assert str(caught.value) == message


# --- Properties ------------------------------------------------------------------------------

HOST_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789-_."
LABEL: Final = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)

# A table exercising every branch of resolve: host-bound and any-host path rules included.
RICH_TABLE: Final = RouteTable(
    [
        *RoutingConfig(aliases=mapping({"database.do": "db"})).routes(),
        *PRECEDENCE_ROUTES[:3],
        path_rule("/api", "bound", host="do"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    host=st.text(alphabet=HOST_ALPHABET, max_size=40),
    path=st.text(max_size=40).map(lambda tail: "/" + tail),
)
def test_resolve_never_raises(host: str, path: str) -> None:
    for table in (SEED_TABLE, RICH_TABLE):
        match = table.resolve(host, path)
        assert match is None or isinstance(match, RouteMatch)


@settings(max_examples=300, deadline=None)
@given(raw_host=st.text(max_size=40), raw_path=st.text(max_size=40))
def test_normalized_input_always_resolves(raw_host: str, raw_path: str) -> None:
    for normalize, raw in ((normalize_host, raw_host), (normalize_path, raw_path)):
        try:
            normalize(raw)
        except BadRequest as exc:
            assert exc.status == 400
    try:
        host, path = normalize_host(raw_host), normalize_path(raw_path)
    except BadRequest:
        return
    match = RICH_TABLE.resolve(host, path)
    assert match is None or isinstance(match, RouteMatch)


def mostly(vocabulary: list[str], other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Nine draws in ten from ``vocabulary``, so that generated inputs often match a rule."""
    return st.integers(0, 9).flatmap(lambda n: other if n == 0 else st.sampled_from(vocabulary))


VOCABULARY_LABEL: Final = mostly([*SEED_SERVICES, "api", "do", "v2", "database", "x"], LABEL)
VOCABULARY_HOST: Final = st.builds(
    lambda labels, in_zone: ".".join([*labels, "do"] if in_zone else labels),
    st.lists(VOCABULARY_LABEL, min_size=1, max_size=3),
    st.integers(0, 4).map(bool),
)
VOCABULARY_SEGMENT: Final = mostly(
    [*SEED_SERVICES, "api", "do", "dbx", "notdb", "v1", ""],
    st.from_regex(r"[A-Za-z0-9_~-]{1,8}", fullmatch=True),
)
VOCABULARY_PATH: Final = st.builds(
    lambda under_api, segments: "/" + "/".join(["api", *segments] if under_api else segments),
    st.booleans(),
    st.lists(VOCABULARY_SEGMENT, max_size=4),
)


@st.composite
def host_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A canonical host and a spelling of it: any case, maybe a trailing dot, maybe a port."""
    host = draw(VOCABULARY_HOST)
    cases = draw(st.lists(st.booleans(), min_size=len(host), max_size=len(host)))
    spelled = "".join(c.upper() if up else c for c, up in zip(host, cases, strict=True))
    if draw(st.booleans()):
        spelled += "."
    port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    return host, spelled if port is None else f"{spelled}:{port}"


@settings(max_examples=300, deadline=None)
@given(spelling=host_spellings(), path=VOCABULARY_PATH)
def test_host_spellings_resolve_identically(spelling: tuple[str, str], path: str) -> None:
    host, spelled = spelling
    assert normalize_host(spelled) == host
    assert SEED_TABLE.resolve(normalize_host(spelled), path) == SEED_TABLE.resolve(host, path)


SEED_PATH_PATTERN: Final = re.compile(r"^/api/([^/]+)(/|$)")


def reference_resolve(host: str, path: str) -> Outcome:
    """The seed's rules, written the slow and obvious way."""
    first, _, rest = host.partition(".")
    if first in SEED_SERVICES and rest == "do":
        return (HOST, first, first)
    labels = host.split(".")
    if len(labels) == 3 and labels[0] and labels[1] in SEED_SERVICES and labels[2] == "do":
        return (SUBDOMAIN, labels[1], f"{labels[1]}-{labels[0]}")
    found = SEED_PATH_PATTERN.match(path)
    if found is not None and found.group(1) in SEED_PATH_SERVICES:
        return (PATH, found.group(1), found.group(1))
    if host in ("do", "api.do"):
        return (DEFAULT, "gateway", "gateway")
    return None


@settings(max_examples=500, deadline=None)
@given(host=VOCABULARY_HOST, path=VOCABULARY_PATH)
def test_agrees_with_reference(host: str, path: str) -> None:
    assert outcome(SEED_TABLE.resolve(host, path)) == reference_resolve(host, path)


@pytest.mark.parametrize(
    ("host", "path"),
    [(row[0], row[1]) for row in SEED_SUBDOMAIN_ROWS]
    + [
        ("api.do", "/api/db/query"),
        ("api.do", "/api/dbx/x"),
        ("unknown.do", "/test"),
        ("v2.gateway.do", "/"),
        ("a.b.gateway.do", "/"),
        ("do", "/"),
    ],
)
def test_reference_agrees_on_seed_rows(host: str, path: str) -> None:
    # Guards the reference itself: it must say what the tables above say.
    assert reference_resolve(host, path) == outcome(SEED_TABLE.resolve(host, path))


# --- Scaling ---------------------------------------------------------------------------------

SCALE: Final = 10_000


def test_ten_thousand_services_and_aliases() -> None:
    names = [f"svc{i:05d}" for i in range(SCALE)]
    config = RoutingConfig(
        services=(*RoutingConfig().services, *services(*names)),
        aliases=mapping({f"alias{i:05d}.example": name for i, name in enumerate(names)}),
        path_services=(*RoutingConfig().path_services, *services(*names)),
    )
    table = RouteTable.from_config(config)
    assert len(table.services) == len(SEED_SERVICES) + SCALE
    assert table.services[: len(SEED_SERVICES)] == SEED_SERVICES
    for i, name in enumerate(names):
        assert outcome(table.resolve(f"{name}.do", "/")) == (HOST, name, name)
        assert outcome(table.resolve(f"alias{i:05d}.example", "/")) == (HOST, name, name)
        assert outcome(table.resolve("api.do", f"/api/{name}/x")) == (PATH, name, name)
    assert outcome(table.resolve("v7.svc09999.do", "/")) == (SUBDOMAIN, "svc09999", "svc09999-v7")
    assert outcome(table.resolve("api.do", "/api/svc10000/x")) == (DEFAULT, "gateway", "gateway")
    assert table.resolve("alias10000.example", "/") is None
    assert table.resolve("svc10000.do", "/") is None
