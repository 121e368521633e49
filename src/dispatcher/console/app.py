"""``Console``: the web console on the admin listener. It answers ``/`` and ``/console/...``
and hands every other path, untouched, to the Deploy API it wraps.

Pages need a session: a login form takes a token once, checks it as the Deploy API does
(``BearerTokenAuth``, the same failure limit per address), and keeps only a random session
id in an HttpOnly, SameSite=Strict cookie. Every POST carries the session's CSRF token and,
from a browser, an ``Origin`` of this listener.

Example::

    api = DeployAPI(store, auth, replicas, bindings=settings.bindings, served=settings.namespace)
    async with Console(api, auth, store, replicas, settings) as console:
        listener = Listener(AppHandler(console), admin_limits)   # /console/ and the Deploy API
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Final
from urllib.parse import quote

from dispatcher.admin import DeployAPI
from dispatcher.auth import BearerTokenAuth, FailureLimiter
from dispatcher.console.actions import Actions
from dispatcher.console.live import LiveMetrics
from dispatcher.console.pages import Pages
from dispatcher.console.render import Frame, Renderer
from dispatcher.console.sessions import MAX_LIFETIME, Session, Sessions
from dispatcher.console.web import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    ClientGone,
    FormTooLarge,
    Request,
    Response,
    cookie_header,
    is_safe_next,
)
from dispatcher.errors import (
    ApiError,
    ConfigError,
    NotFound,
    StoreUnavailable,
    TooManyFailures,
    Unauthorized,
)
from dispatcher.replicas import Replicas
from dispatcher.settings import Settings
from dispatcher.store import RegistryStore
from dispatcher.types import Message, NamespaceName, Receive, Scope, Send, WorkerName
from dispatcher.workers import validate_name

logger = logging.getLogger("dispatcher.console")

LOGIN_FORM_LIFETIME: Final = 600
"""Seconds a login form stays valid (its anti-forgery cookie's lifetime)."""
WRONG_TOKEN: Final = "That token was not accepted."
"""The one answer to a failed login: it never says whether the token was unknown or
malformed."""
METRICS_PATH: Final = "/metrics"

PageHandler = Callable[[Request, Session, Mapping[str, str]], Awaitable[Response]]
PublicHandler = Callable[[Request, Mapping[str, str]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ConsoleRoute:
    """A console path template (segments after ``/console``) that needs a session. Without
    one, a page redirects to the login form; ``is_data`` (polled by script) answers 401."""

    method: str
    segments: tuple[str, ...]
    handler: PageHandler
    is_data: bool = False


@dataclass(frozen=True, slots=True)
class PublicRoute:
    """A console path anyone may reach: the login form and the static assets."""

    method: str
    segments: tuple[str, ...]
    handler: PublicHandler


class Console:
    """The console as a plain ASGI app around the Deploy API (``api``), which answers
    every path that is not the console's. An async context manager: it reads ``/metrics``
    in the background while open."""

    __slots__ = ("_api", "_auth", "_sessions", "_failures", "_renderer", "_pages", "_actions",
                 "_live", "_routes")  # fmt: skip

    def __init__(
        self,
        api: DeployAPI,
        auth: BearerTokenAuth,
        store: RegistryStore,
        replicas: Replicas,
        settings: Settings,
        *,
        sessions: Sessions | None = None,
        failures: FailureLimiter | None = None,
        live: LiveMetrics | None = None,
    ) -> None:
        self._api = api
        self._auth = auth
        self._sessions = sessions if sessions is not None else Sessions()
        self._failures = failures if failures is not None else FailureLimiter()
        bound = {ns: binding.lower() for binding, ns in settings.bindings.items()}
        frame = Frame(settings.environment, settings.namespace, MappingProxyType(bound))
        self._renderer = Renderer(frame)
        self._live = (
            live
            if live is not None
            else LiveMetrics(self.read_metrics, environment=settings.environment)
        )
        self._pages = Pages(self._renderer, store, replicas, settings, self._live)
        self._actions = Actions(api, self._renderer, store, frame)
        self._routes = self._route_table()

    def __repr__(self) -> str:
        return f"<Console {self._sessions!r} around {self._api!r}>"

    async def __aenter__(self) -> Console:
        await self._live.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._live.__aexit__(exc_type, exc, tb)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self._api(scope, receive, send)
            return
        try:
            request = await Request.read(scope, receive)
        except ClientGone:
            return
        except FormTooLarge:
            response = self._error_page(413, "The form is too large.", None)
        else:
            response = await self._respond(request)
        await response.send(send)

    async def read_metrics(self) -> str | None:
        """The Deploy API's ``GET /metrics`` text, asked in-process; ``None`` unless 200."""
        status = 0
        chunks: list[bytes] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._api(_metrics_scope(), receive, send)
        return b"".join(chunks).decode("utf-8") if status == 200 else None

    # --- the path table ----------------------------------------------------------------------

    def _route_table(self) -> Sequence[ConsoleRoute | PublicRoute]:
        pages, actions = self._pages, self._actions
        worker = ("namespaces", "{namespace}", "workers", "{worker}")
        return (
            ConsoleRoute("GET", (), lambda r, s, p: pages.overview(r, s)),
            PublicRoute("GET", ("login",), self._login_form),
            PublicRoute("POST", ("login",), self._login),
            ConsoleRoute("POST", ("logout",), self._logout),
            ConsoleRoute("GET", ("routes",), lambda r, s, p: pages.routes(r, s)),
            ConsoleRoute("GET", ("namespaces",), lambda r, s, p: pages.namespaces(r, s)),
            ConsoleRoute("GET", ("history",), lambda r, s, p: pages.history(r, s)),
            ConsoleRoute("GET", ("namespaces", "{namespace}", "deploy"),
                         lambda r, s, p: actions.deploy_form(r, s, _namespace(p))),
            ConsoleRoute("POST", ("namespaces", "{namespace}", "deploy"),
                         lambda r, s, p: actions.deploy(r, s, _namespace(p))),
            ConsoleRoute("GET", (*worker, "rollback"),
                         lambda r, s, p: actions.confirm_rollback(r, s, *_names(p))),
            ConsoleRoute("POST", (*worker, "rollback"),
                         lambda r, s, p: actions.rollback(r, s, *_names(p))),
            ConsoleRoute("GET", (*worker, "undeploy"),
                         lambda r, s, p: actions.confirm_undeploy(r, s, *_names(p))),
            ConsoleRoute("POST", (*worker, "undeploy"),
                         lambda r, s, p: actions.undeploy(r, s, *_names(p))),
            ConsoleRoute("GET", ("api", "live"), self._live_figures, is_data=True),
            PublicRoute("GET", ("static", "{name}"), self._static),
        )  # fmt: skip

    def _match(
        self, method: str, segments: Sequence[str]
    ) -> tuple[ConsoleRoute | PublicRoute | None, Mapping[str, str], bool]:
        """The route, its parameters, and whether the path exists under another method."""
        path_exists = False
        for route in self._routes:
            params = _match_segments(route.segments, segments)
            if params is None:
                continue
            if route.method == method:
                return route, params, True
            path_exists = True
        return None, {}, path_exists

    # --- answering ---------------------------------------------------------------------------

    async def _respond(self, request: Request) -> Response:
        if request.path in ("/", PREFIX):
            return Response.redirect(PREFIX + "/")
        segments = _segments(request.path)
        route, params, path_exists = self._match(request.method, segments)
        if route is None:
            status = 405 if path_exists else 404
            message = "Method not allowed." if path_exists else "There is no such page."
            return self._error_page(status, message, self._session_of(request))
        try:
            return await self._guarded(route, request, params)
        except ApiError as error:
            return self._error_page(error.status, error.message, self._session_of(request))
        except StoreUnavailable as exc:
            logger.warning("console: %s %s: %s", request.method, request.path, exc)
            message = "The registry store is unavailable; retry shortly."
            return self._error_page(503, message, self._session_of(request))
        except Exception:
            error_id = secrets.token_hex(6)
            logger.exception("console error %s: %s %s", error_id, request.method, request.path)
            message = f"Unexpected error in the console (error id {error_id})."
            return self._error_page(500, message, self._session_of(request))

    async def _guarded(
        self, route: ConsoleRoute | PublicRoute, request: Request, params: Mapping[str, str]
    ) -> Response:
        """Run ``route`` if the request may: a session for pages, a genuine form for POSTs."""
        if isinstance(route, PublicRoute):
            return await route.handler(request, params)
        session = self._session_of(request)
        if session is None:
            if route.is_data:
                return Response.json(401, {"error": "Unauthorized", "message": "log in first"})
            after = request.target if request.method == "GET" else PREFIX + "/"
            return Response.redirect(f"{PREFIX}/login?next={quote(after, safe='/')}")
        if request.method == "POST" and not _is_genuine(request, session):
            logger.warning(
                "console: %s %s by %s refused: missing or wrong CSRF token, or foreign Origin",
                request.method,
                request.path,
                session.credential.name,
            )
            message = "This form has expired or did not come from this console. Reload the page."
            return self._error_page(403, message, session)
        return await route.handler(request, session, params)

    def _session_of(self, request: Request) -> Session | None:
        return self._sessions.find(request.cookies.get(SESSION_COOKIE))

    def _error_page(self, status: int, message: str, session: Session | None) -> Response:
        return self._renderer.page(
            "error.html", session, status=status, page="", title=f"Error {status}",
            status_code=status, message=message,
        )  # fmt: skip

    # --- login and logout --------------------------------------------------------------------

    async def _login_form(self, request: Request, params: Mapping[str, str]) -> Response:
        if self._session_of(request) is not None:
            return Response.redirect(_next_of(request.query.get("next")))
        message = ("ok", "You have logged out.") if "logged_out" in request.query else None
        return self._login_page(request, 200, message)

    async def _login(self, request: Request, params: Mapping[str, str]) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        presented = request.form.get(CSRF_FIELD, "")
        if not (nonce and hmac.compare_digest(nonce.encode(), presented.encode())):
            return self._login_page(request, 400, ("error", "The login form expired; try again."))
        if not request.is_same_origin():
            return self._login_page(request, 403, ("error", "This form did not come from here."))
        try:
            self._failures.check(request.client)
        except TooManyFailures as error:
            return self._login_page(request, 429, ("error", error.message), error.headers)
        token = request.form.get("token", "").strip()
        try:
            credential = self._auth.authenticate(b"Bearer " + token.encode("utf-8"))
        except Unauthorized as error:
            self._failures.record(request.client)
            logger.warning("console: login from %s refused: %s", request.client, error.message)
            return self._login_page(request, 401, ("error", WRONG_TOKEN))
        opened = self._sessions.open(credential)
        logger.info("console: %s logged in from %s", credential.name, request.client)
        return Response.redirect(
            _next_of(request.form.get("next")),
            (
                cookie_header(SESSION_COOKIE, opened.id, path=PREFIX, max_age=int(MAX_LIFETIME),
                              secure=request.is_https),
                cookie_header(LOGIN_COOKIE, "", path=PREFIX + "/login", max_age=0,
                              secure=request.is_https),
            ),
        )  # fmt: skip

    async def _logout(
        self, request: Request, session: Session, params: Mapping[str, str]
    ) -> Response:
        self._sessions.close(session.id)
        logger.info("console: %s logged out", session.credential.name)
        cleared = cookie_header(SESSION_COOKIE, "", path=PREFIX, max_age=0, secure=request.is_https)
        return Response.redirect(f"{PREFIX}/login?logged_out", (cleared,))

    def _login_page(
        self,
        request: Request,
        status: int,
        message: tuple[str, str] | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """The login form, with a fresh anti-forgery value in a cookie and a hidden field
        (login CSRF: no other site can log this browser in as someone else)."""
        nonce = secrets.token_urlsafe(24)
        next_target = request.form.get("next") or request.query.get("next") or ""
        page = self._renderer.page(
            "login.html", None, status=status, page="login", title="Log in",
            login_nonce=nonce, next_target=next_target if is_safe_next(next_target) else "",
            message=message,
        )  # fmt: skip
        cookie = cookie_header(
            LOGIN_COOKIE, nonce, path=PREFIX + "/login", max_age=LOGIN_FORM_LIFETIME,
            secure=request.is_https,
        )  # fmt: skip
        return Response(page.status, page.body, headers=(cookie, *headers))

    # --- data and assets ---------------------------------------------------------------------

    async def _live_figures(
        self, request: Request, session: Session, params: Mapping[str, str]
    ) -> Response:
        return self._pages.live(request, session)

    async def _static(self, request: Request, params: Mapping[str, str]) -> Response:
        asset = self._renderer.static(params["name"])
        return asset if asset is not None else self._error_page(404, "No such file.", None)


def is_console_path(path: str) -> bool:
    """``/``, ``/console`` and everything under ``/console/``: the rest is the Deploy API's."""
    return path in ("/", PREFIX) or path.startswith(PREFIX + "/")


def _is_genuine(request: Request, session: Session) -> bool:
    """A POST from this console's own page: the session's CSRF token, and no foreign Origin."""
    presented = request.form.get(CSRF_FIELD) or request.header(CSRF_HEADER)
    return session.accepts_csrf(presented) and request.is_same_origin()


def _next_of(target: str | None) -> str:
    return target if target and is_safe_next(target) else PREFIX + "/"


def _segments(path: str) -> list[str]:
    rest = path[len(PREFIX) :].strip("/")
    return rest.split("/") if rest else []


def _match_segments(template: Sequence[str], segments: Sequence[str]) -> dict[str, str] | None:
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for pattern, segment in zip(template, segments, strict=True):
        if pattern.startswith("{"):
            params[pattern[1:-1]] = segment
        elif pattern != segment:
            return None
    return params


def _namespace(params: Mapping[str, str]) -> NamespaceName:
    return NamespaceName(_valid_name(params["namespace"], "namespace"))


def _names(params: Mapping[str, str]) -> tuple[NamespaceName, WorkerName]:
    return _namespace(params), WorkerName(_valid_name(params["worker"], "worker"))


def _valid_name(value: str, what: str) -> str:
    try:
        return validate_name(value, f"{what} name")
    except ConfigError as exc:
        raise NotFound(f"no such {what}: names are a-z, 0-9 and '-'") from exc


def _metrics_scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": METRICS_PATH,
        "raw_path": METRICS_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"console.internal")],
        "client": ("127.0.0.1", 0),
        "server": None,
        "state": {},
    }
