"""In-process ASGI workers: ``AppHost`` loads apps and runs their lifespan once;
``AppForwarder`` turns a request into an ASGI ``http`` scope and the app's messages into a
response.

Example::

    host = AppHost()
    forwarder = await host.forwarder_for("dispatcher.echo:app")   # lifespan startup ran
    ...
    await host.aclose()                                            # lifespan shutdown ran
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
from collections.abc import Coroutine, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from dispatcher.errors import ConfigError, InternalError, Overloaded, RequestError
from dispatcher.forwarding.websocket import serve_websocket
from dispatcher.http import BodyStream, ClientDisconnected, RequestHead, ResponseWriter
from dispatcher.types import ASGIApp, Message, Scope

if TYPE_CHECKING:
    from dispatcher.namespaces import Worker

logger = logging.getLogger("dispatcher.asgi")

_ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT: Final = {"type": "http.disconnect"}


class AppForwarder:
    """Serves requests with one in-process ASGI app (http scope, ASGI 3)."""

    __slots__ = ("app", "import_path", "state", "_extensions")

    def __init__(self, app: ASGIApp, import_path: str, state: dict[str, Any]) -> None:
        self.app = app
        self.import_path = import_path
        self.state = state  # the lifespan's state, copied into each request's scope
        # scope["extensions"] per (worker, service), built once: it never changes per request.
        self._extensions: dict[tuple[str, str], dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<AppForwarder {self.import_path}>"

    async def forward(
        self, worker: Worker, head: RequestHead, body: BodyStream, response: ResponseWriter
    ) -> None:
        exchange = _AsgiExchange(head, body, response)
        try:
            if head.upgrade is not None:
                route = head.route
                extensions = self._extensions_for(worker, route.service if route else worker.name)
                response.handed_off = perf_counter()
                await serve_websocket(self.app, head, response, extensions, self.state.copy())
                return
            scope = self._scope(worker, head)
            response.handed_off = perf_counter()
            await self.app(scope, exchange.receive, exchange.send)
            if not exchange.is_complete:
                exchange.finish_incomplete()
        except ClientDisconnected:
            response.abort()
        except Exception:
            _report_failure(worker, head, response)

    def _scope(self, worker: Worker, head: RequestHead) -> Scope:
        route = head.route
        scope = http_scope(head, self.state)
        scope["extensions"] = self._extensions_for(worker, route.service if route else worker.name)
        return scope

    def _extensions_for(self, worker: Worker, service: str) -> dict[str, Any]:
        key = (worker.name, service)
        extensions = self._extensions.get(key)
        if extensions is None:
            extensions = self._extensions[key] = {
                "dispatcher": {
                    "service": service,
                    "worker": worker.name,
                    "environment": worker.environment,
                    "namespace": worker.deployment.namespace,
                }
            }
        return extensions


def http_scope(head: RequestHead, state: dict[str, Any]) -> Scope:
    """The ASGI ``http`` scope of a request; ``state`` (the lifespan's) is copied in."""
    path = head.path
    return {
        "type": "http",
        "asgi": _ASGI,
        "http_version": head.http_version,
        "method": head.method,
        "scheme": head.scheme,
        "path": unquote(path) if "%" in path else path,
        "raw_path": path.encode("ascii"),
        "query_string": head.query,
        "root_path": "",
        "headers": head.headers,
        "client": head.client,
        "server": head.server,
        "state": state.copy(),
    }


class AppHandler:
    """Serves every request of a listener with one ASGI app (the admin listener's Deploy
    API); implements the server's ``RequestHandler``."""

    __slots__ = ("app", "_state")

    def __init__(self, app: ASGIApp, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self._state = state if state is not None else {}

    def handle(
        self, head: RequestHead, body: BodyStream, exchange: ResponseWriter
    ) -> Coroutine[Any, Any, None]:
        return self._serve(head, body, exchange)

    def handle_error(self, error: RequestError, exchange: ResponseWriter) -> None:
        exchange.fail(error)

    def refuse(self, head: RequestHead, exchange: ResponseWriter) -> None:
        exchange.fail(Overloaded("too many requests in flight; retry shortly"))

    async def _serve(self, head: RequestHead, body: BodyStream, response: ResponseWriter) -> None:
        exchange = _AsgiExchange(head, body, response)
        try:
            await self.app(http_scope(head, self._state), exchange.receive, exchange.send)
            if not exchange.is_complete:
                exchange.finish_incomplete()
        except ClientDisconnected:
            response.abort()
        except Exception:
            _answer_failure(f"{head.method} {head.host}{head.path}", response, head)


def _report_failure(worker: Worker, head: RequestHead, response: ResponseWriter) -> None:
    """The seed's 500 with an error id that is also logged with the traceback."""
    where = (
        f"{head.method} {head.host}{head.path} -> worker {worker.name} in "
        f"{worker.deployment.namespace}"
    )
    _answer_failure(where, response, head)


def _answer_failure(where: str, response: ResponseWriter, head: RequestHead) -> None:
    error_id = secrets.token_hex(6)
    request_id = head.request_id.decode("ascii")
    logger.exception("Dispatch error %s: %s", error_id, where, extra={"request_id": request_id})
    if response.is_started:
        response.abort()
    else:
        response.fail(InternalError(f"Unexpected error while dispatching (error id {error_id})"))


class _AsgiExchange:
    """The receive/send pair of one request: body chunks in, response messages out."""

    __slots__ = (
        "_is_head",
        "_body",
        "_response",
        "_status",
        "_headers",
        "_is_body_read",
        "_saw_disconnect",
        "is_complete",
    )

    def __init__(self, head: RequestHead, body: BodyStream, response: ResponseWriter) -> None:
        self._is_head = head.method == "HEAD"
        self._body = body
        self._response = response
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._is_body_read = False
        self._saw_disconnect = False
        self.is_complete = False

    async def receive(self) -> Message:
        body = self._body
        if self._is_body_read:
            await body.wait_disconnect()
            self._saw_disconnect = True
            return _DISCONNECT
        if body.is_exhausted:  # no body (a GET): no read coroutine to create and await
            self._is_body_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            chunk = await body.read()
        except Exception:  # disconnected, over the limit, timed out: the client is gone
            self._is_body_read = True
            self._saw_disconnect = True
            return _DISCONNECT
        more_body = not body.is_exhausted
        self._is_body_read = not more_body
        return {"type": "http.request", "body": chunk, "more_body": more_body}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            more_body = message.get("more_body", False)
            if not more_body and self._status and not self.is_complete:
                self._send_last(message.get("body", b""))
                return
            await self._send_body(message.get("body", b""), more_body)
        elif kind == "http.response.start":
            if self._status:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self._status = int(message["status"])
            self._headers = message.get("headers", ())
        else:
            raise RuntimeError(f"ASGI app sent an unexpected message type {kind!r}")

    async def _send_body(self, data: bytes, more_body: bool) -> None:
        response = self._response
        if not self._status:
            raise RuntimeError("ASGI app sent a body before 'http.response.start'")
        if self.is_complete:
            return
        if not more_body:
            self._send_last(data)
            return
        if not response.is_started:
            response.start(self._status, self._headers)
        response.write(data)
        await response.drain()

    def _send_last(self, data: bytes) -> None:
        """The final body message: no awaiting, so the common one-message answer costs no
        coroutine."""
        response = self._response
        if not response.is_started:
            # One message is the whole body, so its length is known; for HEAD and 304 only
            # when the app sent the body (an empty one says nothing about the GET length).
            says_nothing = not data and (self._is_head or self._status == 304)
            response.start(
                self._status, self._headers, content_length=None if says_nothing else len(data)
            )
        response.write(data)
        self.is_complete = True
        response.end()

    def finish_incomplete(self) -> None:
        """The app returned without finishing: before a start it is a 500, after it an abort;
        an app told that the client left owes nobody an answer."""
        response = self._response
        if self._saw_disconnect or response.is_disconnected:
            raise ClientDisconnected("client disconnected before the response")
        if response.is_started:
            response.abort()
        else:
            raise RuntimeError("ASGI app returned without sending a response")


class _Lifespan:
    """Runs an app's lifespan protocol: startup once, shutdown once."""

    __slots__ = ("_app", "_name", "_state", "_inbox", "_outbox", "_task", "_is_supported")

    def __init__(self, app: ASGIApp, name: str, state: dict[str, Any]) -> None:
        self._app = app
        self._name = name
        self._state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._is_supported = True

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._outbox.get()
        if reply["type"] == "lifespan.startup.failed":
            self._task.cancel()  # it may wait for a shutdown that will never be sent
            raise ConfigError(
                f"worker app {self._name}: startup failed: {reply.get('message', '')}"
            )

    async def shutdown(self) -> None:
        if self._task is None or not self._is_supported or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        reply = await self._outbox.get()
        if reply["type"] == "lifespan.shutdown.failed":
            logger.error("worker app %s: shutdown failed: %s", self._name, reply.get("message", ""))
        await self._task

    async def _run(self, scope: Scope) -> None:
        try:
            await self._app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:
            # uvicorn's "auto" rule: an app that raises on the lifespan scope does not speak it.
            self._is_supported = False
            logger.info("worker app %s does not support lifespan (%r)", self._name, exc)
        finally:
            await self._outbox.put({"type": "lifespan.unsupported"})


class AppHost:
    """Loads in-process ASGI apps by import path; one instance and one lifespan per app."""

    __slots__ = ("_preloaded", "_forwarders", "_started", "_lifespans", "_lock")

    def __init__(self, preloaded: Mapping[str, ASGIApp] | None = None) -> None:
        self._preloaded = dict(preloaded or {})
        self._forwarders: dict[str, AppForwarder] = {}
        # By app object, as two import paths (or two preloaded workers) may name one app:
        # its lifespan runs once and its state is shared.
        self._started: dict[int, AppForwarder] = {}
        self._lifespans: list[_Lifespan] = []
        self._lock = asyncio.Lock()

    async def forwarder_for(self, import_path: str) -> AppForwarder:
        """The forwarder of an app, importing it and running its startup the first time."""
        forwarder = self._forwarders.get(import_path)
        if forwarder is not None:
            return forwarder
        async with self._lock:
            forwarder = self._forwarders.get(import_path)
            if forwarder is None:
                forwarder = await self._start(import_path)
                self._forwarders[import_path] = forwarder
        return forwarder

    async def _start(self, import_path: str) -> AppForwarder:
        app = self._preloaded.get(import_path) or import_app(import_path)
        started = self._started.get(id(app))
        if started is not None:
            return AppForwarder(app, import_path, started.state)
        state: dict[str, Any] = {}
        lifespan = _Lifespan(app, import_path, state)
        await lifespan.startup()
        self._lifespans.append(lifespan)
        forwarder = AppForwarder(app, import_path, state)
        self._started[id(app)] = forwarder  # holds the app, so its id stays its own
        return forwarder

    async def aclose(self) -> None:
        """Run every app's lifespan shutdown, newest first."""
        while self._lifespans:
            await self._lifespans.pop().shutdown()
        self._forwarders.clear()
        self._started.clear()


def import_app(import_path: str) -> ASGIApp:
    """``"package.module:attribute"`` → the object; ``ConfigError`` says what failed."""
    module_name, _, attribute = import_path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"worker app {import_path}: cannot import {module_name!r}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"worker app {import_path}: {module_name} has no {attribute!r}"
            ) from exc
    if not callable(obj):
        raise ConfigError(f"worker app {import_path} is not callable")
    app: ASGIApp = obj
    return app
