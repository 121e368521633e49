"""``AdminClient``: a small ``http.client`` client of the Deploy API, for the CLI.

Example::

    client = AdminClient.from_environ(os.environ)   # DISPATCHER_ADMIN_URL, _TOKEN
    client.call("PUT", "/namespaces/dotdo-staging/workers/gateway",
                body={"url": "http://10.0.0.5:8080"})
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from dispatcher.auth import Secret, parse_env_token
from dispatcher.errors import AdminClientError, AdminUnreachable, ConfigError

DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:8788"
DEFAULT_TOKEN_FILE: Final = ".dispatcher/admin-token"
"""Where ``dispatcher serve``/``dev`` generate a token with the default SQLite store."""
DEFAULT_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """A status, the headers (lower-case names) and the decoded JSON body (``None`` if empty)."""

    status: int
    headers: Mapping[str, str]
    data: Any


class AdminClient:
    """Calls the Deploy API at ``url`` with ``token``; one connection per call."""

    __slots__ = ("url", "_token", "_timeout", "_scheme", "_host", "_port", "_prefix")

    def __init__(self, url: str, token: Secret | None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"DISPATCHER_ADMIN_URL: expected http://host:port or https://host:port "
                f"(got {url!r})"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(
                "DISPATCHER_ADMIN_URL: no credentials, query or fragment (the token goes in "
                "DISPATCHER_ADMIN_TOKEN)"
            )
        try:
            self._port = parts.port
        except ValueError as exc:
            raise ConfigError(f"DISPATCHER_ADMIN_URL: invalid port in {url!r}") from exc
        self.url = url
        self._token = token
        self._timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._prefix = parts.path.rstrip("/")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AdminClient:
        """``DISPATCHER_ADMIN_URL`` (default 127.0.0.1:8788) and ``DISPATCHER_ADMIN_TOKEN``,
        else the token a local dispatcher generated in ``.dispatcher/admin-token``."""
        url = environ.get("DISPATCHER_ADMIN_URL") or DEFAULT_ADMIN_URL
        token = parse_env_token(environ.get("DISPATCHER_ADMIN_TOKEN", ""))
        if token is None:
            token = _generated_token(DEFAULT_TOKEN_FILE)
        return cls(url, token)

    def __repr__(self) -> str:
        return f"AdminClient({self.url!r}, token={self._token!r})"

    def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: Mapping[str, str | int] | None = None,
    ) -> Any:
        """The decoded JSON answer; ``AdminClientError`` with the server's message otherwise."""
        response = self.request(method, path, body=body, query=query)
        if response.status >= 400:
            raise _failure(response)
        return response.data

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: Mapping[str, str | int] | None = None,
    ) -> AdminResponse:
        """One request; ``AdminUnreachable`` when no HTTP answer comes back."""
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            headers_in = {name.lower(): value for name, value in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            raise AdminUnreachable(
                f"cannot reach the admin API at {self.url}: {_reason(exc)}"
            ) from exc
        finally:
            connection.close()
        return AdminResponse(response.status, headers_in, _decode(raw, response.status, self.url))

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)


def worker_path(namespace: str, worker: str | None = None) -> str:
    """``/namespaces/{namespace}[/workers/{worker}]`` with each name percent-encoded."""
    path = f"/namespaces/{quote(namespace, safe='')}"
    return path if worker is None else f"{path}/workers/{quote(worker, safe='')}"


def _generated_token(path: str) -> Secret | None:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return parse_env_token(text, where=path)
    except ConfigError:
        return None


def _decode(raw: bytes, status: int, url: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise AdminClientError(
            f"the admin API at {url} answered {status} with a body that is not JSON",
            status=status,
        ) from exc


def _failure(response: AdminResponse) -> AdminClientError:
    data = response.data if isinstance(response.data, dict) else {}
    message = str(data.get("message") or f"HTTP {response.status}")
    title = str(data.get("error") or "error")
    if response.status == 401:
        message += " (set DISPATCHER_ADMIN_TOKEN)"
    code = data.get("code")
    return AdminClientError(
        f"{message} ({response.status} {title})",
        status=response.status,
        code=code if isinstance(code, str) else None,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
