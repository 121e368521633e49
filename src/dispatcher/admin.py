"""``DeployAPI``: the admin listener's ASGI app. The Deploy API (namespaces, workers,
rollback, audit trail), health and readiness, JSON in and out, described by an OpenAPI 3.1
document generated from the same route table. It talks to the store, and to the replicas
(``Replicas``) to wait until every dispatcher has applied a write; never to the snapshot.

Example::

    api = DeployAPI(store, auth, replicas, bindings=settings.bindings, served=settings.namespace)
    listener = Listener(AppHandler(api), admin_limits)
    await listener.start("127.0.0.1", 8788)

    # curl -X PUT -H "Authorization: Bearer $TOKEN" \\
    #      -d '{"url": "http://10.0.0.5:8080", "version": "v2"}' \\
    #      http://127.0.0.1:8788/namespaces/dotdo-production/workers/gateway
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from dispatcher import _strictjson as strictjson
from dispatcher.auth import BearerTokenAuth, Credential, FailureLimiter, Permission
from dispatcher.errors import (
    ApiError,
    ConfigError,
    Conflict,
    Forbidden,
    InternalError,
    InvalidRequest,
    NamespaceNotEmpty,
    NamespaceNotFound,
    NotFound,
    NothingToRollBack,
    StoreError,
    StoreUnavailable,
    TooManyFailures,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WorkerNotFound,
    WrongMethod,
)
from dispatcher.replicas import Convergence, Replicas
from dispatcher.store import AuditEntry, RegistryStore, Replica
from dispatcher.types import NamespaceName, Receive, Scope, Send, WorkerName
from dispatcher.workers import (
    AppTarget,
    Deployment,
    Target,
    UpstreamTarget,
    UpstreamURL,
    parse_target,
    parse_upstream_url,
    validate_name,
)

logger = logging.getLogger("dispatcher.admin")

_T = TypeVar("_T")

API_VERSION: Final = "1.0.0"
DEFAULT_HISTORY_LIMIT: Final = 50
MAX_HISTORY_LIMIT: Final = 1000
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_VALUE: Final = 1024
MAX_UPSTREAM_URLS: Final = 64
DEFAULT_WAIT: Final = 2.0
"""Seconds a write waits, by default, until every live replica has applied it."""
MAX_WAIT: Final = 30.0
_WAIT_VALUE: Final = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3})?", re.ASCII)
VERSION_LABEL: Final = re.compile(r"[a-z0-9][a-z0-9.-]{0,30}", re.ASCII)
METADATA_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}", re.ASCII)
_NAME_PATTERN: Final = "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DEPLOY_FIELDS: Final = ("app", "metadata", "preserve_host", "url", "version")
METRICS_CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
_REPLY_HEADERS: Final = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


# --- requests and replies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One authorized request, its names validated: what a handler receives."""

    namespace: NamespaceName | None
    worker: WorkerName | None
    query: Mapping[str, str]
    body: bytes
    credential: Credential | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON response (``payload`` is the encoded body; empty for 204)."""

    status: int
    payload: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: bytes = b"application/json"

    @classmethod
    def json(cls, status: int, data: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, _encode(data), headers)


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Written:
    """What a write handler returns: its reply, not yet encoded, and the revision that
    recorded the write, which the replicas must reach before the reply goes out."""

    status: int
    body: dict[str, Any] | None
    revision: int
    headers: tuple[tuple[str, str], ...] = ()


WriteHandler = Callable[[Call], Awaitable[Written]]


@dataclass(frozen=True, slots=True)
class QueryParameter:
    """A query parameter an endpoint accepts; any other is refused with 400."""

    name: str
    schema: Mapping[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One row of the route table: method, path template, who may call it, its handler and
    what the OpenAPI document says about it."""

    method: str
    path: str
    operation_id: str
    summary: str
    permission: Permission | None
    handler: Handler = field(repr=False)
    responses: Mapping[int, tuple[str, str | None]]
    request: str | None = None
    query: tuple[QueryParameter, ...] = ()
    takes_body: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))


@dataclass(frozen=True, slots=True)
class RouteMatch:
    endpoints: Mapping[str, Endpoint]
    params: Mapping[str, str]


class RouteTable:
    """The endpoints compiled once: indexed by segment count, literals checked before
    parameters; ``match`` walks at most a handful of templates."""

    __slots__ = ("endpoints", "_index")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        grouped: dict[tuple[str, ...], dict[str, Endpoint]] = {}
        for endpoint in self.endpoints:
            methods = grouped.setdefault(endpoint.segments, {})
            if endpoint.method in methods:
                raise ConfigError(f"duplicate endpoint {endpoint.method} {endpoint.path}")
            methods[endpoint.method] = endpoint
        self._index: dict[int, list[tuple[tuple[str, ...], Mapping[str, Endpoint]]]] = {}
        for segments, methods in grouped.items():
            self._index.setdefault(len(segments), []).append((segments, MappingProxyType(methods)))

    def match(self, segments: Sequence[str]) -> RouteMatch | None:
        for template, methods in self._index.get(len(segments), ()):
            params = _match_template(template, segments)
            if params is not None:
                return RouteMatch(methods, params)
        return None


