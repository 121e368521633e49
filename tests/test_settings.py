"""Settings: defaults, the seed's wrangler.jsonc, env overrides, every validation error, JSONC."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Final

import pytest

from dispatcher.errors import ConfigError
from dispatcher.routing import RoutingConfig
from dispatcher.settings import DEFAULT_BINDINGS, Limits, RoutePattern, Settings
from dispatcher.store import DEFAULT_STORE_URL
from dispatcher.types import NamespaceName, ServiceName, WorkerName
from dispatcher.workers import AppTarget

CONFIGS: Final = Path(__file__).parent / "configs"
SEED: Final = str(CONFIGS / "wrangler.jsonc")
FULL: Final = str(CONFIGS / "full.toml")
SEED_BINDINGS: Final = {
    "PRODUCTION": "dotdo-production",
    "STAGING": "dotdo-staging",
    "DEVELOPMENT": "dotdo-development",
}


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def services(*names: str) -> tuple[ServiceName, ...]:
    return tuple(ServiceName(name) for name in names)


def load_error(path: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(path, environ or {})
    return str(excinfo.value)


# --- Defaults and the seed ---


def test_defaults_are_the_seed() -> None:
    settings = Settings.load(None, {})

    assert settings.config_path is None
    assert settings.environment == "development"
    assert settings.namespace == "dotdo-development"
    assert dict(settings.bindings) == SEED_BINDINGS
    assert settings.environments == ("production", "staging", "development")
    assert [(p.pattern, p.zone_name) for p in settings.route_patterns] == [
        ("*.do/*", "do"),
        ("api.do/*", "do"),
    ]
    assert settings.enforce_route_patterns is False
    assert settings.routing == RoutingConfig()
    assert settings.own_hosts == {"localhost", "127.0.0.1", "[::1]"}
    assert (settings.host, settings.port) == ("127.0.0.1", 8787)
    assert settings.store_url == DEFAULT_STORE_URL
    assert settings.limits == Limits()
    assert settings.sync_interval == 0.25
    assert settings.workers == {}


def test_default_limits_are_robustness_md() -> None:
    assert Limits() == Limits(
        max_request_line=8192,
        max_header_line=8192,
        max_header_bytes=32768,
        max_headers=100,
        header_timeout=10.0,
        body_idle_timeout=30.0,
        keepalive_timeout=60.0,
        max_body_bytes=10 * 1024 * 1024,
        write_high_water=65536,
    )


def test_seed_wrangler_jsonc_loads_unchanged() -> None:
    settings = Settings.load(SEED, {})

    assert settings.config_path == SEED
    assert settings.environment == "production"
    assert settings.namespace == "dotdo-production"
    assert dict(settings.bindings) == SEED_BINDINGS
    assert [p.describe() for p in settings.route_patterns] == [
        "*.do/* (zone do): subdomains of do, any path",
        "api.do/* (zone do): host api.do, any path",
    ]


def test_seed_file_equals_defaults_in_production() -> None:
    from_file = Settings.load(SEED, {})
    from_defaults = Settings.load(None, {"ENVIRONMENT": "production"})

    assert replace(from_file, config_path=None) == from_defaults
    assert hash(replace(from_file, config_path=None)) == hash(from_defaults)


def test_routes_are_compiled_at_load() -> None:
    table = Settings.load(None, {}).routes
    assert table.services == (
        "gateway",
        "db",
        "auth",
        "schedule",
        "webhooks",
        "email",
        "mcp",
        "queue",
    )
    resolved = [
        table.resolve(host, path)
        for host, path in [("gateway.do", "/health"), ("api.do", "/api/db/query"), ("do", "/")]
    ]
    assert [m.worker if m else None for m in resolved] == ["gateway", "db", "gateway"]


def test_repr_is_readable() -> None:
    assert repr(Settings.load(None, {})) == (
        "<Settings <built-in defaults>: environment=development namespace=dotdo-development "
        "listen=127.0.0.1:8787 store=sqlite:///.dispatcher/registry.db routes=21 "
        "patterns=[*.do/*, api.do/*] workers=0>"
    )
    assert repr(Settings.load(None, {}, host="::1")).count("listen=[::1]:8787") == 1
    assert repr(RoutePattern.parse("*.do/*", "do")) == "RoutePattern('*.do/*', zone_name='do')"


def test_full_toml_sets_every_key() -> None:
    settings = Settings.load(FULL, {})

    assert settings.environment == "staging"  # "Staging" in the file, lower-cased
    assert settings.namespace == "dotdo-staging"
    assert dict(settings.bindings) == {
        "PRODUCTION": "dotdo-production",
        "STAGING": "dotdo-staging",
        "PREVIEW_2": "dotdo-preview",
    }
    assert settings.environments == ("production", "staging", "preview_2")
    assert [p.pattern for p in settings.route_patterns] == ["*.do/*", "https://api.do/v1/*"]
    assert settings.enforce_route_patterns is True
    assert settings.routing == RoutingConfig(
        zone="do",
        services=services("gateway", "db", "auth", "billing"),
        path_base="/v1",
        path_services=services("db", "auth"),
        default_hosts=("do", "api.do"),
        default_service=ServiceName("gateway"),
        aliases=MappingProxyType({"database.do": ServiceName("db")}),
        paths=MappingProxyType({"/billing": ServiceName("billing")}),
        versioned_subdomains=False,
    )
    assert settings.own_hosts == {"localhost", "dispatcher.internal"}
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.store_url == "sqlite:////var/lib/dispatcher/registry.db"
    assert settings.sync_interval == 0.5
    assert settings.limits == Limits(
        max_request_line=4096,
        max_header_line=4096,
        max_header_bytes=16384,
        max_headers=50,
        header_timeout=5.0,
        body_idle_timeout=15.5,
        keepalive_timeout=120.0,
        max_body_bytes=0,
        write_high_water=131072,
    )
    assert isinstance(settings.limits.header_timeout, float)
    assert settings.workers == {
        "dotdo-staging": {
            "echo": AppTarget("dispatcher.echo:app"),
            "gateway": AppTarget("tests.apps:gateway"),
        },
        "dotdo-production": {"echo": AppTarget("dispatcher.echo:app")},
    }


@pytest.mark.parametrize(
    ("host", "path", "worker"),
    [
        ("database.do", "/", "db"),
        ("api.do", "/v1/db/query", "db"),
        ("api.do", "/billing/invoices", "billing"),
        ("api.do", "/api/db/query", "gateway"),
        ("v2.db.do", "/", None),  # versioned_subdomains = false
    ],
)
def test_full_toml_route_table(host: str, path: str, worker: str | None) -> None:
    match = Settings.load(FULL, {}).routes.resolve(host, path)
    assert (match.worker if match else None) == worker


def test_settings_are_frozen() -> None:
    settings = Settings.load(None, {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.bindings["X"] = NamespaceName("x")  # type: ignore[index]


# --- Environment ---


@pytest.mark.parametrize(
    ("value", "environment", "namespace"),
    [
        ("production", "production", "dotdo-production"),
        ("staging", "staging", "dotdo-staging"),
        ("development", "development", "dotdo-development"),
        ("STAGING", "staging", "dotdo-staging"),
        ("", "production", "dotdo-production"),  # empty counts as unset: the file's value
    ],
)
def test_environment_variable_overrides_vars(value: str, environment: str, namespace: str) -> None:
    settings = Settings.load(SEED, {"ENVIRONMENT": value})
    assert (settings.environment, settings.namespace) == (environment, namespace)


@pytest.mark.parametrize(
    ("file_value", "environment"),
    [("production", "production"), ("Staging", "staging"), ("DEVELOPMENT", "development")],
)
def test_each_environment_in_the_file_picks_its_namespace(
    tmp_path: Path, file_value: str, environment: str
) -> None:
    path = write(tmp_path, "d.toml", f'[vars]\nENVIRONMENT = "{file_value}"\n')
    settings = Settings.load(path, {})
    assert settings.environment == environment
    assert settings.namespace == f"dotdo-{environment}"


def test_custom_binding_is_an_environment() -> None:
    settings = Settings.load(FULL, {"ENVIRONMENT": "preview_2"})
    assert (settings.environment, settings.namespace) == ("preview_2", "dotdo-preview")


def test_bad_environment_from_the_variable() -> None:
    assert load_error(SEED, {"ENVIRONMENT": "prod"}) == (
        "ENVIRONMENT (environment variable): Namespace not found for environment: prod; must be "
        "one of the bound environments production, staging, development (got 'prod')"
    )


def test_bad_environment_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dispatcher.toml", '[vars]\nENVIRONMENT = "Prod"\n')
    assert load_error(path) == (
        f"{path}: vars.ENVIRONMENT: Namespace not found for environment: prod; must be one of "
        "the bound environments production, staging, development (got 'Prod')"
    )


def test_vars_are_checked_even_when_the_variable_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "d.toml", "[vars]\nENVIRONMENT = 1\n")
    assert load_error(path, {"ENVIRONMENT": "staging"}) == (
        f"{path}: vars.ENVIRONMENT: expected a string, got a number (1)"
    )


def test_default_environment_must_be_bound(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.toml",
        '[[dispatch_namespaces]]\nbinding = "PRODUCTION"\nnamespace = "dotdo-production"\n',
    )
    assert load_error(path) == (
        f"{path}: vars.ENVIRONMENT (unset, default): Namespace not found for environment: "
        "development; must be one of the bound environments production (got 'development')"
    )
    assert Settings.load(path, {"ENVIRONMENT": "production"}).namespace == "dotdo-production"


def test_default_bindings_are_read_only() -> None:
    assert dict(DEFAULT_BINDINGS) == SEED_BINDINGS
    assert isinstance(DEFAULT_BINDINGS, MappingProxyType)


# --- Every validation error: (file name, content, fragment of the message after "<path>: ") ---

NS = '[[dispatch_namespaces]]\nbinding = "{b}"\nnamespace = "{n}"\n'
SERVICES = '[routing]\nservices = ["gateway", "db"]\n'

VALIDATION_ERRORS: Final = [
    # file level
    (
        "d.toml",
        "rout = []\n",
        "rout: unknown key (expected one of admin, dispatch_namespaces, limits, proxy, routes, "
        "routing, server, store, vars, workers)",
    ),
    ("d.toml", "name = 'dispatcher'\n", "name: unknown key"),
    ("d.toml", "a = = 1\n", "invalid TOML: Invalid value (at line 1, column 5)"),
    (
        "d.toml",
        "[vars]\nENVIRONMENT = 1979-05-27\n",
        "vars.ENVIRONMENT: expected a string, got a date",
    ),
    ("d.toml", 'vars = "production"\n', "vars: expected a table, got a string ('production')"),
    (
        "d.toml",
        "[vars]\nENVIRONMENT = 1\n",
        "vars.ENVIRONMENT: expected a string, got a number (1)",
    ),
    # dispatch_namespaces
    (
        "d.toml",
        'dispatch_namespaces = "PRODUCTION"\n',
        "dispatch_namespaces: expected an array of tables, got a string ('PRODUCTION')",
    ),
    (
        "d.toml",
        "dispatch_namespaces = []\n",
        "dispatch_namespaces: must bind at least one namespace",
    ),
    (
        "d.toml",
        'dispatch_namespaces = ["PRODUCTION"]\n',
        "dispatch_namespaces[0]: expected a table, got a string ('PRODUCTION')",
    ),
    (
        "d.toml",
        '[[dispatch_namespaces]]\nnamespace = "dotdo-production"\n',
        "dispatch_namespaces[0].binding: is required",
    ),
    (
        "d.toml",
        '[[dispatch_namespaces]]\nbinding = "PRODUCTION"\n',
        "dispatch_namespaces[0].namespace: is required",
    ),
    (
        "d.toml",
        NS.format(b="production", n="dotdo-production"),
        "dispatch_namespaces[0].binding: must be an upper-case name such as PRODUCTION "
        "([A-Z][A-Z0-9_]*) (got 'production')",
    ),
    (
        "d.toml",
        NS.format(b="1PROD", n="dotdo-production"),
        "dispatch_namespaces[0].binding: must be an upper-case name",
    ),
    (
        "d.toml",
        NS.format(b="PRODUCTION", n="Dotdo_Production"),
        "dispatch_namespaces[0].namespace: namespace name must be 1 to 63 characters of a-z, 0-9 "
        "and '-', not starting or ending with '-' (got 'Dotdo_Production')",
    ),
    (
        "d.toml",
        NS.format(b="PRODUCTION", n="a") + NS.format(b="PRODUCTION", n="b"),
        "dispatch_namespaces[1].binding: binding PRODUCTION is declared twice",
    ),
    (
        "d.toml",
        NS.format(b="PRODUCTION", n="a") + NS.format(b="STAGING", n="a"),
        "dispatch_namespaces[1].namespace: namespace 'a' is already bound to another binding",
    ),
    (
        "d.toml",
        NS.format(b="PRODUCTION", n="a") + 'outbound = { service = "x" }\n',
        "dispatch_namespaces[0].outbound: unknown key (expected one of binding, namespace)",
    ),
    # routes
    ("d.toml", 'routes = "*.do/*"\n', "routes: expected an array of tables, got a string"),
    ("d.toml", '[[routes]]\npattern = "*.do/*"\n', "routes[0].zone_name: is required"),
    ("d.toml", '[[routes]]\nzone_name = "do"\n', "routes[0].pattern: is required"),
    (
        "d.toml",
        '[[routes]]\npattern = "api.do"\nzone_name = "do"\n',
        "routes[0].pattern: needs a path after the host, as in 'api.do/*' (got 'api.do')",
    ),
    (
        "d.toml",
        '[[routes]]\npattern = "*.do/*"\nzone_name = "do"\n'
        '[[routes]]\npattern = "api.do/*"\nzone_name = "example.com"\n',
        "routes[1].zone_name: host 'api.do' is not in zone 'example.com'",
    ),
    (
        "d.toml",
        '[[routes]]\npattern = "api.do/*"\nzone_name = "do"\ncustom_domain = "yes"\n',
        "routes[0].custom_domain: expected a boolean, got a string ('yes')",
    ),
    (
        "d.toml",
        '[[routes]]\npattern = "api.do/*"\nzone_name = "do"\nzone_id = "abc"\n',
        "routes[0].zone_id: unknown key (expected one of custom_domain, pattern, zone_name)",
    ),
    # routing: keys and types
    ("d.toml", "[routing]\nservice = []\n", "routing.service: unknown key"),
    (
        "d.toml",
        '[routing]\nservices = "gateway"\n',
        "routing.services: expected an array of strings, got a string ('gateway')",
    ),
    (
        "d.toml",
        '[routing]\nservices = ["gateway", 2]\n',
        "routing.services[1]: expected a string, got a number (2)",
    ),
    (
        "d.toml",
        '[routing]\nservices = ["DB"]\n',
        "routing.services[0]: service name must be 1 to 63 characters",
    ),
    (
        "d.toml",
        '[routing]\nservices = ["db", "db"]\n',
        "routing.services[1]: service 'db' is listed twice",
    ),
    (
        "d.toml",
        '[routing]\nversioned_subdomains = "yes"\n',
        "routing.versioned_subdomains: expected a boolean, got a string ('yes')",
    ),
    # routing: hosts must be canonical
    (
        "d.toml",
        '[routing]\nzone = "DO"\n',
        "routing.zone: host must be canonical (lower-case, no port, no trailing dot): write 'do' "
        "(got 'DO')",
    ),
    ("d.toml", '[routing]\nzone = "a b"\n', "routing.zone: invalid host 'a b'"),
    (
        "d.toml",
        '[routing]\ndefault_hosts = ["do", "api.do:443"]\n',
        "routing.default_hosts[1]: host must be canonical (lower-case, no port, no trailing dot): "
        "write 'api.do' (got 'api.do:443')",
    ),
    (
        "d.toml",
        '[routing]\ndefault_hosts = ["api.do."]\n',
        "routing.default_hosts[0]: host must be canonical",
    ),
    (
        "d.toml",
        '[routing]\nown_hosts = ["LOCALHOST"]\n',
        "routing.own_hosts[0]: host must be canonical (lower-case, no port, no trailing dot): "
        "write 'localhost' (got 'LOCALHOST')",
    ),
    (
        "d.toml",
        '[routing.aliases]\n"Database.do" = "db"\n',
        "routing.aliases['Database.do']: host must be canonical",
    ),
    # routing: paths must be canonical
    (
        "d.toml",
        '[routing]\npath_base = "api"\n',
        "routing.path_base: invalid path 'api': request target must be a path starting with '/'",
    ),
    (
        "d.toml",
        '[routing]\npath_base = "/api/./v1"\n',
        "routing.path_base: path must be canonical (see normalize): write '/api/v1' "
        "(got '/api/./v1')",
    ),
    (
        "d.toml",
        '[routing.paths]\n"/a//b" = "db"\n',
        "routing.paths['/a//b']: path must be canonical (see normalize): write '/a/b'",
    ),
    # routing: every named service is declared
    (
        "d.toml",
        '[routing.aliases]\n"database.do" = "dbx"\n',
        "routing.aliases['database.do']: service 'dbx' is not declared in routing.services",
    ),
    (
        "d.toml",
        '[routing.aliases]\n"database.do" = 1\n',
        "routing.aliases['database.do']: expected a service name, got a number (1)",
    ),
    (
        "d.toml",
        '[routing.aliases]\n"database.do" = "DB"\n',
        "routing.aliases['database.do']: service name must be 1 to 63 characters",
    ),
    (
        "d.toml",
        '[routing.paths]\n"/v2/x" = "x"\n',
        "routing.paths['/v2/x']: service 'x' is not declared in routing.services",
    ),
    (
        "d.toml",
        SERVICES + 'path_services = ["db", "billing"]\n',
        "routing.path_services[1]: service 'billing' is not declared in routing.services",
    ),
    (
        "d.toml",
        SERVICES + 'default_service = "web"\n',
        "routing.default_service: service 'web' is not declared in routing.services",
    ),
    (
        "d.toml",
        "[routing]\ndefault_service = true\n",
        "routing.default_service: expected a service name, or false to disable, got a boolean "
        "(true)",
    ),
    # routing: conflicts found when the table is compiled at load
    (
        "d.toml",
        '[routing.aliases]\n"db.do" = "auth"\n',
        "duplicate route: host db.do (routing.aliases['db.do']) is already claimed by host db.do "
        "-> db (routing.services['db'])",
    ),
    (
        "d.toml",
        '[routing]\ndefault_hosts = ["db.do"]\n',
        "duplicate route: default for host db.do (routing.default_hosts) is already claimed by "
        "host db.do -> db (routing.services['db'])",
    ),
    (
        "d.toml",
        '[routing.paths]\n"/api/db" = "auth"\n',
        "duplicate route: path /api/db and /api/db/... on any host (routing.paths['/api/db']) is "
        "already claimed by path /api/db and /api/db/... on any host -> db "
        "(routing.path_services['db'])",
    ),
    (
        "d.toml",
        '[routing.paths]\n"/billing/" = "db"\n',
        "path prefix '/billing/' (routing.paths['/billing/']) must start with '/', name at least "
        "one segment and not end with '/'",
    ),
    (
        "d.toml",
        "[routing]\nenforce_route_patterns = true\nroutes = []\n",
        "routing.routes: unknown key",
    ),
    (
        "d.toml",
        "routes = []\n[routing]\nenforce_route_patterns = true\n",
        "routing.enforce_route_patterns: is true but routes is empty, so every request would be "
        "refused",
    ),
    # server
    (
        "d.toml",
        "[server]\nport = 70000\n",
        "server.port: must be an integer from 0 to 65535 (got 70000)",
    ),
    (
        "d.toml",
        '[server]\nport = "8080"\n',
        "server.port: must be an integer from 0 to 65535 (got '8080')",
    ),
    (
        "d.toml",
        "[server]\nport = true\n",
        "server.port: must be an integer from 0 to 65535 (got True)",
    ),
    (
        "d.toml",
        '[server]\nhost = ""\n',
        "server.host: must be a host name or IP address to listen on (got '')",
    ),
    ("d.toml", "[server]\nhost = 127\n", "server.host: expected a string, got a number (127)"),
    (
        "d.toml",
        "[server]\nprocesses = 2\n",
        "server.processes: unknown key (expected one of host, port)",
    ),
    # store
    (
        "d.toml",
        '[store]\nurl = "redis://localhost/0"\n',
        "store.url: unsupported store scheme 'redis'",
    ),
    (
        "d.toml",
        '[store]\nurl = "sqlite://registry.db"\n',
        "store.url: expected sqlite:///path, got 'sqlite://registry.db'",
    ),
    ("d.toml", '[store]\nurl = ""\n', "store.url: must not be empty"),
    (
        "d.toml",
        "[store]\nsync_interval = 0\n",
        "store.sync_interval: must be a number of seconds from 0.01 to 60 (got 0)",
    ),
    (
        "d.toml",
        "[store]\nsync_interval = 61\n",
        "store.sync_interval: must be a number of seconds from 0.01 to 60 (got 61)",
    ),
    (
        "d.toml",
        "[store]\npath = 'x.db'\n",
        "store.path: unknown key (expected one of sync_interval, timeout, url)",
    ),
    # limits (the values themselves: test_limits_validation)
    ("d.toml", "[limits]\nmax_header = 10\n", "limits.max_header: unknown key"),
    ("d.toml", "limits = 10\n", "limits: expected a table, got a number (10)"),
    # workers
    (
        "d.toml",
        '[workers.dotdo-preview]\necho = { app = "dispatcher.echo:app" }\n',
        "workers.dotdo-preview: namespace 'dotdo-preview' is not bound (bound namespaces: "
        "dotdo-production, dotdo-staging, dotdo-development)",
    ),
    (
        "d.toml",
        "[workers]\ndotdo-staging = 1\n",
        "workers.dotdo-staging: expected a table, got a number (1)",
    ),
    (
        "d.toml",
        '[workers.dotdo-staging]\nEcho = { app = "dispatcher.echo:app" }\n',
        "workers.dotdo-staging.Echo: worker name must be 1 to 63 characters",
    ),
    (
        "d.toml",
        '[workers.dotdo-staging]\necho = { app = "echo" }\n',
        "workers.dotdo-staging.echo.app must look like 'package.module:attribute' (got 'echo')",
    ),
    (
        "d.toml",
        '[workers.dotdo-staging]\necho = { url = "ftp://127.0.0.1:9000" }\n',
        "workers.dotdo-staging.echo.url: scheme must be one of http, https, http+unix "
        "(got 'ftp://127.0.0.1:9000')",
    ),
    (
        "d.toml",
        '[workers.dotdo-staging]\necho = "dispatcher.echo:app"\n',
        "workers.dotdo-staging.echo: a worker spec must be a table/object",
    ),
    # JSON and JSONC: syntax errors name line and column; known sections are strict
    (
        "d.jsonc",
        '{\n  "routes": [\n    { "pattern" "x" }\n  ]\n}\n',
        "invalid JSON at line 3, column 17: Expecting ':' delimiter",
    ),
    (
        "d.jsonc",
        "{\n  /* a comment\n   * that never ends\n}\n",
        "invalid JSON at line 2, column 3: unterminated /* comment",
    ),
    (
        "d.jsonc",
        '/* two\nlines */ {\n  "vars": { "ENVIRONMENT": production }\n}\n',
        "invalid JSON at line 3, column 28: Expecting value",
    ),
    ("d.jsonc", '{\n  "vars": {},\n  "vars": {}\n}\n', "invalid JSON: duplicate key 'vars'"),
    ("d.json", '{"limits": {"header_timeout": NaN}}', "invalid JSON: NaN is not a JSON value"),
    ("d.json", '[{"vars": {}}]', "the top level must be an object, got an array"),
    ("d.json", '{"vars": {"ENVIRONMENT": null}}', "vars.ENVIRONMENT: expected a string, got null"),
    ("d.json", '{"routing": {"zone": 1}}', "routing.zone: expected a string, got a number (1)"),
    ("d.json", '{"routing": {"zones": "do"}}', "routing.zones: unknown key"),
    (
        "d.json",
        '{"dispatch_namespaces": {"PRODUCTION": "dotdo-production"}}',
        "dispatch_namespaces: expected an array of tables, got a table",
    ),
    (
        "d.jsonc",
        '{"routes": [{"pattern": "*.do/*", "zone_name": "do", "custom_domain": 1}]}',
        "routes[0].custom_domain: expected a boolean, got a number (1)",
    ),
]


@pytest.mark.parametrize(("name", "content", "message"), VALIDATION_ERRORS)
def test_validation_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = write(tmp_path, name, content)
    error = load_error(path)
    assert error.startswith(f"{path}: ")
    assert message in error


# --- Files ---


def test_missing_file() -> None:
    assert load_error("/nonexistent/dispatcher.toml") == (
        "/nonexistent/dispatcher.toml: cannot read the config file: No such file or directory"
    )


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "conf.toml").mkdir()
    assert load_error(str(tmp_path / "conf.toml")) == (
        f"{tmp_path / 'conf.toml'}: cannot read the config file: Is a directory"
    )


@pytest.mark.parametrize(
    ("name", "shown"), [("dispatcher.yaml", "'.yaml'"), ("dispatcher", "'(no extension)'")]
)
def test_unsupported_file_type(tmp_path: Path, name: str, shown: str) -> None:
    path = write(tmp_path, name, "")
    assert load_error(path) == (
        f"{path}: unsupported config file type {shown}; use .toml, .json or .jsonc"
    )


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_bytes(b"\xff[vars]\n")
    assert load_error(str(path)) == f"{path}: not valid UTF-8 (byte 0)"


@pytest.mark.parametrize("name", ["d.toml", "d.json", "d.jsonc", "D.TOML"])
def test_empty_document_means_defaults(tmp_path: Path, name: str) -> None:
    content = "{}" if "json" in name else ""
    path = write(tmp_path, name, content)
    assert replace(Settings.load(path, {}), config_path=None) == Settings.load(None, {})


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonc"
    path.write_bytes(b'\xef\xbb\xbf{"vars": {"ENVIRONMENT": "staging"}}')
    assert Settings.load(str(path), {}).environment == "staging"


@pytest.mark.parametrize(
    ("name", "content", "language"),
    [
        ("d.json", '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON"),
        ("d.toml", "x = " + "[" * 100_000 + "]" * 100_000, "TOML"),
    ],
)
def test_deep_nesting_is_a_config_error(
    tmp_path: Path, name: str, content: str, language: str
) -> None:
    path = write(tmp_path, name, content)
    assert load_error(path) == f"{path}: invalid {language}: nested too deeply"


# --- JSONC ---


def test_comment_markers_inside_strings_are_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonc",
        "{\n"
        '  "note": "say \\"hi\\" // not a comment, /* nor this */",\n'
        '  "store": { "url": "sqlite:///data/*x*/y//registry.db" }, // a comment\n'
        '  "vars": { "ENVIRONMENT": "staging" }\n'
        "}\n",
    )
    settings = Settings.load(path, {})
    assert settings.store_url == "sqlite:///data/*x*/y//registry.db"
    assert settings.environment == "staging"


def test_trailing_commas_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonc",
        "{\n"
        '  "dispatch_namespaces": [\n'
        '    { "binding": "STAGING", "namespace": "dotdo-staging", },\n'
        '    { "binding": "PRODUCTION", "namespace": "dotdo-production" }, // last one\n'
        "  ],\n"
        '  "vars": { "ENVIRONMENT": "staging", /* done */ },\n'
        '  "routing": { "services": ["gateway", "db",], "path_services": ["db",\n], },\n'
        "} // end",
    )
    settings = Settings.load(path, {})
    assert dict(settings.bindings) == {"STAGING": "dotdo-staging", "PRODUCTION": "dotdo-production"}
    assert settings.routing.services == ("gateway", "db")
    assert settings.routing.path_services == ("db",)


def test_unknown_top_level_keys_are_ignored_in_jsonc_only(tmp_path: Path) -> None:
    jsonc = write(tmp_path, "d.jsonc", '{"name": "dispatcher", "main": "src/index.ts"}')
    toml = write(tmp_path, "d.toml", 'name = "dispatcher"\n')
    assert Settings.load(jsonc, {}).environment == "development"
    assert load_error(toml).startswith(f"{toml}: name: unknown key")


# --- Route patterns ---


@pytest.mark.parametrize(
    ("pattern", "zone", "host", "path", "expected"),
    [
        ("*.do/*", "do", "db.do", "/query", True),
        ("*.do/*", "do", "a.b.do", "/", True),
        ("*.do/*", "do", "do", "/", False),
        ("*.do/*", "do", "xdo", "/", False),
        ("*.do/*", "do", "db.dox", "/", False),
        ("*do/*", "do", "do", "/", True),
        ("*do/*", "do", "xdo", "/a", True),
        ("*do/*", "do", "db.do", "/a/b", True),
        ("*do/*", "do", "od", "/", False),
        ("api.do/*", "do", "api.do", "/", True),
        ("api.do/*", "do", "api.do", "/anything/deep", True),
        ("api.do/*", "do", "v2.api.do", "/", False),
        ("api.do/*", "do", "do", "/", False),
        ("https://example.com/api/*", "example.com", "example.com", "/api/x", True),
        ("https://example.com/api/*", "example.com", "example.com", "/api/", True),
        ("https://example.com/api/*", "example.com", "example.com", "/api", False),
        ("https://example.com/api/*", "example.com", "example.com", "/apix", False),
        ("https://example.com/api/*", "example.com", "www.example.com", "/api/x", False),
        ("example.com/api*", "example.com", "example.com", "/api", True),
        ("example.com/api*", "example.com", "example.com", "/apiary", True),
        ("example.com/api*", "example.com", "example.com", "/ap", False),
        ("http://example.com/exact", "example.com", "example.com", "/exact", True),
        ("http://example.com/exact", "example.com", "example.com", "/exact/", False),
        ("http://example.com/exact", "example.com", "example.com", "/exact/x", False),
        ("*.example.com/static/*", "example.com", "cdn.example.com", "/static/a.css", True),
        ("*.example.com/static/*", "example.com", "example.com", "/static/a.css", False),
        ("*.api.do/*", "api.do", "v2.api.do", "/", True),
    ],
)
def test_route_pattern_matches(
    pattern: str, zone: str, host: str, path: str, expected: bool
) -> None:
    assert RoutePattern.parse(pattern, zone).matches(host, path) is expected


@pytest.mark.parametrize(
    ("pattern", "zone", "description"),
    [
        ("*.do/*", "do", "*.do/* (zone do): subdomains of do, any path"),
        ("*do/*", "do", "*do/* (zone do): hosts ending in do, any path"),
        (
            "https://example.com/api/*",
            "example.com",
            "https://example.com/api/* (zone example.com): host example.com, paths starting with "
            "/api/, https only",
        ),
        (
            "example.com/exact",
            "example.com",
            "example.com/exact (zone example.com): host example.com, path /exact",
        ),
    ],
)
def test_route_pattern_describe(pattern: str, zone: str, description: str) -> None:
    assert RoutePattern.parse(pattern, zone).describe() == description


@pytest.mark.parametrize(
    ("pattern", "zone", "message"),
    [
        (
            "api.do",
            "do",
            "routes[3].pattern: needs a path after the host, as in 'api.do/*' (got 'api.do')",
        ),
        (
            "ftp://api.do/*",
            "do",
            "routes[3].pattern: the scheme, if any, must be http:// or https:// "
            "(got 'ftp://api.do/*')",
        ),
        ("api.*.do/*", "do", "routes[3].pattern: '*' may only begin the host (got 'api.*.do/*')"),
        ("**.do/*", "do", "routes[3].pattern: '*' may only begin the host"),
        ("*/*", "do", "routes[3].pattern: needs a host, as in '*.do/*' (got '*/*')"),
        ("/*", "do", "routes[3].pattern: needs a host"),
        ("*./*", "do", "routes[3].pattern: needs a host"),
        (
            "API.do/*",
            "do",
            "routes[3].pattern: the host must be lower-case, with no port and no trailing dot "
            "(got 'API.do/*')",
        ),
        ("api.do:8080/*", "do", "routes[3].pattern: the host must be lower-case"),
        ("api.do./*", "do", "routes[3].pattern: the host must be lower-case"),
        ("a b.do/*", "do", "routes[3].pattern: invalid host 'a b.do' (got 'a b.do/*')"),
        ("user@api.do/*", "do", "routes[3].pattern: invalid host 'user@api.do'"),
        ("api.do/a*b/*", "do", "routes[3].pattern: '*' may only end the path"),
        ("api.do/*/x", "do", "routes[3].pattern: '*' may only end the path"),
        (
            "api.do/x?y=1",
            "do",
            "routes[3].pattern: a route pattern has no query or fragment (got 'api.do/x?y=1')",
        ),
        ("api.do/x#y", "do", "routes[3].pattern: a route pattern has no query or fragment"),
        (
            "api.do//x/*",
            "do",
            "routes[3].pattern: the path must be canonical: write '/x/' (got 'api.do//x/*')",
        ),
        ("api.do/a/../b", "do", "routes[3].pattern: the path must be canonical: write '/b'"),
        ("api.do/a b", "do", "routes[3].pattern: invalid path: request path contains a forbidden"),
        (
            "api.do/*",
            "example.com",
            "routes[3].zone_name: host 'api.do' is not in zone 'example.com'",
        ),
        ("api.do/*", "pi.do", "routes[3].zone_name: host 'api.do' is not in zone 'pi.do'"),
        ("*.do/*", "api.do", "routes[3].zone_name: host 'do' is not in zone 'api.do'"),
        ("api.do/*", "DO", "routes[3].zone_name: invalid zone 'DO'"),
        ("api.do/*", "", "routes[3].zone_name: invalid zone ''"),
    ],
)
def test_invalid_route_patterns(pattern: str, zone: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        RoutePattern.parse(pattern, zone, where="routes[3]")
    assert str(excinfo.value).startswith(message)


def test_route_pattern_error_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "wrangler.jsonc", '{"routes": [{"pattern": "api.do/x?y", "zone_name": "do"}]}'
    )
    assert load_error(path) == (
        f"{path}: routes[0].pattern: a route pattern has no query or fragment (got 'api.do/x?y')"
    )


def test_custom_domain_is_accepted_and_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonc",
        '{"routes": [{"pattern": "api.do/*", "zone_name": "do", "custom_domain": true}]}',
    )
    assert Settings.load(path, {}).route_patterns == (RoutePattern.parse("api.do/*", "do"),)


# --- Store ---


@pytest.mark.parametrize(
    ("config", "environ", "store_url"),
    [
        (None, {}, DEFAULT_STORE_URL),
        (None, {"DISPATCHER_STORE": "sqlite:///tmp/r.db"}, "sqlite:///tmp/r.db"),
        (FULL, {}, "sqlite:////var/lib/dispatcher/registry.db"),
        (FULL, {"DISPATCHER_STORE": "sqlite:///tmp/r.db"}, "sqlite:///tmp/r.db"),
        (FULL, {"DISPATCHER_STORE": "registry.db"}, "registry.db"),
        (FULL, {"DISPATCHER_STORE": ""}, "sqlite:////var/lib/dispatcher/registry.db"),
    ],
)
def test_dispatcher_store_overrides_the_file(
    config: str | None, environ: dict[str, str], store_url: str
) -> None:
    assert Settings.load(config, environ).store_url == store_url


def test_invalid_dispatcher_store() -> None:
    assert load_error(FULL, {"DISPATCHER_STORE": "sqlite://r.db"}) == (
        "DISPATCHER_STORE: expected sqlite:///path, got 'sqlite://r.db'"
    )
    assert load_error(FULL, {"DISPATCHER_STORE": "redis://h/0"}).startswith(
        "DISPATCHER_STORE: unsupported store scheme 'redis'"
    )


# --- Server: file, then the keyword arguments ---


@pytest.mark.parametrize(
    ("config", "host", "port", "expected"),
    [
        (None, None, None, ("127.0.0.1", 8787)),
        (FULL, None, None, ("0.0.0.0", 9000)),
        (FULL, "::1", None, ("::1", 9000)),
        (FULL, None, 0, ("0.0.0.0", 0)),
        (None, "localhost", 65535, ("localhost", 65535)),
    ],
)
def test_listen_address(
    config: str | None, host: str | None, port: int | None, expected: tuple[str, int]
) -> None:
    settings = Settings.load(config, {}, host=host, port=port)
    assert (settings.host, settings.port) == expected


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        (None, 70000, "--port: must be an integer from 0 to 65535 (got 70000)"),
        (None, -1, "--port: must be an integer from 0 to 65535 (got -1)"),
        (None, True, "--port: must be an integer from 0 to 65535 (got True)"),
        ("", None, "--host: must be a host name or IP address to listen on (got '')"),
        ("a b", None, "--host: must be a host name or IP address to listen on (got 'a b')"),
    ],
)
def test_invalid_listen_arguments(host: str | None, port: int | None, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(None, {}, host=host, port=port)
    assert str(excinfo.value) == message


# --- Limits ---

GIB: Final = 1024**3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_request_line = 0", "must be an integer from 1 to 1073741824 (got 0)"),
        ("max_header_line = -1", "must be an integer from 1 to 1073741824 (got -1)"),
        (f"max_header_bytes = {GIB + 1}", f"must be an integer from 1 to {GIB} (got {GIB + 1})"),
        ("max_headers = 10001", "must be an integer from 1 to 10000 (got 10001)"),
        ("max_headers = 100.0", "must be an integer from 1 to 10000 (got 100.0)"),
        ("max_headers = true", "must be an integer from 1 to 10000 (got True)"),
        ('write_high_water = "64k"', "must be an integer from 1 to 1073741824 (got '64k')"),
        ("header_timeout = 0", "must be a number of seconds from 0.001 to 86400 (got 0)"),
        ("body_idle_timeout = -5.0", "must be a number of seconds from 0.001 to 86400 (got -5.0)"),
        (
            "keepalive_timeout = 86401",
            "must be a number of seconds from 0.001 to 86400 (got 86401)",
        ),
        ("keepalive_timeout = inf", "must be a number of seconds from 0.001 to 86400 (got inf)"),
        ("keepalive_timeout = nan", "must be a number of seconds from 0.001 to 86400 (got nan)"),
        ("header_timeout = true", "must be a number of seconds from 0.001 to 86400 (got True)"),
        ('header_timeout = "10s"', "must be a number of seconds from 0.001 to 86400 (got '10s')"),
        ("max_body_bytes = -1", "must be an integer >= 0 (0 means unlimited) (got -1)"),
        ("max_body_bytes = 1.5", "must be an integer >= 0 (0 means unlimited) (got 1.5)"),
    ],
)
def test_limits_validation(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "d.toml", f"[limits]\n{line}\n")
    key = line.split(" = ")[0]
    assert load_error(path) == f"{path}: limits.{key}: {message}"


@pytest.mark.parametrize(
    ("line", "limits"),
    [
        ("max_body_bytes = 0", Limits(max_body_bytes=0)),
        (f"max_body_bytes = {5 * GIB}", Limits(max_body_bytes=5 * GIB)),
        (f"max_header_bytes = {GIB}", Limits(max_header_bytes=GIB)),
        ("header_timeout = 1", Limits(header_timeout=1.0)),
        ("keepalive_timeout = 86400", Limits(keepalive_timeout=86400.0)),
        ("body_idle_timeout = 0.001", Limits(body_idle_timeout=0.001)),
    ],
)
def test_limits_accepted(tmp_path: Path, line: str, limits: Limits) -> None:
    path = write(tmp_path, "d.toml", f"[limits]\n{line}\n")
    assert Settings.load(path, {}).limits == limits


@pytest.mark.parametrize(("value", "expected"), [("0.01", 0.01), ("60", 60.0), ("1.5", 1.5)])
def test_sync_interval_bounds(tmp_path: Path, value: str, expected: float) -> None:
    path = write(tmp_path, "d.toml", f"[store]\nsync_interval = {value}\n")
    assert Settings.load(path, {}).sync_interval == expected


# --- Routing defaults when services are declared ---


@pytest.mark.parametrize(
    ("table", "path_services", "default_service"),
    [
        ('services = ["gateway", "db"]', ("db",), "gateway"),
        ('services = ["web"]', (), None),
        ('services = ["web"]\ndefault_service = "web"', (), "web"),
        ("default_service = false", ("db", "auth", "schedule"), None),
        ('default_service = ""', ("db", "auth", "schedule"), None),
    ],
)
def test_service_defaults_follow_declared_services(
    tmp_path: Path, table: str, path_services: tuple[str, ...], default_service: str | None
) -> None:
    path = write(tmp_path, "d.toml", f"[routing]\n{table}\n")
    routing = Settings.load(path, {}).routing
    assert (routing.path_services, routing.default_service) == (path_services, default_service)


# --- Workers ---


def test_workers_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.toml",
        "[workers.dotdo-development]\n"
        'gateway = { app = "tests.apps:gateway" }\n'
        'db-v2 = { app = "tests.apps:db" }\n'
        "[workers.dotdo-production]\n",
    )
    workers = Settings.load(path, {}).workers
    assert workers == {
        NamespaceName("dotdo-development"): {
            WorkerName("gateway"): AppTarget("tests.apps:gateway"),
            WorkerName("db-v2"): AppTarget("tests.apps:db"),
        },
        NamespaceName("dotdo-production"): {},
    }
    assert isinstance(workers, MappingProxyType)
    assert isinstance(workers["dotdo-development"], MappingProxyType)


def test_workers_in_jsonc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonc",
        '{"workers": {"dotdo-staging": {"echo": {"app": "dispatcher.echo:app"}}}}',
    )
    assert Settings.load(path, {}).workers == {
        "dotdo-staging": {"echo": AppTarget("dispatcher.echo:app")}
    }
