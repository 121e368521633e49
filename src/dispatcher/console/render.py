"""``Renderer``: the console's Jinja2 templates (autoescaped: every name, label, metadata
value and actor is HTML-escaped wherever it appears) and its static assets, served by the
dispatcher itself under ``/console/static/`` with a content hash in their URLs.

Example::

    renderer = Renderer(frame)
    renderer.page("history.html", session, page="history", entries=entries)   # Response
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from dispatcher.auth import Permission
from dispatcher.console.sessions import Session
from dispatcher.console.web import CSRF_FIELD, PREFIX, Response
from dispatcher.types import NamespaceName

STATIC_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_STATIC_CACHE: Final = "public, max-age=86400"
_KNOWN_ENVIRONMENTS: Final = frozenset({"production", "staging", "development"})


@dataclass(frozen=True, slots=True)
class Frame:
    """What every page shows around its content: the environment this dispatcher serves,
    and which environment each namespace is bound to."""

    environment: str
    namespace: NamespaceName
    environments: Mapping[NamespaceName, str]

    def environment_of(self, namespace: str) -> str | None:
        return self.environments.get(NamespaceName(namespace))


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    version: str


def environment_class(environment: str | None) -> str:
    """The CSS class of an environment badge: production is red, staging amber, others calm."""
    if environment is None:
        return "env-none"
    return f"env-{environment}" if environment in _KNOWN_ENVIRONMENTS else "env-other"


class Renderer:
    """Renders templates into ``Response``s and serves the static assets from memory."""

    __slots__ = ("_frame", "_jinja", "assets")

    def __init__(self, frame: Frame) -> None:
        self._frame = frame
        self._jinja = Environment(
            loader=PackageLoader("dispatcher.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.assets = _load_assets()
        self._jinja.filters["when"] = short_time
        self._jinja.globals.update(
            asset=self.asset_url,
            environment_class=environment_class,
            environment_of=frame.environment_of,
            prefix=PREFIX,
            csrf_field=CSRF_FIELD,
        )

    def __repr__(self) -> str:
        return f"<Renderer {len(self.assets)} assets>"

    def asset_url(self, name: str) -> str:
        return f"{PREFIX}/static/{name}?v={self.assets[name].version}"

    def page(
        self, template: str, session: Session | None, *, status: int = 200, **context: Any
    ) -> Response:
        """A full page: ``template`` inside the frame (navigation, environment, who)."""
        text = self._jinja.get_template(template).render(
            frame=self._frame,
            session=session,
            who=None if session is None else session.credential,
            can_deploy=session is not None and session.credential.allows(Permission.DEPLOY),
            notice=None if session is None else session.take_notice(),
            csrf=None if session is None else session.csrf,
            **context,
        )
        return Response.html(status, text)

    def static(self, name: str) -> Response | None:
        asset = self.assets.get(name)
        if asset is None:
            return None
        return Response(200, asset.body, asset.content_type, cache=_STATIC_CACHE)


def short_time(timestamp: str) -> str:
    """``2026-05-01T12:30:45.123456Z`` → ``2026-05-01 12:30:45``: the store's UTC time to the
    second (the full value stays in the ``<time>`` element's ``datetime``)."""
    return timestamp[:19].replace("T", " ")


def _load_assets() -> Mapping[str, Asset]:
    folder = resources.files("dispatcher.console") / "static"
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            body = entry.read_bytes()
            version = hashlib.sha256(body).hexdigest()[:12]
            assets[entry.name] = Asset(body, STATIC_TYPES[suffix], version)
    return MappingProxyType(assets)
