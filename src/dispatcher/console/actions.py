"""``Actions``: deploy, roll back and undeploy from the console. Each is a form and a
confirmation naming the environment; the write itself goes through the Deploy API's own
handler (the same validation, store transaction, audit entry, log line and wait for the
replicas), called in-process with the session's credential.

Example::

    actions = Actions(api, renderer, store, frame)
    await actions.confirm_rollback(request, session, namespace, worker)   # the confirmation
    await actions.rollback(request, session, namespace, worker)           # 303 + notice
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.admin import Call, DeployAPI, DeployRequest, Handler, Reply
from dispatcher.auth import Credential, Permission
from dispatcher.console.render import Frame, Renderer
from dispatcher.console.sessions import Session
from dispatcher.console.web import PREFIX, Request, Response
from dispatcher.errors import ApiError, ConfigError, DispatcherError, Forbidden, NotFound
from dispatcher.store import RegistryStore
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, validate_name

WRITES: Final = ("deployWorker", "rollbackWorker", "undeployWorker")
"""The Deploy API operations the console performs, by their OpenAPI operation id."""
_PREVIOUS_LOOKBACK: Final = 1000


class FormProblem(Exception):
    """A deploy form that cannot become a deploy request; ``field`` is the input at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class DeployForm:
    """The deploy form's fields as typed (kept to fill the form in again)."""

    worker: str = ""
    kind: str = "url"
    urls: str = ""
    preserve_host: bool = True
    app: str = ""
    version: str = ""
    metadata: str = ""

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> DeployForm:
        return cls(
            worker=form.get("worker", "").strip(),
            kind="app" if form.get("kind") == "app" else "url",
            urls=form.get("urls", "").strip(),
            preserve_host=form.get("preserve_host") == "on",
            app=form.get("app", "").strip(),
            version=form.get("version", "").strip(),
            metadata=form.get("metadata", "").strip(),
        )

    def body(self) -> dict[str, Any]:
        """The ``PUT .../workers/{worker}`` JSON body these fields mean."""
        body: dict[str, Any] = {}
        if self.kind == "app":
            body["app"] = self.app
        else:
            urls = [line.strip() for line in self.urls.splitlines() if line.strip()]
            body["url"] = urls[0] if len(urls) == 1 else urls
            if not self.preserve_host:
                body["preserve_host"] = False
        if self.version:
            body["version"] = self.version
        metadata = _metadata(self.metadata)
        if metadata:
            body["metadata"] = metadata
        return body

    def validated(self) -> tuple[WorkerName, DeployRequest, bytes]:
        """The worker, the request as the Deploy API reads it, and its JSON body;
        ``FormProblem`` names the field at fault, in the Deploy API's own words."""
        try:
            worker = WorkerName(validate_name(self.worker, "worker name"))
        except ConfigError as exc:
            raise FormProblem(str(exc), "worker") from exc
        body = self.body()
        try:
            request = DeployRequest.from_json(body, worker)
        except ApiError as exc:
            raise FormProblem(exc.message, _form_field(exc.field)) from exc
        return worker, request, json.dumps(body).encode()


