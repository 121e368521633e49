"""The peers' routing table: the dispatcher's seed routes, as a plain dict lookup.

Same rules as ``dispatcher routes`` with the default configuration, in the same order:
``<service>.do`` for the eight seed services, then ``/api/<db|auth|schedule>`` on any
host, then ``do`` and ``api.do`` default to ``gateway``. The upstream URLs come from the
``BENCH_UPSTREAMS`` environment variable (a JSON object ``{"db": "http://127.0.0.1:P"}``),
written by ``bench/proxy.py``.

Example::

    routes = PeerRoutes.from_environ(os.environ)
    routes.upstream_for("api.do", "/api/auth/upload")   # "http://127.0.0.1:P/api/auth/upload"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from dispatcher.routing import SEED_PATH_SERVICES, SEED_SERVICES

UPSTREAMS_VARIABLE: Final = "BENCH_UPSTREAMS"
ZONE: Final = "do"
DEFAULT_HOSTS: Final = ("do", "api.do")
DEFAULT_SERVICE: Final = "gateway"
PATH_BASE: Final = "/api/"
# Hop-by-hop headers plus those the client library sets itself (host, content-length).
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class PeerConfigError(Exception):
    """``BENCH_UPSTREAMS`` is missing or does not name a URL for every seed service."""


@dataclass(frozen=True, slots=True)
class PeerRoutes:
    """Host and path rules compiled to dicts, and each service's upstream base URL."""

    hosts: Mapping[str, str]
    default_hosts: frozenset[str]
    path_services: frozenset[str]
    urls: Mapping[str, str]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PeerRoutes:
        return cls.from_urls(_parse_urls(environ.get(UPSTREAMS_VARIABLE)))

    @classmethod
    def from_urls(cls, urls: Mapping[str, str]) -> PeerRoutes:
        missing = [s for s in SEED_SERVICES if s not in urls]
        if missing:
            raise PeerConfigError(f"{UPSTREAMS_VARIABLE} has no URL for {', '.join(missing)}")
        return cls(
            hosts=MappingProxyType({f"{s}.{ZONE}": s for s in SEED_SERVICES}),
            default_hosts=frozenset(DEFAULT_HOSTS),
            path_services=frozenset(SEED_PATH_SERVICES),
            urls=MappingProxyType(dict(urls)),
        )

    def resolve(self, host: str, path: str) -> str | None:
        """The service for ``host`` and ``path``: host rule, then path prefix, then default."""
        name = host.partition(":")[0].lower()
        service = self.hosts.get(name)
        if service is not None:
            return service
        if path.startswith(PATH_BASE):
            end = path.find("/", len(PATH_BASE))
            prefix = path[len(PATH_BASE) : end if end != -1 else None]
            if prefix in self.path_services:
                return prefix
        return DEFAULT_SERVICE if name in self.default_hosts else None

    def upstream_for(self, host: str, path: str) -> str | None:
        """The upstream URL (base plus ``path``) for a request, or ``None`` when unrouted."""
        service = self.resolve(host, path)
        return None if service is None else self.urls[service] + path


def _parse_urls(text: str | None) -> dict[str, str]:
    if not text:
        raise PeerConfigError(f"{UPSTREAMS_VARIABLE} is not set")
    try:
        urls = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PeerConfigError(f"{UPSTREAMS_VARIABLE} is not JSON: {exc}") from exc
    if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
        raise PeerConfigError(f"{UPSTREAMS_VARIABLE} must be an object of service → URL")
    return urls