def _match_template(template: Sequence[str], segments: Sequence[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for pattern, segment in zip(template, segments, strict=True):
        if pattern.startswith("{"):
            params[pattern[1:-1]] = segment
        elif pattern != segment:
            return None
    return params


class _ClientGone(Exception):
    """The client disconnected (or the server refused the body) before the request was read."""


# --- the app -------------------------------------------------------------------------------


class DeployAPI:
    """The Deploy API as a plain ASGI app.

    ``bindings`` maps binding names (``PRODUCTION``) to namespaces, so listings can say which
    environment a namespace serves; ``served`` is this dispatcher's own namespace.
    """

    __slots__ = (
        "_store",
        "_auth",
        "_replicas",
        "_failures",
        "_environments",
        "_served",
        "routes",
        "_openapi",
        "_metrics",
        "_reload",
    )

    def __init__(
        self,
        store: RegistryStore,
        auth: BearerTokenAuth,
        replicas: Replicas,
        *,
        bindings: Mapping[str, NamespaceName],
        served: NamespaceName,
        failures: FailureLimiter | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._reload = reload
        self._store = store
        self._auth = auth
        self._replicas = replicas
        self._failures = failures if failures is not None else FailureLimiter()
        self._environments = {ns: binding.lower() for binding, ns in bindings.items()}
        self._served = served
        self.routes = RouteTable(self._endpoints())
        self._openapi = _encode(openapi_document(self.routes.endpoints))

    def __repr__(self) -> str:
        return f"<DeployAPI {len(self.routes.endpoints)} endpoints, {self._auth!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            reply = await self._answer(scope, receive)
        except _ClientGone:
            return
        await _send(send, reply)

    async def _answer(self, scope: Scope, receive: Receive) -> Reply:
        try:
            return await self._dispatch(scope, receive)
        except ApiError as error:
            return _error_reply(error)
        except NamespaceNotFound as exc:
            return _error_reply(NotFound(str(exc), field="namespace"))
        except WorkerNotFound as exc:
            return _error_reply(NotFound(str(exc), field="worker"))
        except (NamespaceNotEmpty, NothingToRollBack) as exc:
            where = "namespace" if isinstance(exc, NamespaceNotEmpty) else "worker"
            return _error_reply(Conflict(str(exc), field=where))
        except StoreUnavailable as exc:
            logger.warning("admin: %s %s: %s", scope["method"], scope["path"], exc)
            return _error_reply(
                Unavailable(
                    "the registry store is unavailable; retry shortly",
                    headers=(("retry-after", "1"),),
                )
            )
        except _ClientGone:
            raise
        except Exception as exc:
            return _internal_error(scope, exc)

    async def _dispatch(self, scope: Scope, receive: Receive) -> Reply:
        method: str = scope["method"]
        segments = _path_segments(scope)
        match = self.routes.match(segments)
        if match is None:
            raise NotFound(f"no such endpoint: {method} {_shown_path(segments)}")
        endpoint = match.endpoints.get(method)
        if endpoint is None:
            allowed = ", ".join(sorted(match.endpoints))
            raise WrongMethod(
                f"{method} is not allowed here (allowed: {allowed})",
                headers=(("allow", allowed),),
            )
        credential = None
        if endpoint.permission is not None:
            credential = self._authenticate(scope)
        namespace = _optional_name(match.params, "namespace")
        worker = _optional_name(match.params, "worker")
        if credential is not None and endpoint.permission is not None:
            _authorize(
                scope,
                credential,
                endpoint.permission,
                None if namespace is None else NamespaceName(namespace),
            )
        query = _query(scope, endpoint)
        body = await self._read_body(scope, receive) if endpoint.takes_body else b""
        return await endpoint.handler(
            Call(
                None if namespace is None else NamespaceName(namespace),
                None if worker is None else WorkerName(worker),
                query,
                body,
                credential,
            )
        )

    def _authenticate(self, scope: Scope) -> Credential:
        client = _client(scope)
        try:
            self._failures.check(client)
            try:
                return self._auth.authenticate(_authorization(scope))
            except Unauthorized:
                self._failures.record(client)
                raise
        except (TooManyFailures, Unauthorized) as error:
            # Audit the refusal; never the header, which may hold a token that is almost right.
            logger.warning(
                "admin: %s %s from %s refused: %s",
                scope["method"],
                scope["path"],
                client,
                error.message,
            )
            raise

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        # No size check here: the admin listener's own limit (admin_limits, 1 MiB) refuses a
        # larger body with 413 before this app reads a byte of it.
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk: bytes = message.get("body", b"")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # --- the route table ------------------------------------------------------------------

    def _endpoints(self) -> list[Endpoint]:
        read, deploy = Permission.READ, Permission.DEPLOY
        ns = "/namespaces/{namespace}"
        worker = ns + "/workers/{worker}"
        return [
            Endpoint("GET", "/health", "health", "Liveness of the admin listener (no token).",
                     None, self._health, {200: ("The listener answers.", "Health")}),
            Endpoint("GET", "/ready", "ready",
                     "Readiness: the store answers and the namespace exists (no token).",
                     None, self._ready,
                     {200: ("Ready; the replicas sharing the store.", "Ready"),
                      503: ("Degraded: serving the last snapshot, or no namespace.",
                            "Degraded")}),
            Endpoint("GET", "/metrics", "metrics",
                     "Prometheus metrics of every serving process (no token).",
                     None, self._metrics_reply, {200: ("Prometheus text format 0.0.4.", None)}),
            Endpoint("POST", "/reload", "reload",
                     "Re-read the configuration file and apply it without dropping a request "
                     "(SIGHUP does the same).",
                     deploy, self._reload_reply,
                     {200: ("Applied; what the new configuration serves.", None),
                      422: ("The new configuration is invalid; the old one keeps serving.",
                            "Error")}),
            Endpoint("GET", "/openapi.json", "openapi", "This OpenAPI document (no token).",
                     None, self._openapi_reply, {200: ("The OpenAPI 3.1 document.", None)}),
            Endpoint("GET", "/namespaces", "listNamespaces",
                     "The namespaces this token can see.", read, self._list_namespaces,
                     {200: ("The namespaces, sorted by name.", "NamespaceList")}),
            Endpoint("PUT", ns, "createNamespace", "Create a namespace (idempotent).", deploy,
                     self._converging(self._put_namespace),
                     {201: ("Created.", "Namespace"), 200: ("It already existed.", "Namespace"),
                      202: _not_converged("Namespace")},
                     request="Empty", query=(_WAIT,), takes_body=True),
            Endpoint("DELETE", ns, "deleteNamespace",
                     "Delete a namespace; 409 while it holds workers unless force=true.", deploy,
                     self._converging(self._delete_namespace),
                     {204: ("Deleted.", None), 202: _not_converged("Pending"),
                      404: ("No such namespace.", "Error"),
                      409: ("It holds workers, or this dispatcher serves it.", "Error")},
                     query=(QueryParameter("force", {"type": "boolean", "default": False},
                                           "Undeploy its workers first."), _WAIT)),
            Endpoint("GET", ns + "/workers", "listWorkers",
                     "The current deployment of every worker in the namespace.", read,
                     self._list_workers,
                     {200: ("The workers, sorted by name.", "WorkerList"),
                      404: ("No such namespace.", "Error")}),
            Endpoint("GET", worker, "getWorker", "The current deployment of one worker.", read,
                     self._get_worker,
                     {200: ("Its current deployment.", "Deployment"),
                      404: ("No such namespace, or the worker is not deployed.", "Error")}),
            Endpoint("PUT", worker, "deployWorker",
                     "Deploy a new version (and pin it as <worker>-<version> when labelled).",
                     deploy, self._converging(self._put_worker),
                     {201: ("The worker's first deployment.", "Deployment"),
                      200: ("A new version of a deployed worker.", "Deployment"),
                      202: _not_converged("Deployment"),
                      404: ("No such namespace.", "Error"),
                      413: ("The body is larger than 1 MiB.", "Error"),
                      422: ("The body breaks the schema; the field is named.", "Error")},
                     request="DeployRequest", query=(_WAIT,), takes_body=True),
            Endpoint("DELETE", worker, "undeployWorker", "Remove the worker from the namespace.",
                     deploy, self._converging(self._delete_worker),
                     {204: ("Undeployed.", None), 202: _not_converged("Pending"),
                      404: ("No such namespace, or the worker is not deployed.", "Error")},
                     query=(_WAIT,)),
            Endpoint("POST", worker + "/rollback", "rollbackWorker",
                     "Deploy the previous version's target again, as a new version.", deploy,
                     self._converging(self._rollback),
                     {200: ("The new deployment.", "Deployment"),
                      202: _not_converged("Deployment"),
                      404: ("No such namespace, or the worker is not deployed.", "Error"),
                      409: ("There is no previous version.", "Error")},
                     request="Empty", query=(_WAIT,), takes_body=True),
            Endpoint("GET", "/deployments", "listDeployments",
                     "The audit trail, newest first.", read, self._deployments,
                     {200: ("Audit entries, newest first.", "AuditTrail")},
                     query=(
                         QueryParameter("namespace", {"type": "string", "pattern": _NAME_PATTERN},
                                        "Only this namespace."),
                         QueryParameter("worker", {"type": "string", "pattern": _NAME_PATTERN},
                                        "Only workers of this name."),
                         QueryParameter("limit", {"type": "integer", "minimum": 1,
                                                  "maximum": MAX_HISTORY_LIMIT,
                                                  "default": DEFAULT_HISTORY_LIMIT},
                                        "At most this many entries."),
                     )),
        ]  # fmt: skip

    # --- handlers -------------------------------------------------------------------------

    async def _health(self, call: Call) -> Reply:
        return Reply.json(200, {"status": "ok"})

    async def _ready(self, call: Call) -> Reply:
        readiness = await self._replicas.readiness()
        body: dict[str, Any] = {
            "status": "ready" if readiness.is_ready else "degraded",
            "revision": readiness.revision,
            "replica": readiness.replica,
            "store": "ok" if readiness.store_reachable else "unavailable",
            "replicas": [replica_json(r) for r in readiness.replicas],
        }
        if readiness.reason is not None:
            body["reason"] = readiness.reason
        return Reply.json(200 if readiness.is_ready else 503, body)

    # --- writes wait for the replicas -----------------------------------------------------

    def _converging(self, write: WriteHandler) -> Handler:
        """``write``, then: apply it in this process at once, and wait up to ``?wait=``
        seconds until every live replica has applied it (202 if the wait runs out)."""

        async def handle(call: Call) -> Reply:
            wait = _wait_param(call.query)
            written = await write(call)
            await self._replicas.apply_here()
            if wait == 0:
                return _plain_reply(written)
            return _settled_reply(written, await self._replicas.converge(written.revision, wait))

        return handle

    async def _metrics_reply(self, call: Call) -> Reply:
        if self._metrics is None:
            raise NotFound("metrics are not collected by this process")
        return Reply(200, await self._metrics(), content_type=METRICS_CONTENT_TYPE)

    async def _reload_reply(self, call: Call) -> Reply:
        if self._reload is None:
            raise NotFound("this process has no configuration to reload")
        _parse_empty_object(call.body)
        try:
            applied = await self._reload()
        except ConfigError as exc:
            raise ValidationFailed(f"configuration not reloaded: {exc}") from exc
        logger.info("admin: %s reloaded the configuration", _actor(call))
        return Reply.json(200, applied)

    async def _openapi_reply(self, call: Call) -> Reply:
        return Reply(200, self._openapi)

    async def _list_namespaces(self, call: Call) -> Reply:
        credential = _require(call.credential)
        names = [n for n in await self._store.list_namespaces() if credential.reaches(n)]
        return Reply.json(200, {"namespaces": [self._namespace_json(n) for n in names]})

    async def _put_namespace(self, call: Call) -> Written:
        namespace = _require(call.namespace)
        _parse_empty_object(call.body)
        created = await self._store.ensure_namespaces([namespace])
        logger.info(
            "admin: %s %s namespace %s",
            _actor(call),
            "created" if created else "kept",
            namespace,
        )
        # Kept or created, what the replicas must reach is the revision now current.
        revision = await self._store.revision()
        return Written(201 if created else 200, self._namespace_json(namespace), revision)

    async def _delete_namespace(self, call: Call) -> Written:
        namespace = _require(call.namespace)
        force = _boolean_param(call.query, "force")
        environment = self._environments.get(namespace)
        if environment is not None:
            raise Conflict(
                f'namespace "{namespace}" is bound to the {environment} environment in this '
                "dispatcher's configuration; unbind it there first",
                field="namespace",
            )
        revision = await self._store.delete_namespace(namespace, force=force)
        logger.info("admin: %s deleted namespace %s (force=%s)", _actor(call), namespace, force)
        return Written(204, None, revision)

    async def _list_workers(self, call: Call) -> Reply:
        namespace = _require(call.namespace)
        deployments = await self._load(namespace)
        return Reply.json(
            200,
            {"namespace": namespace, "workers": [deployment_json(d) for d in deployments]},
        )

    async def _get_worker(self, call: Call) -> Reply:
        namespace, worker = _require(call.namespace), _require(call.worker)
        for deployment in await self._load(namespace):
            if deployment.worker == worker:
                return Reply.json(200, deployment_json(deployment))
        raise _not_deployed(namespace, worker)

    async def _put_worker(self, call: Call) -> Written:
        namespace, worker = _require(call.namespace), _require(call.worker)
        request = DeployRequest.from_json(_parse_json(call.body), worker)
        deployment = await self._store.deploy(
            namespace,
            worker,
            request.target,
            actor=_actor(call),
            metadata=request.metadata,
            version_label=request.version_label,
            pinned=request.pinned,
        )
        logger.info(
            "admin: %s deployed %s/%s version %d%s: %s",
            deployment.actor,
            namespace,
            worker,
            deployment.version,
            f" ({request.version_label}, pinned as {request.pinned})" if request.pinned else "",
            request.target.describe(),
        )
        body = deployment_json(deployment)
        if request.pinned is not None:
            body["pinned_worker"] = request.pinned
        if deployment.previous_version is None:
            location = f"/namespaces/{namespace}/workers/{worker}"
            return Written(201, body, deployment.revision, (("location", location),))
        return Written(200, body, deployment.revision)

    async def _delete_worker(self, call: Call) -> Written:
        namespace, worker = _require(call.namespace), _require(call.worker)
        revision = await self._store.undeploy(namespace, worker, actor=_actor(call))
        logger.info("admin: %s undeployed %s/%s", _actor(call), namespace, worker)
        return Written(204, None, revision)

    async def _rollback(self, call: Call) -> Written:
        namespace, worker = _require(call.namespace), _require(call.worker)
        _parse_empty_object(call.body)
        deployment = await self._store.rollback(namespace, worker, actor=_actor(call))
        (entry,) = await self._store.history(namespace=namespace, worker=worker, limit=1)
        logger.info(
            "admin: %s rolled back %s/%s to version %s, now version %d",
            deployment.actor,
            namespace,
            worker,
            entry.restored_version,
            deployment.version,
        )
        body = deployment_json(deployment)
        if entry.version == deployment.version:  # else another write came in between
            body["restored_version"] = entry.restored_version
        return Written(200, body, deployment.revision)

    async def _deployments(self, call: Call) -> Reply:
        credential = _require(call.credential)
        given_namespace = _optional_name(call.query, "namespace")
        given_worker = _optional_name(call.query, "worker")
        namespace = None if given_namespace is None else NamespaceName(given_namespace)
        worker = None if given_worker is None else WorkerName(given_worker)
        limit = _limit_param(call.query)
        if namespace is not None:
            _require_reach(credential, Permission.READ, namespace)
            entries = await self._store.history(namespace=namespace, worker=worker, limit=limit)
        elif credential.namespaces is None:
            entries = await self._store.history(worker=worker, limit=limit)
        else:
            entries = await self._history_of(credential.namespaces, worker, limit)
        return Reply.json(200, {"deployments": [audit_json(e) for e in entries]})

    async def _history_of(
        self, namespaces: Iterable[NamespaceName], worker: WorkerName | None, limit: int
    ) -> list[AuditEntry]:
        """The trail of several namespaces merged newest first (a restricted token's view)."""
        entries: list[AuditEntry] = []
        for namespace in sorted(namespaces):
            entries += await self._store.history(namespace=namespace, worker=worker, limit=limit)
        entries.sort(key=lambda e: e.revision, reverse=True)
        return entries[:limit]

    async def _load(self, namespace: NamespaceName) -> list[Deployment]:
        loaded = await self._store.load_namespace(namespace)
        if loaded is None:
            raise NotFound(
                f'namespace "{namespace}" does not exist in the registry store', field="namespace"
            )
        return loaded[1]

    def _namespace_json(self, namespace: NamespaceName) -> dict[str, Any]:
        return {
            "name": namespace,
            "environment": self._environments.get(namespace),
            "serving": namespace == self._served,
        }


# --- the deploy request --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeployRequest:
    """A validated ``PUT .../workers/{worker}`` body; ``pinned`` is ``<worker>-<version>``."""

    target: Target
    version_label: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    pinned: WorkerName | None = None

    @classmethod
    def from_json(cls, data: object, worker: WorkerName) -> DeployRequest:
        """``ValidationFailed`` (422) names the first field that is wrong."""
        if not isinstance(data, dict):
            raise ValidationFailed(
                f"the body must be a JSON object (got {_describe(data)})", field="body"
            )
        unknown = sorted(set(data) - set(_DEPLOY_FIELDS))
        if unknown:
            raise ValidationFailed(
                f"unknown field {unknown[0]!r} (expected {', '.join(_DEPLOY_FIELDS)})",
                field=unknown[0],
            )
        label = _version_label(data.get("version"))
        return cls(
            target=_target(data),
            version_label=label,
            metadata=_metadata(data.get("metadata")),
            pinned=None if label is None else pinned_worker(worker, label),
        )


def pinned_worker(worker: WorkerName, label: str) -> WorkerName:
    """``gateway`` + ``v2`` → ``gateway-v2``: the name ``v2.gateway.do`` resolves to.

    Dots in a label become dashes (``1.2`` → ``gateway-1-2``), as a worker name has none.
    """
    name = f"{worker}-{label.replace('.', '-')}"
    try:
        return WorkerName(validate_name(name, "pinned worker name"))
    except ConfigError as exc:
        raise ValidationFailed(
            f"version {label!r} would pin the worker as {name!r}, which is not a valid worker "
            "name (1 to 63 characters of a-z, 0-9 and '-', not ending with '-')",
            field="version",
        ) from exc


def _target(data: Mapping[str, Any]) -> Target:
    if "url" in data and "app" in data:
        raise ValidationFailed("give either url or app, not both", field="app")
    if "app" in data:
        if "preserve_host" in data:
            raise ValidationFailed(
                "preserve_host applies to url workers only", field="preserve_host"
            )
        return _app_target(data["app"])
    if "url" not in data:
        raise ValidationFailed(
            "required: url (an upstream such as 'http://10.0.0.5:8080') or app (an in-process "
            "ASGI app as 'module:attribute')",
            field="url",
        )
    preserve_host = data.get("preserve_host", True)
    if not isinstance(preserve_host, bool):
        raise ValidationFailed(
            f"preserve_host must be true or false (got {_describe(preserve_host)})",
            field="preserve_host",
        )
    return UpstreamTarget(_upstream_urls(data["url"]), preserve_host)


def _app_target(value: object) -> AppTarget:
    if not isinstance(value, str):
        raise ValidationFailed(f"app must be a string (got {_describe(value)})", field="app")
    try:
        target = parse_target({"app": value}, "worker")
    except ConfigError as exc:
        raise ValidationFailed(str(exc).removeprefix("worker."), field="app") from exc
    assert isinstance(target, AppTarget)
    return target


def _upstream_urls(value: object) -> tuple[UpstreamURL, ...]:
    if isinstance(value, str):
        return (_upstream_url(value, "url"),)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_UPSTREAM_URLS:
        raise ValidationFailed(
            f"url must be a URL string or an array of 1 to {MAX_UPSTREAM_URLS} URL strings "
            f"(got {_describe(value)})",
            field="url",
        )
    urls = tuple(_upstream_url(item, f"url[{index}]") for index, item in enumerate(value))
    if len(set(urls)) != len(urls):
        raise ValidationFailed("url lists the same upstream twice", field="url")
    return urls


def _upstream_url(value: object, where: str) -> UpstreamURL:
    """http and https only: a Unix socket or any other scheme is not for remote deployers."""
    if not isinstance(value, str):
        raise ValidationFailed(
            f"{where} must be a URL string (got {_describe(value)})", field=where
        )
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in ("http", "https"):
        raise ValidationFailed(
            f"{where} must be an http:// or https:// URL (got {_shorten(value)!r})", field=where
        )
    try:
        url = parse_upstream_url(value, where)
    except ConfigError as exc:
        raise ValidationFailed(str(exc), field=where) from exc
    if _is_link_local(url.host):
        # Cloud metadata services live there (169.254.169.254): ROBUSTNESS.md item 53.
        raise ValidationFailed(
            f"{where}: link-local addresses are not allowed (got {url.host})", field=where
        )
    return url


def _is_link_local(host: str) -> bool:
    """Link-local (cloud metadata) however the address is spelled: the resolver takes the
    legacy IPv4 forms (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``169.254.43518``) that
    ``ip_address`` refuses, and an IPv4-mapped IPv6 address reaches the IPv4 one."""
    try:
        address: IPv4Address | IPv6Address = ip_address(host)
    except ValueError:
        try:
            address = IPv4Address(socket.inet_aton(host))
        except OSError:
            return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local


def _version_label(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or VERSION_LABEL.fullmatch(value) is None:
        raise ValidationFailed(
            "version must be 1 to 31 characters of a-z, 0-9, '.' and '-', starting with a "
            f"letter or digit, such as 'v2' (got {_describe(value)})",
            field="version",
        )
    return value


def _metadata(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise ValidationFailed(
            f"metadata must be an object of strings (got {_describe(value)})", field="metadata"
        )
    if len(value) > MAX_METADATA_ENTRIES:
        raise ValidationFailed(
            f"metadata has {len(value)} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            field="metadata",
        )
    for key, item in value.items():
        _check_metadata_entry(key, item)
    return MappingProxyType(dict(value))


def _check_metadata_entry(key: str, value: object) -> None:
    if METADATA_KEY.fullmatch(key) is None:
        raise ValidationFailed(
            f"metadata key {_shorten(key)!r} must be 1 to 64 characters of letters, digits and "
            "_ . : / -, starting with a letter or digit",
            field="metadata",
        )
    where = f"metadata.{key}"
    if not isinstance(value, str):
        raise ValidationFailed(f"{where} must be a string (got {_describe(value)})", field=where)
    if len(value) > MAX_METADATA_VALUE or _CONTROL.search(value):
        raise ValidationFailed(
            f"{where} must be at most {MAX_METADATA_VALUE} characters without control characters",
            field=where,
        )


# --- JSON ----------------------------------------------------------------------------------


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    """A deployment record as the API returns it."""
    return {
        "namespace": deployment.namespace,
        "worker": deployment.worker,
        "version": deployment.version,
        "version_label": deployment.version_label,
        "previous_version": deployment.previous_version,
        "target": deployment.target.to_json(),
        "deployed_at": deployment.deployed_at,
        "actor": deployment.actor,
        "metadata": dict(deployment.metadata),
        "revision": deployment.revision,
    }


def replica_json(replica: Replica) -> dict[str, Any]:
    """A replica as ``/ready`` and the convergence fields of a write show it."""
    return {
        "id": replica.id,
        "revision": replica.revision,
        "host": replica.host,
        "pid": replica.pid,
        "started_at": replica.started_at,
        "last_seen": replica.last_seen,
        "age": round(replica.age, 3),
        "info": dict(replica.details),
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """An audit trail entry as the API returns it."""
    return {
        "revision": entry.revision,
        "action": entry.action,
        "namespace": entry.namespace,
        "worker": entry.worker,
        "version": entry.version,
        "version_label": entry.version_label,
        "restored_version": entry.restored_version,
        "target": None if entry.target is None else entry.target.to_json(),
        "at": entry.at,
        "actor": entry.actor,
        "metadata": dict(entry.metadata),
    }


def _parse_json(body: bytes) -> object:
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object", field="body")
    try:
        return strictjson.loads(body)
    except strictjson.JsonRejected as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", field="body") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}",
            field="body",
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("the request body is not valid UTF-8 JSON", field="body") from exc


def _parse_empty_object(body: bytes) -> None:
    """Endpoints without fields take no body, or ``{}``; a field is an unknown field."""
    if not body.strip():
        return
    data = _parse_json(body)
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"the body must be empty or a JSON object (got {_describe(data)})", field="body"
        )
    if data:
        first = sorted(data)[0]
        raise ValidationFailed(f"unknown field {first!r} (this endpoint takes none)", field=first)


def _encode(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_shorten(value)!r})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- pieces of a request -------------------------------------------------------------------


def _path_segments(scope: Scope) -> list[str]:
    """The raw path split on ``/`` and then percent-decoded, so ``%2F`` stays in its segment."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    # Only the leading slash goes: "/health/" and "//namespaces" are not "/health" and
    # "/namespaces", as an exact table promises.
    segments = raw.split(b"?", 1)[0].removeprefix(b"/").split(b"/")
    try:
        return [unquote(segment.decode("ascii"), errors="strict") for segment in segments]
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise InvalidRequest("the path is not valid percent-encoded UTF-8") from exc


def _shown_path(segments: Sequence[str]) -> str:
    return _shorten("/" + "/".join(segments))


def _optional_name(params: Mapping[str, str], name: str) -> str | None:
    """The named path or query parameter, validated as a worker/namespace name, if given."""
    value = params.get(name)
    if value is None:
        return None
    try:
        return validate_name(value, f"{name} name")
    except ConfigError as exc:
        shown = _shorten(value)
        raise InvalidRequest(str(exc).replace(repr(value), repr(shown)), field=name) from exc


def _query(scope: Scope, endpoint: Endpoint) -> Mapping[str, str]:
    raw: bytes = scope.get("query_string", b"")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise InvalidRequest("the query string is not valid percent-encoded UTF-8") from exc
    accepted = {parameter.name for parameter in endpoint.query}
    query: dict[str, str] = {}
    for name, value in pairs:
        if name not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise InvalidRequest(
                f"unknown query parameter {_shorten(name)!r} (accepted: {known})", field=name
            )
        if name in query:
            raise InvalidRequest(f"query parameter {name!r} is given twice", field=name)
        query[name] = value
    return query


def _boolean_param(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false")
    if value not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false (got {_shorten(value)!r})", field=name)
    return value == "true"


def _wait_param(query: Mapping[str, str]) -> float:
    value = query.get("wait")
    if value is None:
        return DEFAULT_WAIT
    if _WAIT_VALUE.fullmatch(value) is None or float(value) > MAX_WAIT:
        raise InvalidRequest(
            f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, with at most 3 decimals "
            f"(got {_shorten(value)!r})",
            field="wait",
        )
    return float(value)


def _limit_param(query: Mapping[str, str]) -> int:
    value = query.get("limit", str(DEFAULT_HISTORY_LIMIT))
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_HISTORY_LIMIT:
        raise InvalidRequest(
            f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT} (got {_shorten(value)!r})",
            field="limit",
        )
    return int(value)


def _headers(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key.lower() == name]


def _authorization(scope: Scope) -> bytes | None:
    values = _headers(scope, b"authorization")
    if len(values) > 1:
        raise Unauthorized(
            "malformed Authorization header: sent more than once",
            headers=(("www-authenticate", 'Bearer realm="dispatcher", error="invalid_request"'),),
        )
    return values[0] if values else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _authorize(
    scope: Scope, credential: Credential, permission: Permission, namespace: NamespaceName | None
) -> None:
    try:
        _require_reach(credential, permission, namespace)
    except Forbidden as error:
        logger.warning(
            "admin: %s %s by %s forbidden: %s",
            scope["method"],
            scope["path"],
            credential.name,
            error.message,
        )
        raise


def _require_reach(
    credential: Credential, permission: Permission, namespace: NamespaceName | None
) -> None:
    if not credential.allows(permission):
        raise Forbidden(f'token "{credential.name}" lacks the {permission.value} scope')
    if namespace is not None and not credential.reaches(namespace):
        raise Forbidden(
            f'token "{credential.name}" may not access namespace "{namespace}"', field="namespace"
        )


def _require(value: _T | None) -> _T:
    assert value is not None, "the route table guarantees this parameter"
    return value


def _actor(call: Call) -> str:
    return _require(call.credential).name


def _not_deployed(namespace: NamespaceName, worker: WorkerName) -> NotFound:
    return NotFound(f'worker "{worker}" is not deployed in namespace "{namespace}"', field="worker")


# --- replies -------------------------------------------------------------------------------


def _error_reply(error: ApiError) -> Reply:
    return Reply.json(error.status, error.fields(), error.headers)


def _plain_reply(written: Written) -> Reply:
    headers = (*written.headers, ("dispatcher-revision", str(written.revision)))
    if written.body is None:
        return Reply(written.status, b"", headers)
    return Reply.json(written.status, written.body, headers)


def _settled_reply(written: Written, outcome: Convergence) -> Reply:
    """The write's own answer when every live replica has applied it; else 202 Accepted:
    committed, but not yet served everywhere (``pending_replicas``)."""
    headers = (
        *written.headers,
        ("dispatcher-revision", str(written.revision)),
        ("dispatcher-converged", "true" if outcome.converged else "false"),
    )
    replicas = [replica_json(r) for r in outcome.replicas]
    if outcome.converged:
        if written.body is None:
            return Reply(written.status, b"", headers)
        return Reply.json(
            written.status, {**written.body, "converged": True, "replicas": replicas}, headers
        )
    base: dict[str, Any] = written.body or {"revision": written.revision}
    pending = list(outcome.pending)
    body = {**base, "converged": False, "pending_replicas": pending, "replicas": replicas}
    if outcome.problem is not None:
        body["convergence_problem"] = outcome.problem
    logger.warning(
        "admin: revision %d committed, but not applied by %s within the wait%s",
        written.revision,
        ", ".join(pending) or "every replica",
        f" ({outcome.problem})" if outcome.problem else "",
    )
    return Reply.json(202, body, headers)


def _internal_error(scope: Scope, exc: Exception) -> Reply:
    error_id = secrets.token_hex(6)
    if isinstance(exc, StoreError):
        logger.error("admin error %s: %s %s: %s", error_id, scope["method"], scope["path"], exc)
    else:
        logger.exception("admin error %s: %s %s", error_id, scope["method"], scope["path"])
    error = InternalError(f"Unexpected error in the Deploy API (error id {error_id})")
    return Reply.json(error.status, error.fields())


async def _send(send: Send, reply: Reply) -> None:
    headers = [(name.encode(), value.encode()) for name, value in reply.headers]
    if reply.payload:
        headers = [(b"content-type", reply.content_type), *_REPLY_HEADERS, *headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.payload})


# --- the OpenAPI document ------------------------------------------------------------------


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """OpenAPI 3.1 for ``endpoints``: paths, parameters, bodies and responses from the table."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dispatcher Deploy API",
            "version": API_VERSION,
            "description": "Namespaces, workers, rollback and the audit trail of a dispatcher.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    responses = {
        str(status): _response(description, schema)
        for status, (description, schema) in sorted(endpoint.responses.items())
    }
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "parameters": _parameters(endpoint),
        "responses": responses,
        "security": [],
    }
    if endpoint.permission is not None:
        operation["security"] = [{"bearerAuth": []}]
        operation["x-scope"] = endpoint.permission.value
        for status, description in _AUTH_RESPONSES.items():
            responses.setdefault(str(status), _response(description, "Error"))
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": endpoint.request != "Empty",
            "content": {"application/json": {"schema": _ref(endpoint.request)}},
        }
    if _has_input(endpoint):
        responses.setdefault("400", _response("A malformed name, query or body.", "Error"))
    return operation


def _has_input(endpoint: Endpoint) -> bool:
    return "{" in endpoint.path or bool(endpoint.query) or endpoint.takes_body


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    parameters = [
        {
            "name": segment[1:-1],
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": _NAME_PATTERN},
        }
        for segment in endpoint.segments
        if segment.startswith("{")
    ]
    parameters += [
        {"name": q.name, "in": "query", "required": False, "schema": dict(q.schema),
         "description": q.description}
        for q in endpoint.query
    ]  # fmt: skip
    return parameters


def _response(description: str, schema: str | None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_WAIT: Final = QueryParameter(
    "wait",
    {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": DEFAULT_WAIT},
    "Seconds to wait until every live replica has applied the write (202 when the wait runs "
    "out); 0 answers at once.",
)


def _not_converged(schema: str) -> tuple[str, str]:
    return (
        "Committed, but some live replica had not applied it when the wait ran out "
        "(pending_replicas).",
        schema,
    )


_AUTH_RESPONSES: Final = {
    401: "No token, or an unknown one (WWW-Authenticate: Bearer).",
    403: "The token lacks the scope, or may not access the namespace.",
    429: "Too many failed authentications from this address (Retry-After).",
    503: "The registry store is unavailable (Retry-After).",
}

_TARGET_URL: Final = {"type": "string", "format": "uri", "pattern": "^https?://"}
_CONVERGENCE: Final[dict[str, Any]] = {
    "converged": {
        "type": "boolean",
        "description": "Every live replica had applied the write (absent with wait=0).",
    },
    "replicas": {"type": "array", "items": {"$ref": "#/components/schemas/Replica"}},
    "pending_replicas": {
        "type": "array",
        "items": {"type": "string"},
        "description": "202 only: the live replicas that had not applied it yet.",
    },
}
_STRINGS: Final = {"type": "object", "additionalProperties": {"type": "string"}}
_SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "code"],
        "properties": {
            "error": {"type": "string", "examples": ["Validation failed"]},
            "message": {"type": "string"},
            "code": {"type": "string", "examples": ["validation_failed"]},
            "field": {"type": "string", "description": "The input at fault, when there is one."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Replica": {
        "type": "object",
        "required": ["id", "revision", "host", "pid", "started_at", "last_seen", "age"],
        "properties": {
            "id": {"type": "string", "examples": ["web-1:4242:9f3ab2c1"]},
            "revision": {"type": "integer", "description": "The revision it has applied."},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "started_at": {"type": "string", "format": "date-time"},
            "last_seen": {"type": "string", "format": "date-time"},
            "age": {"type": "number", "description": "Seconds since last seen (store clock)."},
            "info": _STRINGS,
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "revision", "replica", "store", "replicas"],
        "properties": {
            "status": {"const": "ready"},
            "revision": {"type": "integer", "description": "The revision this process serves."},
            "replica": {"type": "string", "description": "This process's replica id."},
            "store": {"const": "ok"},
            "replicas": {"type": "array", "items": _ref("Replica")},
        },
    },
    "Degraded": {
        "type": "object",
        "required": ["status", "reason", "revision", "replica", "store"],
        "properties": {
            "status": {"const": "degraded"},
            "reason": {"type": "string"},
            "revision": {"type": "integer"},
            "replica": {"type": "string"},
            "store": {"enum": ["ok", "unavailable"]},
            "replicas": {"type": "array", "items": _ref("Replica")},
        },
    },
    "Pending": {
        "type": "object",
        "required": ["revision", "converged", "pending_replicas", "replicas"],
        "properties": {"revision": {"type": "integer"}, **_CONVERGENCE},
    },
    "Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "Namespace": {
        "type": "object",
        "required": ["name", "environment", "serving"],
        "properties": {
            "name": {"type": "string", "pattern": _NAME_PATTERN},
            "environment": {"type": ["string", "null"]},
            "serving": {"type": "boolean", "description": "This dispatcher serves it."},
            **_CONVERGENCE,
        },
    },
    "NamespaceList": {
        "type": "object",
        "required": ["namespaces"],
        "properties": {"namespaces": {"type": "array", "items": _ref("Namespace")}},
    },
    "Target": {
        "oneOf": [
            {
                "type": "object",
                "required": ["url"],
                "additionalProperties": False,
                "properties": {
                    "url": {
                        "oneOf": [
                            _TARGET_URL,
                            {
                                "type": "array",
                                "items": _TARGET_URL,
                                "minItems": 1,
                                "maxItems": MAX_UPSTREAM_URLS,
                            },
                        ]
                    },
                    "preserve_host": {"type": "boolean", "default": True},
                },
            },
            {
                "type": "object",
                "required": ["app"],
                "additionalProperties": False,
                "properties": {"app": {"type": "string", "examples": ["package.module:app"]}},
            },
        ]
    },
    "DeployRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "url (with optional preserve_host) or app, exactly one.",
        "properties": {
            "url": {"oneOf": [_TARGET_URL, {"type": "array", "items": _TARGET_URL}]},
            "preserve_host": {"type": "boolean", "default": True},
            "app": {"type": "string"},
            "version": {"type": "string", "pattern": f"^{VERSION_LABEL.pattern}$"},
            "metadata": {**_STRINGS, "maxProperties": MAX_METADATA_ENTRIES},
        },
    },
    "Deployment": {
        "type": "object",
        "required": ["namespace", "worker", "version", "target", "deployed_at", "actor"],
        "properties": {
            "namespace": {"type": "string"},
            "worker": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "version_label": {"type": ["string", "null"]},
            "previous_version": {
                "type": ["integer", "null"],
                "description": "The version a rollback returns to.",
            },
            "target": _ref("Target"),
            "deployed_at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string", "description": "The name of the token that deployed."},
            "metadata": _STRINGS,
            "revision": {"type": "integer"},
            "pinned_worker": {
                "type": "string",
                "description": "Deploy only: the <worker>-<version> twin deployed with it.",
            },
            "restored_version": {
                "type": "integer",
                "description": "Rollback only: the version whose target was deployed again.",
            },
            **_CONVERGENCE,
        },
    },
    "WorkerList": {
        "type": "object",
        "required": ["namespace", "workers"],
        "properties": {
            "namespace": {"type": "string"},
            "workers": {"type": "array", "items": _ref("Deployment")},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["revision", "action", "namespace", "worker", "at", "actor"],
        "properties": {
            "revision": {"type": "integer"},
            "action": {"enum": ["deploy", "undeploy", "rollback"]},
            "namespace": {"type": "string"},
            "worker": {"type": "string"},
            "version": {"type": ["integer", "null"]},
            "version_label": {"type": ["string", "null"]},
            "restored_version": {"type": ["integer", "null"]},
            "target": {"oneOf": [_ref("Target"), {"type": "null"}]},
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "metadata": _STRINGS,
        },
    },
    "AuditTrail": {
        "type": "object",
        "required": ["deployments"],
        "properties": {"deployments": {"type": "array", "items": _ref("AuditEntry")}},
    },
}
