"""Worker specs: where a worker runs (its ``Target``), parsed and validated at the edge.

Example::

    parse_target({"app": "dispatcher.echo:app"})   # AppTarget(import_path='dispatcher.echo:app')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from dispatcher.errors import ConfigError
from dispatcher.types import NamespaceName, WorkerName

NAME_PATTERN: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|[a-z0-9]", re.ASCII)
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class AppTarget:
    """An in-process ASGI app, named ``package.module:attribute``."""

    import_path: str

    def to_json(self) -> dict[str, Any]:
        return {"app": self.import_path}

    def describe(self) -> str:
        return f"app {self.import_path}"


@dataclass(frozen=True, slots=True)
class UpstreamURL:
    """One upstream address: ``http://host:port``, ``https://host:port`` or a Unix socket."""

    url: str
    scheme: str
    host: str
    port: int
    unix_path: str | None = None

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """What ``Host`` says when the upstream's own host is sent."""
        if self.unix_path is not None:
            return "localhost"
        default = 443 if self.is_tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An HTTP service elsewhere: one URL or several (round-robin), and how to reach it.

    ``preserve_host`` (default) forwards the client's ``Host``; otherwise the upstream's
    own authority is sent.
    """

    urls: tuple[UpstreamURL, ...]
    preserve_host: bool = True

    def to_json(self) -> dict[str, Any]:
        urls: str | list[str] = (
            self.urls[0].url if len(self.urls) == 1 else [u.url for u in self.urls]
        )
        spec: dict[str, Any] = {"url": urls}
        if not self.preserve_host:
            spec["preserve_host"] = False
        return spec

    def describe(self) -> str:
        return "upstream " + ", ".join(u.url for u in self.urls)


Target = AppTarget | UpstreamTarget
"""Where a worker runs: in this process (``AppTarget``) or behind HTTP (``UpstreamTarget``)."""

_UPSTREAM_SCHEMES: Final = ("http", "https", "http+unix")


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployed version of a worker in a namespace, as the store records it.

    ``version_label`` is the deployer's name for it (``v2``); ``previous_version`` is the
    version a rollback returns to (``None``: nothing to roll back to); ``revision`` is the
    store revision that recorded it.
    """

    namespace: NamespaceName
    worker: WorkerName
    version: int
    target: Target
    deployed_at: str
    actor: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    version_label: str | None = None
    previous_version: int | None = None
    revision: int = 0


def validate_name(value: object, what: str) -> str:
    """Worker and namespace names are ``[a-z0-9-]{1,63}``, not starting or ending with ``-``."""
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
        raise ConfigError(
            f"{what} must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending "
            f"with '-' (got {value!r})"
        )
    return value


def parse_target(spec: object, where: str = "worker") -> Target:
    """Turn a JSON/TOML worker spec into a ``Target``; ``ConfigError`` names the problem.

    ``{"app": "pkg.mod:attr"}`` is an in-process ASGI app; ``{"url": "http://10.0.0.5:8080"}``
    (or a list of URLs, optionally ``"preserve_host": false``) is an upstream.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a worker spec must be a table/object, got {spec!r}")
    if "app" in spec:
        return _parse_app(spec, where)
    if "url" in spec:
        return _parse_upstream(spec, where)
    raise ConfigError(
        f"{where}: a worker needs 'url' (an upstream such as 'http://10.0.0.5:8080') "
        "or 'app' (an ASGI app as 'module:attribute')"
    )


def _parse_app(spec: Mapping[str, Any], where: str) -> AppTarget:
    unknown = set(spec) - {"app"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} for an app worker")
    app = spec["app"]
    if not isinstance(app, str) or _IMPORT_PATH.fullmatch(app) is None:
        raise ConfigError(f"{where}.app must look like 'package.module:attribute' (got {app!r})")
    return AppTarget(app)


def _parse_upstream(spec: Mapping[str, Any], where: str) -> UpstreamTarget:
    unknown = set(spec) - {"url", "preserve_host"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)} for an upstream worker "
            "(expected 'url', 'preserve_host')"
        )
    raw = spec["url"]
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values or len(values) > 64:
        raise ConfigError(f"{where}.url must be a URL or a list of 1 to 64 URLs (got {raw!r})")
    urls = tuple(parse_upstream_url(v, f"{where}.url") for v in values)
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{where}.url lists the same upstream twice")
    preserve_host = spec.get("preserve_host", True)
    if not isinstance(preserve_host, bool):
        raise ConfigError(f"{where}.preserve_host must be true or false (got {preserve_host!r})")
    return UpstreamTarget(urls, preserve_host)


def parse_upstream_url(value: object, where: str) -> UpstreamURL:
    """Validate one upstream URL: http, https or http+unix; no credentials, query or path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a URL string (got {value!r})")
    parts = urlsplit(value)
    if parts.scheme not in _UPSTREAM_SCHEMES:
        raise ConfigError(
            f"{where}: scheme must be one of {', '.join(_UPSTREAM_SCHEMES)} (got {value!r})"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            f"{where}: credentials in an upstream URL are not allowed ({_mask(value)})"
        )
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(
            f"{where}: an upstream URL has no path, query or fragment (got {value!r})"
        )
    if parts.scheme == "http+unix":
        path = unquote(parts.netloc)
        if not path.startswith("/"):
            raise ConfigError(
                f"{where}: http+unix URLs name an absolute socket path, percent-encoded "
                f"(http+unix://%2Frun%2Fapp.sock), got {value!r}"
            )
        return UpstreamURL(value, parts.scheme, "localhost", 0, path)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid port in {value!r}") from exc
    host = parts.hostname
    if not host:
        raise ConfigError(f"{where}: the URL names no host (got {value!r})")
    default_port = 443 if parts.scheme == "https" else 80
    return UpstreamURL(value, parts.scheme, host, port or default_port)


def _mask(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def target_from_json(data: Mapping[str, Any]) -> Target:
    """Read back a target the store wrote with ``to_json``."""
    return parse_target(data, "stored worker")
