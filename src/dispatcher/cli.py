"""The ``dispatcher`` command: ``serve``, ``dev``, ``check``, ``routes``, ``resolve``; and
over the admin API: ``deploy``, ``workers``, ``rollback``, ``undeploy``, ``history``, ``token``.

The only module that calls ``sys.exit`` (through click): configuration errors exit 2 with
one line naming file, key and problem; runtime failures exit 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import click
import uvloop

from dispatcher.admin_client import AdminClient, worker_path
from dispatcher.app import Preparation, RunningDispatcher, running, url_for
from dispatcher.auth import generate_token, hash_token
from dispatcher.errors import (
    AdminClientError,
    BadRequest,
    ConfigError,
    DispatcherError,
    ListenFailed,
    StoreError,
)
from dispatcher.group import ProcessGroup, die_with_supervisor, publish_samples, reserve_port
from dispatcher.logs import LEVELS, configure_logging
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RuleKind
from dispatcher.settings import Settings
from dispatcher.store import RegistryStore
from dispatcher.types import WorkerName
from dispatcher.workers import AppTarget, UpstreamTarget, parse_upstream_url, validate_name

logger = logging.getLogger("dispatcher")


@dataclass(frozen=True, slots=True)
class Member:
    """A serving process of a group: where it publishes its metrics, and whether a reload
    came before it could handle one."""

    metrics_dir: str
    early_sighup: threading.Event


ECHO_APP = "dispatcher.echo:app"
DEV_PORT = 8787


class ConfigProblem(click.ClickException):
    """A configuration error: exit status 2, no traceback."""

    exit_code = 2


class RuntimeProblem(click.ClickException):
    """The dispatcher could not run (store unavailable, port taken): exit status 1."""

    exit_code = 1


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="dispatcher.toml, or the seed's wrangler.jsonc. Default: built-in seed configuration.",
)


log_level_option = click.option(
    "--log-level",
    type=click.Choice(LEVELS),
    default="info",
    show_default=True,
    help="Least severe level logged (JSON lines on stderr).",
)
access_log_option = click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One JSON line per request on the dispatcher.access logger.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dispatcher")
def main() -> None:
    """Dynamic dispatch router: routes each request by host and path to a worker in the
    namespace of the current environment."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default 8787).")
@click.option("--admin-host", default=None, help="Address of the Deploy API (default 127.0.0.1).")
@click.option(
    "--admin-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of the Deploy API (default 8788).",
)
@log_level_option
@access_log_option
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Serving processes sharing the port (SO_REUSEPORT); this one supervises them and "
    "keeps the Deploy API, whose /metrics sums them all.",
)
@click.option("--serving-only", is_flag=True, hidden=True)
@click.option("--metrics-dir", default=None, hidden=True)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    admin_host: str | None,
    admin_port: int | None,
    log_level: str,
    access_log: bool,
    processes: int,
    serving_only: bool,
    metrics_dir: str | None,
) -> None:
    """Serve routed traffic until SIGINT or SIGTERM; SIGHUP reloads the configuration."""
    _configure_logging(log_level)
    _raise_open_files_limit()

    read = _reader(config_path, host=host, port=port, admin_host=admin_host, admin_port=admin_port)

    def load() -> Settings:
        return replace(read(), access_log=access_log)

    if serving_only:
        member = Member(metrics_dir or "", threading.Event())
        # A SIGHUP (the group reloading) may come while this member is still starting: it
        # must not kill it, nor be lost; it is noted and applied once serving.
        signal.signal(signal.SIGHUP, lambda *_: member.early_sighup.set())
        die_with_supervisor()
    settings = _checked(load)
    if serving_only:
        # A member of a process group: the supervisor owns the Deploy API's address.
        admin = replace(settings.admin, host="127.0.0.1", port=0)

        def load_member() -> Settings:
            return replace(load(), admin=admin)

        _run(load_member(), announce=_quiet, load_settings=load_member, member=member)
    elif processes > 1:
        command = [sys.executable, "-m", "dispatcher", "serve", "--serving-only"]
        command += ["--config", config_path] if config_path else []
        command += ["--host", settings.host, "--log-level", log_level]
        command += [] if access_log else ["--no-access-log"]
        _run(settings, announce=_announce_serve, load_settings=load, group=(processes, command))
    else:
        _run(settings, announce=_announce_serve, load_settings=load)