class Actions:
    """The console's writes: forms and confirmations, then the Deploy API's handlers."""

    __slots__ = ("_handlers", "_renderer", "_store", "_frame")

    def __init__(
        self, api: DeployAPI, renderer: Renderer, store: RegistryStore, frame: Frame
    ) -> None:
        by_operation = {e.operation_id: e.handler for e in api.routes.endpoints}
        self._handlers: Mapping[str, Handler] = {op: by_operation[op] for op in WRITES}
        self._renderer = renderer
        self._store = store
        self._frame = frame

    def __repr__(self) -> str:
        return f"<Actions {', '.join(WRITES)}>"

    # --- deploy ------------------------------------------------------------------------------

    async def deploy_form(
        self, request: Request, session: Session, namespace: NamespaceName
    ) -> Response:
        credential = _deployer(session, namespace)
        form = DeployForm(worker=request.query.get("worker", ""))
        if form.worker:
            current = await self._current(namespace, form.worker)
            if current is not None:
                form = _form_of(current)
        await self._require_namespace(namespace)
        return self._deploy_page(session, credential, namespace, form)

    async def deploy(
        self, request: Request, session: Session, namespace: NamespaceName
    ) -> Response:
        """``step=review`` shows the confirmation, ``step=confirm`` deploys, ``step=edit``
        goes back to the form with what was typed."""
        credential = _deployer(session, namespace)
        form = DeployForm.from_form(request.form)
        step = request.form.get("step", "review")
        if step == "edit":
            return self._deploy_page(session, credential, namespace, form)
        try:
            worker, deploy_request, body = form.validated()
        except FormProblem as problem:
            return self._deploy_page(session, credential, namespace, form, problem, status=422)
        if step != "confirm":
            current = await self._current(namespace, worker)
            return self._renderer.page(
                "deploy_review.html",
                session,
                page="namespaces",
                title=f"Confirm: deploy {worker}",
                namespace=namespace,
                form=form,
                worker=worker,
                request=deploy_request,
                current=current,
            )
        outcome = await self._write("deployWorker", credential, namespace, worker, body)
        if isinstance(outcome, str):
            refused = FormProblem(outcome, "worker")
            return self._deploy_page(session, credential, namespace, form, refused, status=409)
        version = outcome.get("version")
        where = self._where(namespace)
        session.notice = (
            "ok",
            f"Deployed {worker} version {version} to {where}.{_spread(outcome)}",
        )
        return _back_to(namespace)

    def _deploy_page(
        self,
        session: Session,
        credential: Credential,
        namespace: NamespaceName,
        form: DeployForm,
        problem: FormProblem | None = None,
        *,
        status: int = 200,
    ) -> Response:
        return self._renderer.page(
            "deploy.html",
            session,
            status=status,
            page="namespaces",
            title=f"Deploy to {namespace}",
            namespace=namespace,
            form=form,
            problem=problem,
        )

    # --- roll back and undeploy --------------------------------------------------------------

    async def confirm_rollback(
        self, request: Request, session: Session, namespace: NamespaceName, worker: WorkerName
    ) -> Response:
        return await self._confirmation("rollback", session, namespace, worker)

    async def confirm_undeploy(
        self, request: Request, session: Session, namespace: NamespaceName, worker: WorkerName
    ) -> Response:
        return await self._confirmation("undeploy", session, namespace, worker)

    async def rollback(
        self, request: Request, session: Session, namespace: NamespaceName, worker: WorkerName
    ) -> Response:
        credential = _deployer(session, namespace)
        outcome = await self._write("rollbackWorker", credential, namespace, worker, b"")
        if isinstance(outcome, str):
            session.notice = ("error", f"{worker} was not rolled back: {outcome}")
        else:
            restored = outcome.get("restored_version")
            back_to = f" (the target of version {restored})" if restored is not None else ""
            session.notice = (
                "ok",
                f"Rolled back {worker} in {self._where(namespace)}: now version "
                f"{outcome.get('version')}{back_to}.{_spread(outcome)}",
            )
        return _back_to(namespace)

    async def undeploy(
        self, request: Request, session: Session, namespace: NamespaceName, worker: WorkerName
    ) -> Response:
        credential = _deployer(session, namespace)
        outcome = await self._write("undeployWorker", credential, namespace, worker, b"")
        if isinstance(outcome, str):
            session.notice = ("error", f"{worker} was not undeployed: {outcome}")
        else:
            session.notice = (
                "ok",
                f"Undeployed {worker} from {self._where(namespace)}.{_spread(outcome)}",
            )
        return _back_to(namespace)

    async def _confirmation(
        self, action: str, session: Session, namespace: NamespaceName, worker: WorkerName
    ) -> Response:
        _deployer(session, namespace)
        await self._require_namespace(namespace)
        current = await self._current(namespace, worker)
        previous = None
        if action == "rollback" and current is not None:
            previous = await self._previous_target(current)
        return self._renderer.page(
            "confirm.html",
            session,
            page="namespaces",
            title=f"Confirm: {action} {worker}",
            action=action,
            namespace=namespace,
            worker=worker,
            current=current,
            previous=previous,
        )

    # --- the Deploy API's handlers -----------------------------------------------------------

    async def _write(
        self,
        operation: str,
        credential: Credential,
        namespace: NamespaceName,
        worker: WorkerName,
        body: bytes,
    ) -> dict[str, Any] | str:
        """The handler's JSON answer, or what went wrong in the Deploy API's words."""
        call = Call(namespace, worker, {}, body, credential)
        try:
            reply: Reply = await self._handlers[operation](call)
        except ApiError as exc:
            return exc.message
        except DispatcherError as exc:  # the store's named errors: not found, nothing to undo
            return str(exc)
        answer: dict[str, Any] = json.loads(reply.payload) if reply.payload else {}
        answer["status"] = reply.status
        return answer

    async def _current(self, namespace: NamespaceName, worker: str) -> Deployment | None:
        loaded = await self._store.load_namespace(namespace)
        if loaded is None:
            return None
        return next((d for d in loaded[1] if d.worker == worker), None)

    async def _previous_target(self, current: Deployment) -> Deployment | None:
        """The deployment a rollback would restore (its version and target), from the trail."""
        if current.previous_version is None:
            return None
        entries = await self._store.history(
            namespace=current.namespace, worker=current.worker, limit=_PREVIOUS_LOOKBACK
        )
        for entry in entries:
            if entry.version == current.previous_version and entry.target is not None:
                return Deployment(
                    entry.namespace,
                    entry.worker,
                    current.previous_version,
                    entry.target,
                    entry.at,
                    entry.actor,
                    entry.metadata,
                    entry.version_label,
                )
        return None

    async def _require_namespace(self, namespace: NamespaceName) -> None:
        if await self._store.load_namespace(namespace) is None:
            raise NotFound(f'namespace "{namespace}" does not exist', field="namespace")

    def _where(self, namespace: NamespaceName) -> str:
        environment = self._frame.environment_of(namespace)
        return f"{environment} ({namespace})" if environment else str(namespace)


