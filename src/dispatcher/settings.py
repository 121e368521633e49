"""``Settings``: config file (TOML or the seed's JSONC) + environment + CLI, validated once.

Example::

    settings = Settings.load("wrangler.jsonc", os.environ, port=8080)
    settings.environment                                      # 'production'
    settings.namespace                                        # 'dotdo-production'
    settings.routes.resolve("api.do", "/api/db/query").worker  # 'db'

Precedence, highest first: the keyword arguments (the CLI's ``--host``/``--port``,
``--admin-host``/``--admin-port``), the environment variables ``ENVIRONMENT``,
``DISPATCHER_STORE``, ``DISPATCHER_ADMIN_TOKEN`` and ``DISPATCHER_ADMIN_TOKENS_FILE``, the file,
the seed's defaults.
Every invalid value raises ``ConfigError`` naming the file, the key and the problem::

    dispatcher.toml: routing.aliases['database.do']: service 'dbx' is not declared in
    routing.services
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Final, TypeGuard

from dispatcher import _strictjson as strictjson
from dispatcher.auth import Credential, Secret, load_tokens_file, parse_env_token
from dispatcher.errors import BadRequest, ConfigError
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RouteTable, RoutingConfig
from dispatcher.store import (
    DEFAULT_STORE_TIMEOUT,
    DEFAULT_STORE_URL,
    check_store_url,
    masked_store_url,
)
from dispatcher.types import EnvironmentName, NamespaceName, ServiceName, WorkerName
from dispatcher.workers import Target, parse_target, validate_name

DEFAULT_ENVIRONMENT: Final = EnvironmentName("development")
DEFAULT_BINDINGS: Final[Mapping[str, NamespaceName]] = MappingProxyType(
    {
        "PRODUCTION": NamespaceName("dotdo-production"),
        "STAGING": NamespaceName("dotdo-staging"),
        "DEVELOPMENT": NamespaceName("dotdo-development"),
    }
)
DEFAULT_ROUTES: Final = (("*.do/*", "do"), ("api.do/*", "do"))
"""The seed's ``routes`` as (pattern, zone_name) pairs."""
DEFAULT_OWN_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8787
DEFAULT_ADMIN_HOST: Final = "127.0.0.1"
DEFAULT_ADMIN_PORT: Final = 8788
ADMIN_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_SYNC_INTERVAL: Final = 0.25