def _raise_open_files_limit() -> None:
    """Every connection is a descriptor (two when proxied): take the hard limit, as nginx's
    worker_rlimit_nofile would, so limits.max_connections is not cut short by EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _checked(load: Callable[[], Settings]) -> Settings:
    try:
        return load()
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc


def _quiet(settings: Settings, url: str) -> None:
    """Group members do not announce themselves: the supervisor did."""


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEV_PORT, show_default=True)
@click.option("--admin-host", default=None, help="Address of the Deploy API (default 127.0.0.1).")
@click.option(
    "--admin-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of the Deploy API (default 8788).",
)
@log_level_option
@access_log_option
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="SERVICE=URL",
    help="Point a service at a local HTTP server, e.g. gateway=http://127.0.0.1:9000 (repeatable).",
)
def dev(
    config_path: str | None,
    host: str,
    port: int,
    admin_host: str | None,
    admin_port: int | None,
    log_level: str,
    access_log: bool,
    upstreams: tuple[str, ...],
) -> None:
    """Local development: every configured service gets an echo worker where none is deployed;
    --upstream points a service at a local HTTP server instead."""
    _configure_logging(log_level)
    settings = _load(
        config_path, host=host, port=port, admin_host=admin_host, admin_port=admin_port
    )
    settings = replace(settings, access_log=access_log)
    pointed = _parse_upstream_options(upstreams, settings)

    async def prepare(store: RegistryStore, settings: Settings) -> None:
        await deploy_upstreams(store, settings, pointed)
        await deploy_missing_echo_workers(store, settings)

    _run(settings, announce=_announce_dev, prepare=prepare)


def _parse_upstream_options(
    options: tuple[str, ...], settings: Settings
) -> dict[WorkerName, UpstreamTarget]:
    pointed: dict[WorkerName, UpstreamTarget] = {}
    for option in options:
        name, sep, url = option.partition("=")
        if not sep:
            raise click.BadParameter(
                f"expected SERVICE=URL, got {option!r}", param_hint="--upstream"
            )
        try:
            validate_name(name, "service name")
            target = UpstreamTarget((parse_upstream_url(url, name),))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--upstream") from exc
        if name not in settings.routes.services:
            known = ", ".join(settings.routes.services)
            raise click.BadParameter(
                f"{name!r} is not a configured service ({known})", param_hint="--upstream"
            )
        pointed[WorkerName(name)] = target
    return pointed


async def deploy_upstreams(
    store: RegistryStore, settings: Settings, pointed: dict[WorkerName, UpstreamTarget]
) -> None:
    """Deploy each ``--upstream`` service whose current target is something else."""
    loaded = await store.load_namespace(settings.namespace)
    current = {d.worker: d.target for d in loaded[1]} if loaded is not None else {}
    for name, target in pointed.items():
        if current.get(name) != target:
            await store.deploy(settings.namespace, name, target, actor="dev")


async def deploy_missing_echo_workers(store: RegistryStore, settings: Settings) -> None:
    """Deploy the echo worker for every configured service that has no worker yet."""
    loaded = await store.load_namespace(settings.namespace)
    deployed = {d.worker for d in loaded[1]} if loaded is not None else set()
    for service in settings.routes.services:
        if WorkerName(service) not in deployed:
            await store.deploy(
                settings.namespace, WorkerName(service), AppTarget(ECHO_APP), actor="dev"
            )


@main.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate the configuration without serving (exit 2 when invalid)."""
    settings = _load(config_path)
    click.echo(
        f"configuration OK: {len(settings.routes.routes)} routes, "
        f"{len(settings.routes.services)} services, environment {settings.environment} "
        f"-> namespace {settings.namespace}"
    )