def _deployer(session: Session, namespace: NamespaceName) -> Credential:
    """The session's credential when it may deploy to ``namespace``; else ``Forbidden``."""
    credential = session.credential
    if not credential.allows(Permission.DEPLOY, namespace):
        raise Forbidden(f'token "{credential.name}" may not deploy to namespace "{namespace}"')
    return credential


def _form_of(deployment: Deployment) -> DeployForm:
    """The form filled in with a deployment's target, to deploy a new version of it."""
    target = deployment.target.to_json()
    urls = target.get("url", "")
    return DeployForm(
        worker=deployment.worker,
        kind="app" if "app" in target else "url",
        urls="\n".join(urls) if isinstance(urls, list) else str(urls),
        preserve_host=bool(target.get("preserve_host", True)),
        app=str(target.get("app", "")),
    )


def _metadata(text: str) -> dict[str, str]:
    """``key=value`` lines; a line without ``=`` is a ``FormProblem``."""
    metadata: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FormProblem(f"metadata line {number} is not key=value", "metadata")
        metadata[key.strip()] = value.strip()
    return metadata


def _form_field(field: str | None) -> str:
    """The form input of a Deploy API field (``url[1]`` is the urls box, ``metadata.k``
    the metadata box)."""
    if field is None:
        return "worker"
    head = field.split("[", 1)[0].split(".", 1)[0]
    return {"url": "urls", "preserve_host": "urls"}.get(head, head)


def _spread(answer: Mapping[str, Any]) -> str:
    """What the replicas did with the write, in one sentence."""
    if answer.get("converged") is True:
        count = len(answer.get("replicas", ()))
        return f" Applied by every replica ({count})." if count else ""
    pending = answer.get("pending_replicas") or []
    if pending:
        return f" Committed; not yet applied by {', '.join(pending)}."
    return ""


def _back_to(namespace: NamespaceName) -> Response:
    return Response.redirect(f"{PREFIX}/namespaces#ns-{namespace}")