_DEFAULTS_SOURCE: Final = "<built-in defaults>"
_SECTIONS: Final = frozenset(
    {
        "vars",
        "dispatch_namespaces",
        "routes",
        "routing",
        "server",
        "store",
        "limits",
        "proxy",
        "workers",
        "admin",
    }
)
_TOML_SUFFIXES: Final = frozenset({".toml"})
_JSON_SUFFIXES: Final = frozenset({".json", ".jsonc"})
_ROUTING_KEYS: Final = frozenset(
    {
        "zone",
        "services",
        "path_base",
        "path_services",
        "default_hosts",
        "default_service",
        "versioned_subdomains",
        "aliases",
        "paths",
        "enforce_route_patterns",
        "own_hosts",
    }
)
_LIMIT_KEYS: Final = frozenset(
    {
        "max_request_line",
        "max_header_line",
        "max_header_bytes",
        "max_headers",
        "header_timeout",
        "body_idle_timeout",
        "keepalive_timeout",
        "max_body_bytes",
        "write_high_water",
        "drain_timeout",
        "send_timeout",
        "max_connections",
        "max_in_flight",
        "max_pipelined",
        "body_min_rate",
        "body_rate_grace",
    }
)
_BINDING_NAME = re.compile(r"[A-Z][A-Z0-9_]*", re.ASCII)
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"?')
_GIB: Final = 1024**3
_MAX_HEADER_COUNT: Final = 10_000
_MIN_TIMEOUT: Final = 0.001
_MAX_TIMEOUT: Final = 86400.0
_MIN_SYNC_INTERVAL: Final = 0.01
_MAX_SYNC_INTERVAL: Final = 60.0
_MIN_STORE_TIMEOUT: Final = 0.05
_MAX_STORE_TIMEOUT: Final = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one client may send or hold (ROBUSTNESS.md, "Defaults we hold ourselves to").

    Sizes are bytes, timeouts seconds; ``max_body_bytes=0`` means unlimited.
    """

    max_request_line: int = 8192
    max_header_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    max_body_bytes: int = 10 * 1024 * 1024
    write_high_water: int = 65536
    drain_timeout: float = 30.0
    send_timeout: float = 60.0
    """A client that reads nothing of its response for this long is cut (nginx)."""
    max_connections: int = 4096
    """Open client connections per process; one more is answered 503 and closed."""
    max_in_flight: int = 2048
    """Requests being answered at once per process; one more is a fast 503 + Retry-After."""
    max_pipelined: int = 128
    """Requests one connection may have waiting behind the one being answered."""
    body_min_rate: int = 240
    """Bytes per second a request body must average once it has started (0: no minimum);
    stops a body trickled just fast enough to beat the idle timeout (Kestrel's rule)."""
    body_rate_grace: float = 5.0
    """Seconds of a body before its rate is judged."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How upstream workers are reached (``[proxy]``; ROBUSTNESS.md defaults).

    ``trusted_proxies`` lists the networks whose ``X-Forwarded-*`` headers are kept and
    appended to; from any other client they are replaced.
    """

    forwarded_headers: bool = True
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    connect_timeout: float = 5.0
    response_header_timeout: float = 60.0
    stream_idle_timeout: float = 300.0
    pool_idle_timeout: float = 4.0
    pool_max_idle: int = 64
    max_connections: int = 1024
    fail_timeout: float = 10.0

    def is_trusted(self, address: str) -> bool:
        """Whether a peer address may speak for the client (its X-Forwarded-* are kept)."""
        if not self.trusted_proxies:
            return False
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin listener (Deploy API): where it binds and which tokens it accepts.

    ``token`` comes from ``DISPATCHER_ADMIN_TOKEN`` (full access); ``tokens`` from the tokens
    file. With neither, a loopback listener generates a token file on its first start; a
    non-loopback one refuses to start.
    """

    host: str = DEFAULT_ADMIN_HOST
    port: int = DEFAULT_ADMIN_PORT
    token: Secret | None = None
    tokens_file: str | None = None
    tokens: tuple[Credential, ...] = ()
    max_body_bytes: int = ADMIN_MAX_BODY_BYTES

    @property
    def has_tokens(self) -> bool:
        return self.token is not None or bool(self.tokens)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, repr=False)
class RoutePattern:
    """A Cloudflare Workers route pattern (``*.do/*``, ``https://example.com/api/*``) in a zone.

    Workers semantics: a leading ``*`` in the host matches any prefix, so ``*.do`` is every
    subdomain of ``do`` but not ``do`` itself, while ``*do`` is ``do`` and anything ending in
    ``do``; a trailing ``*`` makes the path a prefix; the scheme is kept for ``describe`` only.

    >>> RoutePattern.parse("*.do/*", "do").matches("db.do", "/query")
    True
    """

    pattern: str
    zone_name: str
    scheme: str | None
    host: str
    host_wildcard: bool
    path: str
    path_wildcard: bool

    @classmethod
    def parse(cls, pattern: str, zone_name: str, where: str = "route") -> RoutePattern:
        """Parse and check a pattern; errors name ``<where>.pattern`` or ``<where>.zone_name``."""
        scheme, rest = _split_scheme(pattern, where)
        host_part, slash, path_part = rest.partition("/")
        if not slash:
            raise _pattern_error(where, pattern, "needs a path after the host, as in 'api.do/*'")
        host_wildcard = host_part.startswith("*")
        host = host_part[1:] if host_wildcard else host_part
        bare_host = _check_pattern_host(host, host_wildcard, where, pattern)
        path_wildcard = path_part.endswith("*")
        path = "/" + (path_part[:-1] if path_wildcard else path_part)
        _check_pattern_path(path, where, pattern)
        _check_zone(bare_host, zone_name, where)
        return cls(pattern, zone_name, scheme, host, host_wildcard, path, path_wildcard)

    def matches(self, host: str, path: str) -> bool:
        """Whether a canonical host and path fall under this pattern."""
        if not (host.endswith(self.host) if self.host_wildcard else host == self.host):
            return False
        return path.startswith(self.path) if self.path_wildcard else path == self.path

    def describe(self) -> str:
        """A one-line human form, e.g. ``*.do/* (zone do): subdomains of do, any path``."""
        scheme = f", {self.scheme} only" if self.scheme else ""
        return (
            f"{self.pattern} (zone {self.zone_name}): {self._describe_hosts()}, "
            f"{self._describe_paths()}{scheme}"
        )

    def __repr__(self) -> str:
        return f"RoutePattern({self.pattern!r}, zone_name={self.zone_name!r})"

    def _describe_hosts(self) -> str:
        if not self.host_wildcard:
            return f"host {self.host}"
        if self.host.startswith("."):
            return f"subdomains of {self.host[1:]}"
        return f"hosts ending in {self.host}"

    def _describe_paths(self) -> str:
        if not self.path_wildcard:
            return f"path {self.path}"
        return "any path" if self.path == "/" else f"paths starting with {self.path}"


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """The dispatcher's whole configuration, validated once by ``Settings.load``.

    ``routes`` is ``routing`` compiled; it is derived, so it takes no part in ``==``.
    """

    config_path: str | None
    environment: EnvironmentName
    bindings: Mapping[str, NamespaceName] = field(hash=False)
    route_patterns: tuple[RoutePattern, ...]
    enforce_route_patterns: bool
    routing: RoutingConfig = field(hash=False)
    routes: RouteTable = field(compare=False)
    own_hosts: frozenset[str]
    host: str
    port: int
    store_url: str
    limits: Limits
    sync_interval: float
    workers: Mapping[NamespaceName, Mapping[WorkerName, Target]] = field(hash=False)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    """``[store] timeout``: how long a store operation waits for a lock or a connection."""
    access_log: bool = True
    """One JSON line per request on the ``dispatcher.access`` logger (``--no-access-log``)."""

    @classmethod
    def load(
        cls,
        config_path: str | None,
        environ: Mapping[str, str],
        *,
        host: str | None = None,
        port: int | None = None,
        admin_host: str | None = None,
        admin_port: int | None = None,
    ) -> Settings:
        """Read ``config_path`` (``None``: the seed's defaults), apply ``environ`` and the flags."""
        root = (
            _read_config(config_path)
            if config_path is not None
            else _Table(_DEFAULTS_SOURCE, "", {})
        )
        bindings = _parse_bindings(root)
        routing_table = root.table("routing")
        routing_table.reject_unknown(_ROUTING_KEYS)
        routing = _parse_routing(routing_table)
        patterns = _parse_route_patterns(root)
        server, store = root.table("server"), root.table("store")
        server.reject_unknown(("host", "port"))
        store.reject_unknown(("url", "sync_interval", "timeout"))
        return cls(
            config_path=config_path,
            environment=_pick_environment(root, environ, bindings),
            bindings=bindings,
            route_patterns=patterns,
            enforce_route_patterns=_parse_enforce(routing_table, patterns),
            routing=routing,
            routes=_compile_routes(routing, root.source),
            own_hosts=frozenset(_hosts(routing_table, "own_hosts", tuple(DEFAULT_OWN_HOSTS))),
            host=_listen_host(server, host),
            port=_listen_port(server, port),
            store_url=_store_url(store, environ),
            limits=_parse_limits(root.table("limits")),
            sync_interval=_sync_interval(store),
            workers=_parse_workers(root.table("workers"), bindings),
            proxy=_parse_proxy(root.table("proxy")),
            admin=_parse_admin(root.table("admin"), environ, admin_host, admin_port),
            store_timeout=_seconds(
                store, "timeout", DEFAULT_STORE_TIMEOUT, _MIN_STORE_TIMEOUT, _MAX_STORE_TIMEOUT
            ),
        )

    @property
    def namespace(self) -> NamespaceName:
        """The namespace bound to the current environment."""
        return self.bindings[self.environment.upper()]

    @property
    def environments(self) -> tuple[EnvironmentName, ...]:
        """Every environment that has a binding, in the file's order."""
        return _environments(self.bindings)

    def __repr__(self) -> str:
        patterns = ", ".join(p.pattern for p in self.route_patterns)
        workers = sum(len(named) for named in self.workers.values())
        return (
            f"<Settings {self.config_path or _DEFAULTS_SOURCE}: "
            f"environment={self.environment} namespace={self.namespace} "
            f"listen={_listen_address(self.host, self.port)} "
            f"store={masked_store_url(self.store_url)} "
            f"routes={len(self.routes.routes)} patterns=[{patterns}] workers={workers}>"
        )


# --- The document: reading files, and typed access that names file and key in errors ---


@dataclass(frozen=True, slots=True)
class _Table:
    """One table of the document and where it sits, so that every error names file and key."""

    source: str
    path: str
    data: Mapping[str, object]

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def entry_key(self, name: str) -> str:
        """Keys of free-form tables (hosts, paths) are quoted: ``routing.aliases['a.do']``."""
        return f"{self.path}[{name!r}]"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def type_error(self, key: str, expected: str, value: object) -> ConfigError:
        return self.error(key, f"expected {expected}, got {_describe(value)}")

    def reject_unknown(self, allowed: Collection[str]) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            expected = ", ".join(sorted(allowed))
            raise self.error(self.key(unknown[0]), f"unknown key (expected one of {expected})")

    def string(self, name: str, default: str | None = None) -> str:
        if name not in self.data:
            if default is None:
                raise self.error(self.key(name), "is required")
            return default
        value = self.data[name]
        if not isinstance(value, str):
            raise self.type_error(self.key(name), "a string", value)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.type_error(self.key(name), "a boolean", value)
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if name not in self.data:
            return default
        key, value = self.key(name), self.data[name]
        if not isinstance(value, list):
            raise self.type_error(key, "an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.type_error(f"{key}[{index}]", "a string", item)
        return tuple(value)

    def table(self, name: str) -> _Table:
        """The sub-table ``name``; an empty one when the key is absent."""
        if name not in self.data:
            return _Table(self.source, self.key(name), {})
        return self._child(self.key(name), self.data[name])

    def tables(self, name: str) -> tuple[_Table, ...] | None:
        """An array of tables, or ``None`` when the key is absent (so defaults apply)."""
        if name not in self.data:
            return None
        key, value = self.key(name), self.data[name]
        if not isinstance(value, list):
            raise self.type_error(key, "an array of tables", value)
        return tuple(self._child(f"{key}[{index}]", item) for index, item in enumerate(value))

    def _child(self, path: str, value: object) -> _Table:
        if not isinstance(value, Mapping):
            raise self.type_error(path, "a table", value)
        return _Table(self.source, path, value)


def _read_config(path: str) -> _Table:
    suffix = PurePath(path).suffix.lower()
    if suffix not in _TOML_SUFFIXES | _JSON_SUFFIXES:
        raise ConfigError(
            f"{path}: unsupported config file type {suffix or '(no extension)'!r}; "
            "use .toml, .json or .jsonc"
        )
    text = _read_text(path)
    if suffix in _JSON_SUFFIXES:
        # wrangler.jsonc has dozens of keys for Cloudflare (name, main, ...): ignored here.
        return _Table(path, "", _parse_jsonc(text, path))
    root = _Table(path, "", _parse_toml(text, path))
    root.reject_unknown(_SECTIONS)
    return root


def _read_text(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc


def _parse_toml(text: str, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from exc


def _parse_jsonc(text: str, source: str) -> dict[str, object]:
    try:
        document = strictjson.loads(_strip_jsonc(text, source))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except strictjson.JsonRejected as exc:
        raise ConfigError(f"{source}: invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: invalid JSON: nested too deeply") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be an object, got {_describe(document)}")
    return document


def _strip_jsonc(text: str, source: str) -> str:
    """Blank out ``//`` and ``/* */`` comments and trailing commas outside strings.

    Every other character keeps its offset, so json's line and column numbers still point
    into the file as written.
    """
    out = list(text)
    last = -1  # offset of the last significant character: a comma there may trail
    index = 0
    while index < len(text):
        char = text[index]
        if char == '"':
            index = _end_of_string(text, index)
            last = index - 1
        elif text.startswith("//", index):
            index = _blank(out, index, _end_of_line(text, index))
        elif text.startswith("/*", index):
            index = _blank(out, index, _end_of_block_comment(text, index, source))
        else:
            if char in "}]" and last >= 0 and text[last] == ",":
                out[last] = " "
            if not char.isspace():
                last = index
            index += 1
    return "".join(out)


def _end_of_string(text: str, start: int) -> int:
    match = _JSON_STRING.match(text, start)
    assert match is not None  # the pattern matches any text that starts with '"'
    return match.end()


def _end_of_line(text: str, start: int) -> int:
    end = text.find("\n", start)
    return len(text) if end == -1 else end


def _end_of_block_comment(text: str, start: int, source: str) -> int:
    end = text.find("*/", start + 2)
    if end == -1:
        line, column = _position(text, start)
        raise ConfigError(
            f"{source}: invalid JSON at line {line}, column {column}: unterminated /* comment"
        )
    return end + 2


def _blank(out: list[str], start: int, end: int) -> int:
    """Replace ``out[start:end]`` by spaces, keeping line breaks; return ``end``."""
    for index in range(start, end):
        if out[index] not in ("\n", "\r"):
            out[index] = " "
    return end


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - text.rfind("\n", 0, offset)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_shorten(value)!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "null" if value is None else f"a {type(value).__name__}"


def _shorten(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


# --- Sections ---


def _parse_bindings(root: _Table) -> Mapping[str, NamespaceName]:
    entries = root.tables("dispatch_namespaces")
    if entries is None:
        return DEFAULT_BINDINGS
    if not entries:
        raise root.error("dispatch_namespaces", "must bind at least one namespace")
    bindings: dict[str, NamespaceName] = {}
    for entry in entries:
        binding, namespace = _parse_binding(entry)
        _reject_duplicate_binding(entry, bindings, binding, namespace)
        bindings[binding] = namespace
    return MappingProxyType(bindings)


def _parse_binding(entry: _Table) -> tuple[str, NamespaceName]:
    entry.reject_unknown(("binding", "namespace"))
    binding = entry.string("binding")
    if _BINDING_NAME.fullmatch(binding) is None:
        raise entry.error(
            entry.key("binding"),
            f"must be an upper-case name such as PRODUCTION ([A-Z][A-Z0-9_]*) (got {binding!r})",
        )
    namespace = entry.string("namespace")
    key = entry.key("namespace")
    return binding, NamespaceName(_valid_name(entry, key, namespace, "namespace name"))


def _reject_duplicate_binding(
    entry: _Table, bindings: Mapping[str, NamespaceName], binding: str, namespace: str
) -> None:
    if binding in bindings:
        raise entry.error(entry.key("binding"), f"binding {binding} is declared twice")
    if namespace in bindings.values():
        raise entry.error(
            entry.key("namespace"), f"namespace {namespace!r} is already bound to another binding"
        )


def _environments(bindings: Mapping[str, NamespaceName]) -> tuple[EnvironmentName, ...]:
    return tuple(EnvironmentName(binding.lower()) for binding in bindings)


def _pick_environment(
    root: _Table, environ: Mapping[str, str], bindings: Mapping[str, NamespaceName]
) -> EnvironmentName:
    raw, where = _environment_source(root, environ)
    environment = raw.lower()
    if not raw.isascii() or environment.upper() not in bindings:
        bound = ", ".join(_environments(bindings))
        raise ConfigError(
            f"{where}: Namespace not found for environment: {environment}; must be one of the "
            f"bound environments {bound} (got {raw!r})"
        )
    return EnvironmentName(environment)


def _environment_source(root: _Table, environ: Mapping[str, str]) -> tuple[str, str]:
    """The raw environment name and where it came from, for the error message."""
    variables = root.table("vars")  # checked even when the variable overrides it
    from_file = variables.string("ENVIRONMENT") if "ENVIRONMENT" in variables.data else None
    # An empty variable counts as unset, as `ENVIRONMENT= dispatcher serve` means.
    from_environ = environ.get("ENVIRONMENT", "")
    if from_environ:
        return from_environ, "ENVIRONMENT (environment variable)"
    if from_file is not None:
        return from_file, f"{root.source}: vars.ENVIRONMENT"
    return DEFAULT_ENVIRONMENT, f"{root.source}: vars.ENVIRONMENT (unset, default)"


def _parse_route_patterns(root: _Table) -> tuple[RoutePattern, ...]:
    entries = root.tables("routes")
    if entries is None:
        return tuple(RoutePattern.parse(pattern, zone) for pattern, zone in DEFAULT_ROUTES)
    return tuple(_parse_route_entry(entry) for entry in entries)


def _parse_route_entry(entry: _Table) -> RoutePattern:
    entry.reject_unknown(("pattern", "zone_name", "custom_domain"))
    pattern, zone_name = entry.string("pattern"), entry.string("zone_name")
    entry.boolean("custom_domain", False)  # wrangler's flag; checked for its type, then unused
    try:
        return RoutePattern.parse(pattern, zone_name, where=entry.path)
    except ConfigError as exc:
        raise ConfigError(f"{entry.source}: {exc}") from exc


def _parse_enforce(routing: _Table, patterns: tuple[RoutePattern, ...]) -> bool:
    enforce = routing.boolean("enforce_route_patterns", False)
    if enforce and not patterns:
        raise routing.error(
            routing.key("enforce_route_patterns"),
            "is true but routes is empty, so every request would be refused",
        )
    return enforce


def _parse_routing(table: _Table) -> RoutingConfig:
    """Keys that name services default to the seed's values restricted to declared services."""
    seed = RoutingConfig()
    services = _service_names(table, "services", seed.services)
    declared = frozenset(services)
    seed_path_services = tuple(s for s in seed.path_services if s in declared)
    seed_default = seed.default_service if seed.default_service in declared else None
    return RoutingConfig(
        zone=_canonical_host(table, table.key("zone"), table.string("zone", seed.zone)),
        services=services,
        path_base=_canonical_path(
            table, table.key("path_base"), table.string("path_base", seed.path_base)
        ),
        path_services=_declared_names(table, "path_services", seed_path_services, declared),
        default_hosts=_hosts(table, "default_hosts", seed.default_hosts),
        default_service=_default_service(table, seed_default, declared),
        aliases=_aliases(table.table("aliases"), declared),
        paths=_paths(table.table("paths"), declared),
        versioned_subdomains=table.boolean("versioned_subdomains", seed.versioned_subdomains),
    )


def _service_names(
    table: _Table, name: str, default: tuple[ServiceName, ...]
) -> tuple[ServiceName, ...]:
    names: list[ServiceName] = []
    for index, value in enumerate(table.strings(name, default)):
        key = f"{table.key(name)}[{index}]"
        service = ServiceName(_valid_name(table, key, value, "service name"))
        if service in names:
            raise table.error(key, f"service {service!r} is listed twice")
        names.append(service)
    return tuple(names)


def _declared_names(
    table: _Table, name: str, default: tuple[ServiceName, ...], declared: frozenset[ServiceName]
) -> tuple[ServiceName, ...]:
    names = _service_names(table, name, default)
    for index, service in enumerate(names):
        _require_declared(table, f"{table.key(name)}[{index}]", service, declared)
    return names


def _default_service(
    table: _Table, default: ServiceName | None, declared: frozenset[ServiceName]
) -> ServiceName | None:
    key = table.key("default_service")
    value = table.data.get("default_service", default)
    if value is None or value is False or value == "":
        return None
    if not isinstance(value, str):
        raise table.type_error(key, "a service name, or false to disable", value)
    service = ServiceName(_valid_name(table, key, value, "service name"))
    _require_declared(table, key, service, declared)
    return service


def _aliases(table: _Table, declared: frozenset[ServiceName]) -> Mapping[str, ServiceName]:
    aliases: dict[str, ServiceName] = {}
    for host, value in table.data.items():
        key = table.entry_key(host)
        aliases[_canonical_host(table, key, host)] = _declared_service(table, key, value, declared)
    return MappingProxyType(aliases)


def _paths(table: _Table, declared: frozenset[ServiceName]) -> Mapping[str, ServiceName]:
    paths: dict[str, ServiceName] = {}
    for prefix, value in table.data.items():
        key = table.entry_key(prefix)
        paths[_canonical_path(table, key, prefix)] = _declared_service(table, key, value, declared)
    return MappingProxyType(paths)


def _declared_service(
    table: _Table, key: str, value: object, declared: frozenset[ServiceName]
) -> ServiceName:
    if not isinstance(value, str):
        raise table.type_error(key, "a service name", value)
    service = ServiceName(_valid_name(table, key, value, "service name"))
    _require_declared(table, key, service, declared)
    return service


def _require_declared(
    table: _Table, key: str, service: ServiceName, declared: frozenset[ServiceName]
) -> None:
    if service not in declared:
        raise table.error(key, f"service {service!r} is not declared in routing.services")


def _compile_routes(routing: RoutingConfig, source: str) -> RouteTable:
    try:
        return RouteTable(routing.routes())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _hosts(table: _Table, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    key = table.key(name)
    return tuple(
        _canonical_host(table, f"{key}[{index}]", host)
        for index, host in enumerate(table.strings(name, default))
    )


def _valid_name(table: _Table, key: str, value: str, what: str) -> str:
    """``workers.validate_name`` with the file and key in front of its message."""
    try:
        return validate_name(value, what)
    except ConfigError as exc:
        raise table.error(key, str(exc)) from exc


def _canonical_host(table: _Table, key: str, host: str) -> str:
    """Hosts in the file are compared with canonical request hosts, so they must be canonical."""
    try:
        canonical = normalize_host(host)
    except BadRequest as exc:
        raise table.error(key, f"invalid host {host!r}") from exc
    if canonical != host:
        raise table.error(
            key,
            f"host must be canonical (lower-case, no port, no trailing dot): "
            f"write {canonical!r} (got {host!r})",
        )
    return host


def _canonical_path(table: _Table, key: str, path: str) -> str:
    """Paths are matched against canonical request paths, so they must be canonical too."""
    try:
        canonical = normalize_path(path)
    except BadRequest as exc:
        raise table.error(key, f"invalid path {path!r}: {exc}") from exc
    if canonical != path:
        raise table.error(
            key, f"path must be canonical (see normalize): write {canonical!r} (got {path!r})"
        )
    return path


def _listen_host(server: _Table, override: str | None) -> str:
    if override is None:
        host, where = server.string("host", DEFAULT_HOST), f"{server.source}: {server.key('host')}"
    else:
        host, where = override, "--host"
    if not host or any(char.isspace() or char == "/" for char in host):
        raise ConfigError(f"{where}: must be a host name or IP address to listen on (got {host!r})")
    return host


def _listen_port(server: _Table, override: int | None) -> int:
    if override is None:
        return _integer(server, "port", DEFAULT_PORT, 0, 65535)
    if not _is_integer_between(override, 0, 65535):
        raise ConfigError(f"--port: must be an integer from 0 to 65535 (got {override!r})")
    return override


def _parse_admin(
    table: _Table, environ: Mapping[str, str], host: str | None, port: int | None
) -> AdminSettings:
    table.reject_unknown(("host", "port", "tokens_file"))
    if host is None:
        where = f"{table.source}: {table.key('host')}"
        host = table.string("host", DEFAULT_ADMIN_HOST)
    else:
        where = "--admin-host"
    if not host or any(char.isspace() or char == "/" for char in host):
        raise ConfigError(f"{where}: must be a host name or IP address to listen on (got {host!r})")
    if port is None:
        port = _integer(table, "port", DEFAULT_ADMIN_PORT, 0, 65535)
    elif not _is_integer_between(port, 0, 65535):
        raise ConfigError(f"--admin-port: must be an integer from 0 to 65535 (got {port!r})")
    tokens_file = _tokens_file(table, environ)
    admin = AdminSettings(
        host=host,
        port=port,
        token=parse_env_token(environ.get("DISPATCHER_ADMIN_TOKEN", "")),
        tokens_file=tokens_file,
        tokens=load_tokens_file(tokens_file) if tokens_file is not None else (),
    )
    if not admin.is_loopback and not admin.has_tokens:
        raise ConfigError(
            f"{where}: the admin API would listen on {host}, which is not a loopback address, "
            "without a token; set DISPATCHER_ADMIN_TOKEN or admin.tokens_file "
            "(or listen on 127.0.0.1)"
        )
    return admin


def _tokens_file(table: _Table, environ: Mapping[str, str]) -> str | None:
    """``DISPATCHER_ADMIN_TOKENS_FILE``, else ``admin.tokens_file`` relative to the file."""
    from_environ = environ.get("DISPATCHER_ADMIN_TOKENS_FILE", "")
    if from_environ:
        return from_environ
    if "tokens_file" not in table.data:
        return None
    path = table.string("tokens_file")
    if not path:
        raise table.error(table.key("tokens_file"), "must not be empty")
    if table.source == _DEFAULTS_SOURCE or Path(path).is_absolute():
        return path
    return str(Path(table.source).parent / path)


def _store_url(store: _Table, environ: Mapping[str, str]) -> str:
    from_environ = environ.get("DISPATCHER_STORE", "")
    if from_environ:
        check_store_url(from_environ)  # its ConfigError already names DISPATCHER_STORE
        return from_environ
    key, url = store.key("url"), store.string("url", DEFAULT_STORE_URL)
    if not url:
        raise store.error(key, "must not be empty")
    try:
        check_store_url(url)
    except ConfigError as exc:
        raise store.error(key, str(exc).removeprefix("DISPATCHER_STORE: ")) from exc
    return url


def _parse_limits(table: _Table) -> Limits:
    table.reject_unknown(_LIMIT_KEYS)
    seed = Limits()
    return Limits(
        max_request_line=_integer(table, "max_request_line", seed.max_request_line, 1, _GIB),
        max_header_line=_integer(table, "max_header_line", seed.max_header_line, 1, _GIB),
        max_header_bytes=_integer(table, "max_header_bytes", seed.max_header_bytes, 1, _GIB),
        max_headers=_integer(table, "max_headers", seed.max_headers, 1, _MAX_HEADER_COUNT),
        header_timeout=_timeout(table, "header_timeout", seed.header_timeout),
        body_idle_timeout=_timeout(table, "body_idle_timeout", seed.body_idle_timeout),
        keepalive_timeout=_timeout(table, "keepalive_timeout", seed.keepalive_timeout),
        max_body_bytes=_integer(table, "max_body_bytes", seed.max_body_bytes, 0, None),
        write_high_water=_integer(table, "write_high_water", seed.write_high_water, 1, _GIB),
        drain_timeout=_timeout(table, "drain_timeout", seed.drain_timeout),
        send_timeout=_timeout(table, "send_timeout", seed.send_timeout),
        max_connections=_integer(table, "max_connections", seed.max_connections, 1, 1_000_000),
        max_in_flight=_integer(table, "max_in_flight", seed.max_in_flight, 1, 1_000_000),
        max_pipelined=_integer(table, "max_pipelined", seed.max_pipelined, 1, 100_000),
        body_min_rate=_integer(table, "body_min_rate", seed.body_min_rate, 0, _GIB),
        body_rate_grace=_timeout(table, "body_rate_grace", seed.body_rate_grace),
    )


_PROXY_KEYS: Final = frozenset(
    {
        "forwarded_headers",
        "trusted_proxies",
        "connect_timeout",
        "response_header_timeout",
        "stream_idle_timeout",
        "pool_idle_timeout",
        "pool_max_idle",
        "max_connections",
        "fail_timeout",
    }
)


def _parse_proxy(table: _Table) -> ProxySettings:
    table.reject_unknown(_PROXY_KEYS)
    seed = ProxySettings()
    return ProxySettings(
        forwarded_headers=table.boolean("forwarded_headers", seed.forwarded_headers),
        trusted_proxies=_networks(table, "trusted_proxies"),
        connect_timeout=_timeout(table, "connect_timeout", seed.connect_timeout),
        response_header_timeout=_timeout(
            table, "response_header_timeout", seed.response_header_timeout
        ),
        stream_idle_timeout=_timeout(table, "stream_idle_timeout", seed.stream_idle_timeout),
        pool_idle_timeout=_timeout(table, "pool_idle_timeout", seed.pool_idle_timeout),
        pool_max_idle=_integer(table, "pool_max_idle", seed.pool_max_idle, 0, 100_000),
        max_connections=_integer(table, "max_connections", seed.max_connections, 1, 1_000_000),
        fail_timeout=_timeout(table, "fail_timeout", seed.fail_timeout),
    )


def _networks(table: _Table, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    networks = []
    for value in table.strings(name, ()):
        try:
            networks.append(ip_network(value, strict=False))
        except ValueError as exc:
            raise table.error(name, f"{value!r} is not an IP address or network") from exc
    return tuple(networks)


def _sync_interval(store: _Table) -> float:
    return _seconds(
        store, "sync_interval", DEFAULT_SYNC_INTERVAL, _MIN_SYNC_INTERVAL, _MAX_SYNC_INTERVAL
    )


def _timeout(table: _Table, name: str, default: float) -> float:
    return _seconds(table, name, default, _MIN_TIMEOUT, _MAX_TIMEOUT)


def _integer(table: _Table, name: str, default: int, low: int, high: int | None) -> int:
    value = table.data.get(name, default)
    if not _is_integer_between(value, low, high):
        rule = f"from {low} to {high}" if high is not None else f">= {low} (0 means unlimited)"
        raise table.error(table.key(name), f"must be an integer {rule} (got {value!r})")
    return value


def _is_integer_between(value: object, low: int, high: int | None) -> TypeGuard[int]:
    # bool is an int subclass, and `port = true` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return low <= value and (high is None or value <= high)


def _seconds(table: _Table, name: str, default: float, low: float, high: float) -> float:
    value = table.data.get(name, default)
    # `not low <= value <= high` is also true for NaN, which TOML can spell.
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise table.error(
            table.key(name), f"must be a number of seconds from {low:g} to {high:g} (got {value!r})"
        )
    return float(value)


def _parse_workers(
    table: _Table, bindings: Mapping[str, NamespaceName]
) -> Mapping[NamespaceName, Mapping[WorkerName, Target]]:
    bound = ", ".join(bindings.values())
    workers: dict[NamespaceName, Mapping[WorkerName, Target]] = {}
    for namespace in table.data:
        if namespace not in bindings.values():
            raise table.error(
                table.key(namespace),
                f"namespace {namespace!r} is not bound (bound namespaces: {bound})",
            )
        workers[NamespaceName(namespace)] = _parse_namespace_workers(table.table(namespace))
    return MappingProxyType(workers)


def _parse_namespace_workers(table: _Table) -> Mapping[WorkerName, Target]:
    workers: dict[WorkerName, Target] = {}
    for name, spec in table.data.items():
        key = table.key(name)
        worker = WorkerName(_valid_name(table, key, name, "worker name"))
        try:
            workers[worker] = parse_target(spec, where=key)
        except ConfigError as exc:
            raise ConfigError(f"{table.source}: {exc}") from exc
    return MappingProxyType(workers)


# --- Route patterns ---


def _pattern_error(where: str, pattern: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}.pattern: {problem} (got {pattern!r})")


def _split_scheme(pattern: str, where: str) -> tuple[str | None, str]:
    scheme, separator, rest = pattern.partition("://")
    if not separator:
        return None, pattern
    if scheme not in ("http", "https"):
        raise _pattern_error(where, pattern, "the scheme, if any, must be http:// or https://")
    return scheme, rest


def _check_pattern_host(host: str, wildcard: bool, where: str, pattern: str) -> str:
    """Check the host part (without its leading ``*``); return it without the wildcard's dot."""
    if "*" in host:
        raise _pattern_error(where, pattern, "'*' may only begin the host")
    bare = host[1:] if wildcard and host.startswith(".") else host
    if not bare:
        raise _pattern_error(where, pattern, "needs a host, as in '*.do/*'")
    try:
        canonical = normalize_host(bare)
    except BadRequest as exc:
        raise _pattern_error(where, pattern, f"invalid host {bare!r}") from exc
    if canonical != bare:
        raise _pattern_error(
            where, pattern, "the host must be lower-case, with no port and no trailing dot"
        )
    return bare


def _check_pattern_path(path: str, where: str, pattern: str) -> None:
    if "?" in path or "#" in path:
        raise _pattern_error(where, pattern, "a route pattern has no query or fragment")
    if "*" in path:
        raise _pattern_error(where, pattern, "'*' may only end the path")
    try:
        canonical = normalize_path(path)
    except BadRequest as exc:
        raise _pattern_error(where, pattern, f"invalid path: {exc}") from exc
    if canonical != path:
        raise _pattern_error(where, pattern, f"the path must be canonical: write {canonical!r}")


def _check_zone(host: str, zone_name: str, where: str) -> None:
    try:
        canonical: str | None = normalize_host(zone_name)
    except BadRequest:
        canonical = None
    if canonical != zone_name:
        raise ConfigError(f"{where}.zone_name: invalid zone {zone_name!r}")
    if host != zone_name and not host.endswith("." + zone_name):
        raise ConfigError(f"{where}.zone_name: host {host!r} is not in zone {zone_name!r}")


# --- Display ---


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