@main.command()
@config_option
def routes(config_path: str | None) -> None:
    """Print the route table in precedence order, and the Workers route patterns."""
    settings = _load(config_path)
    order = list(RuleKind)
    rows = sorted(settings.routes.routes, key=lambda r: (order.index(r.kind), -len(r.path_prefix)))
    rules = [route.describe() for route in rows]
    targets = [
        f"{r.service}-<version>" if r.kind is RuleKind.SUBDOMAIN else str(r.service) for r in rows
    ]
    rule_width = max([len("rule"), *map(len, rules)])
    target_width = max([len("worker"), *map(len, targets)])
    click.echo(f"{'#':>3}  {'kind':<10} {'rule':<{rule_width}}  {'worker':<{target_width}}  source")
    for number, (route, rule, target) in enumerate(zip(rows, rules, targets, strict=True), 1):
        click.echo(
            f"{number:>3}  {route.kind.value:<10} {rule:<{rule_width}}  "
            f"{target:<{target_width}}  {route.source}"
        )
    enforced = "enforced" if settings.enforce_route_patterns else "not enforced"
    click.echo(f"\nroute patterns ({enforced}):")
    for pattern in settings.route_patterns:
        click.echo(f"  {pattern.describe()}")
    click.echo(f"\nenvironment {settings.environment} -> namespace {settings.namespace}")


@main.command()
@config_option
@click.argument("url")
def resolve(config_path: str | None, url: str) -> None:
    """Show where URL would go: service, worker, rule, environment and namespace."""
    settings = _load(config_path)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        host = normalize_host(parts.netloc.rpartition("@")[2])
        path = normalize_path(parts.path or "/")
    except BadRequest as exc:
        raise click.UsageError(f"{url!r} would be rejected with 400: {exc.message}") from exc
    match = settings.routes.resolve(host, path)
    if match is None:
        click.echo(f"no route: No worker found for {host}{path}")
        click.echo(f"available services: {', '.join(settings.routes.services)}")
        sys.exit(1)
    click.echo(f"service:     {match.service}")
    click.echo(f"worker:      {match.worker}")
    click.echo(
        f"rule:        {match.route.kind.value}: {match.route.describe()} ({match.route.source})"
    )
    click.echo(f"environment: {settings.environment}")
    click.echo(f"namespace:   {settings.namespace}")
    if path != (parts.path or "/"):
        click.echo(f"normalized path: {path}")


def _reader(
    config_path: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    admin_host: str | None = None,
    admin_port: int | None = None,
) -> Callable[[], Settings]:
    """Reads the configuration with these flags, now and again at each reload."""

    def read() -> Settings:
        return Settings.load(
            config_path,
            os.environ,
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port,
        )

    return read


def _load(
    config_path: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    admin_host: str | None = None,
    admin_port: int | None = None,
) -> Settings:
    return _checked(
        _reader(config_path, host=host, port=port, admin_host=admin_host, admin_port=admin_port)
    )


