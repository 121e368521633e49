"""The ``dispatcher`` command: ``serve``, ``dev``, ``check``, ``routes``, ``resolve``.

The only module that calls ``sys.exit`` (through click): configuration errors exit 2 with
one line naming file, key and problem; runtime failures exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import click
import uvloop

from dispatcher.app import Preparation, running
from dispatcher.errors import BadRequest, ConfigError, StoreError
from dispatcher.normalize import normalize_host, normalize_path
from dispatcher.routing import RuleKind
from dispatcher.settings import Settings
from dispatcher.store import RegistryStore
from dispatcher.types import WorkerName
from dispatcher.workers import AppTarget, UpstreamTarget, parse_upstream_url, validate_name

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dispatcher")
def main() -> None:
    """Dynamic dispatch router: routes each request by host and path to a worker in the
    namespace of the current environment."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default 8787).")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
def serve(config_path: str | None, host: str | None, port: int | None, log_level: str) -> None:
    """Serve routed traffic until SIGINT or SIGTERM."""
    _configure_logging(log_level)
    settings = _load(config_path, host=host, port=port)
    _run(settings, announce=_announce_serve)


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEV_PORT, show_default=True)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="SERVICE=URL",
    help="Point a service at a local HTTP server, e.g. gateway=http://127.0.0.1:9000 (repeatable).",
)
def dev(
    config_path: str | None, host: str, port: int, log_level: str, upstreams: tuple[str, ...]
) -> None:
    """Local development: every configured service gets an echo worker where none is deployed;
    --upstream points a service at a local HTTP server instead."""
    _configure_logging(log_level)
    settings = _load(config_path, host=host, port=port)
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


def _load(config_path: str | None, *, host: str | None = None, port: int | None = None) -> Settings:
    try:
        return Settings.load(config_path, os.environ, host=host, port=port)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc


def _run(
    settings: Settings,
    *,
    announce: Callable[[Settings, str], None],
    prepare: Preparation | None = None,
) -> None:
    try:
        uvloop.run(_serve_until_signal(settings, announce, prepare))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except StoreError as exc:
        raise RuntimeProblem(f"registry store: {exc}") from exc
    except OSError as exc:
        raise RuntimeProblem(
            f"cannot listen on {settings.host}:{settings.port}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from exc


async def _serve_until_signal(
    settings: Settings, announce: Callable[[Settings, str], None], prepare: Preparation | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, prepare=prepare) as dispatcher:
        announce(settings, dispatcher.url)
        await stop.wait()


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
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