def _run(
    settings: Settings,
    *,
    announce: Callable[[Settings, str], None],
    prepare: Preparation | None = None,
    load_settings: Callable[[], Settings] | None = None,
    group: tuple[int, list[str]] | None = None,
    member: Member | None = None,
) -> None:
    try:
        if group is not None:
            uvloop.run(_supervise(settings, announce, load_settings, *group))
        else:
            uvloop.run(_serve_until_signal(settings, announce, prepare, load_settings, member))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except StoreError as exc:
        raise RuntimeProblem(f"registry store: {exc}") from exc
    except ListenFailed as exc:
        raise RuntimeProblem(str(exc)) from exc
    except OSError as exc:
        raise RuntimeProblem(
            f"cannot listen on {settings.host}:{settings.port}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from exc


async def _serve_until_signal(
    settings: Settings,
    announce: Callable[[Settings, str], None],
    prepare: Preparation | None,
    load_settings: Callable[[], Settings] | None,
    member: Member | None,
) -> None:
    stop = _stop_on_signals()
    async with running(
        settings,
        prepare=prepare,
        load_settings=load_settings,
        reuse_port=member is not None,
    ) as dispatcher:
        _reload_on_sighup(dispatcher)
        publishing = None
        if member is not None:
            if member.early_sighup.is_set():
                os.kill(os.getpid(), signal.SIGHUP)  # the one that came during startup
            publishing = asyncio.create_task(publish_samples(dispatcher.sample, member.metrics_dir))
        announce(settings, dispatcher.url)
        await stop.wait()
        if publishing is not None:
            publishing.cancel()
            with suppress(asyncio.CancelledError):
                await publishing


async def _supervise(
    settings: Settings,
    announce: Callable[[Settings, str], None],
    load_settings: Callable[[], Settings] | None,
    count: int,
    command: list[str],
) -> None:
    """The supervisor of ``serve --processes N``: the port, the admin listener, N members."""
    stop = _stop_on_signals()
    reserved = reserve_port(settings.host, settings.port)
    port = int(reserved.getsockname()[1])
    with reserved, tempfile.TemporaryDirectory(prefix="dispatcher-metrics-") as directory:
        members = ProcessGroup(
            [*command, "--port", str(port), "--metrics-dir", directory],
            count=count,
            metrics_dir=directory,
        )
        async with running(
            settings,
            load_settings=load_settings,
            on_reload=members.reload,
            serve_traffic=False,
            group_samples=members.samples,
        ) as dispatcher:
            _reload_on_sighup(dispatcher)
            async with members:
                announce(settings, url_for(settings.host, port))
                await stop.wait()
                await members.stop(settings.limits.drain_timeout)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _reload_on_sighup(dispatcher: RunningDispatcher) -> None:
    """SIGHUP re-reads the configuration; an invalid one is logged and the old one serves."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await dispatcher.reload()
        except ConfigError as exc:
            logger.error("reload refused; the running configuration keeps serving: %s", exc)
        except DispatcherError as exc:
            logger.error("reload failed; the running configuration keeps serving: %s", exc)

    def start() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, start)


def _announce_serve(settings: Settings, url: str) -> None:
    click.echo(
        f"dispatcher serving {settings.environment} ({settings.namespace}) on {url}", err=True
    )


def _announce_dev(settings: Settings, url: str) -> None:
    services = settings.routes.services
    click.echo(
        f"\ndispatcher dev: {settings.environment} environment, namespace {settings.namespace}, "
        f"echo workers for {', '.join(services)}\nlistening on {url}\n\nTry:\n"
        f"  curl {url}/health\n"
        f"  curl -H 'Host: gateway.do' {url}/hello\n"
        f"  curl -H 'Host: api.do' '{url}/api/db/query?id=1'\n"
        f"  curl -H 'Host: unknown.do' {url}/test      # 404 Service not found\n",
        err=True,
    )


def _configure_logging(level: str) -> None:
    configure_logging(level)


# --- over the admin API ----------------------------------------------------------------------

env_option = click.option(
    "--env",
    "env",
    default=None,
    metavar="ENV",
    help="Environment (production, staging, ...) or namespace. Default: the one the "
    "dispatcher serves.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")


@main.command()
@click.argument("name")
@click.option("--url", "urls", multiple=True, metavar="URL", help="Upstream URL (repeatable).")
@click.option("--app", "app", default=None, metavar="MODULE:ATTR", help="In-process ASGI app.")
@env_option
@click.option("--version", "version_label", default=None, metavar="V", help="Label, e.g. v2.")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable).")
@click.option("--no-preserve-host", is_flag=True, help="Send the upstream's own Host.")
@json_option
def deploy(
    name: str,
    urls: tuple[str, ...],
    app: str | None,
    env: str | None,
    version_label: str | None,
    meta: tuple[str, ...],
    no_preserve_host: bool,
    as_json: bool,
) -> None:
    """Deploy NAME: a new version pointing at --url (or --app)."""
    body = _deploy_body(urls, app, version_label, meta, no_preserve_host)
    with _admin() as client:
        namespace = _namespace(client, env)
        record = client.call("PUT", worker_path(namespace, name), body=body)
    if as_json:
        _print_json(record)
        return
    label = f" ({record['version_label']})" if record.get("version_label") else ""
    click.echo(
        f"deployed {record['worker']} version {record['version']}{label} to "
        f"{record['namespace']}: {_describe_target(record['target'])}"
    )
    if record.get("pinned_worker"):
        click.echo(f"pinned: {record['pinned_worker']} serves {record['version_label']}")
    _warn_if_pending(record)


def _warn_if_pending(answer: object) -> None:
    """A 202 from the Deploy API: committed, but not every replica serves it yet."""
    if isinstance(answer, dict) and answer.get("converged") is False:
        pending = ", ".join(str(p) for p in answer.get("pending_replicas", [])) or "unknown"
        click.echo(
            f"warning: committed as revision {answer.get('revision')}, but these replicas "
            f"did not serve it within the wait: {pending}",
            err=True,
        )


@main.command()
@env_option
@json_option
def workers(env: str | None, as_json: bool) -> None:
    """List the workers deployed in a namespace."""
    with _admin() as client:
        namespace = _namespace(client, env)
        listing = client.call("GET", worker_path(namespace) + "/workers")
    if as_json:
        _print_json(listing)
        return
    rows = [
        [
            d["worker"],
            str(d["version"]),
            d["version_label"] or "-",
            _describe_target(d["target"]),
            _short_time(d["deployed_at"]),
            d["actor"],
        ]
        for d in listing["workers"]
    ]
    if not rows:
        click.echo(f"no workers deployed in {namespace}")
        return
    _print_table(["WORKER", "VERSION", "LABEL", "TARGET", "DEPLOYED", "BY"], rows)


@main.command()
@click.argument("name")
@env_option
@json_option
def rollback(name: str, env: str | None, as_json: bool) -> None:
    """Deploy NAME's previous version again (as a new version)."""
    with _admin() as client:
        namespace = _namespace(client, env)
        record = client.call("POST", worker_path(namespace, name) + "/rollback")
    if as_json:
        _print_json(record)
        return
    restored = record.get("restored_version")
    to = f" to version {restored}" if restored is not None else ""
    click.echo(
        f"rolled back {record['worker']} in {record['namespace']}{to}: now version "
        f"{record['version']}, {_describe_target(record['target'])}"
    )
    _warn_if_pending(record)


@main.command()
@json_option
def reload(as_json: bool) -> None:
    """Re-read the configuration file of the running dispatcher and apply it (as SIGHUP
    does); an invalid file is refused and the running configuration keeps serving."""
    with _admin() as client:
        applied = client.call("POST", "/reload")
    if as_json:
        _print_json(applied)
        return
    click.echo(
        f"reloaded: {applied['routes']} routes, {applied['environment']} "
        f"({applied['namespace']}), revision {applied['revision']}"
    )
    if applied.get("restart_required"):
        click.echo(f"needs a restart to change: {', '.join(applied['restart_required'])}", err=True)


@main.command()
@click.argument("name")
@env_option
def undeploy(name: str, env: str | None) -> None:
    """Remove NAME from a namespace."""
    with _admin() as client:
        namespace = _namespace(client, env)
        answer = client.call("DELETE", worker_path(namespace, name))
    click.echo(f"undeployed {name} from {namespace}")
    _warn_if_pending(answer)


@main.command()
@click.option("--env", "env", default=None, metavar="ENV", help="Only this environment.")
@click.option("--worker", "worker", default=None, metavar="W", help="Only workers named W.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def history(env: str | None, worker: str | None, limit: int, as_json: bool) -> None:
    """The audit trail, newest first (every namespace unless --env)."""
    query: dict[str, str | int] = {"limit": limit}
    if worker is not None:
        query["worker"] = worker
    with _admin() as client:
        if env is not None:
            query["namespace"] = _namespace(client, env)
        trail = client.call("GET", "/deployments", query=query)
    if as_json:
        _print_json(trail)
        return
    rows = [
        [
            str(e["revision"]),
            e["action"],
            e["namespace"],
            e["worker"],
            "-" if e["version"] is None else str(e["version"]),
            e["version_label"] or "-",
            "-" if e["target"] is None else _describe_target(e["target"]),
            _short_time(e["at"]),
            e["actor"],
        ]
        for e in trail["deployments"]
    ]
    if not rows:
        click.echo("no deployments recorded")
        return
    headers = ["REV", "ACTION", "NAMESPACE", "WORKER", "VERSION", "LABEL", "TARGET", "AT", "BY"]
    _print_table(headers, rows)


@main.group()
def token() -> None:
    """Make admin API tokens and their SHA-256 for a tokens file."""


@token.command("new")
def token_new() -> None:
    """Print a new random token (256 bits) and its sha256."""
    value = generate_token()
    click.echo(f"token:  {value}\nsha256: {hash_token(value)}")


@token.command("hash")
def token_hash() -> None:
    """Print the sha256 of a token read from stdin (or typed, hidden)."""
    if sys.stdin.isatty():
        value = click.prompt("token", hide_input=True)
    else:
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        raise click.UsageError("no token given on stdin")
    click.echo(hash_token(value))


@contextmanager
def _admin() -> Iterator[AdminClient]:
    """A client from the environment; failures become one ``Error:`` line and exit 1."""
    try:
        yield AdminClient.from_environ(os.environ)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except AdminClientError as exc:
        raise RuntimeProblem(exc.message) from exc


def _namespace(client: AdminClient, env: str | None) -> str:
    """``--env`` as the server binds it: an environment or a namespace name; default: the
    namespace the dispatcher serves."""
    namespaces: list[dict[str, Any]] = client.call("GET", "/namespaces")["namespaces"]
    for namespace in namespaces:
        if env is None and namespace["serving"]:
            return str(namespace["name"])
        if env is not None and env in (namespace["name"], namespace["environment"]):
            return str(namespace["name"])
    known = ", ".join(
        f"{n['environment']} ({n['name']})" if n["environment"] else n["name"] for n in namespaces
    )
    wanted = f"environment or namespace {env!r}" if env is not None else "served namespace"
    raise RuntimeProblem(f"no {wanted} at {client.url} (known: {known or 'none'})")


def _deploy_body(
    urls: tuple[str, ...],
    app: str | None,
    version_label: str | None,
    meta: tuple[str, ...],
    no_preserve_host: bool,
) -> dict[str, Any]:
    if bool(urls) == (app is not None):
        raise click.UsageError("give --url (one or more) or --app, not both")
    body: dict[str, Any] = {"app": app} if app is not None else {"url": _one_or_list(urls)}
    if no_preserve_host:
        body["preserve_host"] = False
    if version_label is not None:
        body["version"] = version_label
    if meta:
        body["metadata"] = dict(_key_value(item) for item in meta)
    return body


def _one_or_list(urls: Sequence[str]) -> str | list[str]:
    return urls[0] if len(urls) == 1 else list(urls)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
    return key, value


def _describe_target(target: dict[str, Any]) -> str:
    if "app" in target:
        return f"app {target['app']}"
    urls = target["url"] if isinstance(target["url"], list) else [target["url"]]
    return "upstream " + ", ".join(urls)


def _short_time(timestamp: str) -> str:
    """``2026-01-02T03:04:05.123456Z`` → ``2026-01-02 03:04:05Z``."""
    return timestamp[:19].replace("T", " ") + "Z"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
