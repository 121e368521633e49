"""Admin API fixtures: ``admin``, a real dispatcher with its Deploy API on a free loopback
port (SQLite, or PostgreSQL where a test asks for ``admin_pg``), and ``Api``, a real HTTP
client of it that returns status, headers and the decoded body.

Tokens: ``TOKEN`` (``DISPATCHER_ADMIN_TOKEN``, full access, actor ``admin``) and a tokens file
granting ``READER`` (read), ``CI`` (deploy everywhere) and ``STAGING`` (deploy, staging only).
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from dispatcher.app import RunningDispatcher
from dispatcher.auth import hash_token
from dispatcher.testing import run_dispatcher
from tests.store.conftest import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]  # the PostgreSQL fixtures, shared with tests/store

TOKEN: Final = "full-access-token-for-tests-0001"
READER: Final = "reader-token-for-the-admin-tests"
CI: Final = "ci-deployer-token-for-the-tests-1"
STAGING: Final = "staging-only-deployer-token-0001"
DEV: Final = "dotdo-development"
PROD: Final = "dotdo-production"
STAGE: Final = "dotdo-staging"


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "reader"\nsha256 = "{hash_token(READER)}"\nscopes = ["read"]\n\n'
        f'[[tokens]]\nname = "ci"\nsha256 = "{hash_token(CI)}"\nscopes = ["deploy"]\n\n'
        f'[[tokens]]\nname = "staging-deployer"\nsha256 = "{hash_token(STAGING)}"\n'
        'scopes = ["deploy", "read"]\nnamespaces = ["dotdo-staging"]\n'
    )
    return path


def admin_environ(directory: Path) -> dict[str, str]:
    return {
        "DISPATCHER_ADMIN_TOKEN": TOKEN,
        "DISPATCHER_ADMIN_TOKENS_FILE": str(tokens_file(directory)),
    }


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    method: str,
    path: str,
    *,
    body: object = None,
    raw: bytes | None = None,
    token: str | None = TOKEN,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One real HTTP request (blocking): ``body`` as JSON, or ``raw`` bytes as they are."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
    try:
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class Api:
    """The Deploy API of a running dispatcher, called over real HTTP from a thread."""

    running: RunningDispatcher

    @property
    def url(self) -> str:
        return self.running.admin_url

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        raw: bytes | None = None,
        token: str | None = TOKEN,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        return await asyncio.to_thread(
            send, self.url, method, path, body=body, raw=raw, token=token, headers=headers
        )

    async def state(self) -> tuple[object, ...]:
        """Everything a refused request must leave as it was."""
        store = self.running.store
        return (
            await store.revision(),
            await store.history(limit=1000),
            await store.list_namespaces(),
            [await store.load_namespace(n) for n in await store.list_namespaces()],
        )


async def _start(tmp_path: Path, store: str | None) -> AsyncIterator[Api]:
    async with run_dispatcher(store=store, environ=admin_environ(tmp_path)) as running:
        yield Api(running)


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Api]:
    """A dispatcher on SQLite with its Deploy API."""
    async for api in _start(tmp_path, None):
        yield api


@pytest.fixture(params=["sqlite", "postgres"])
async def admin_any(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The same, once on SQLite and once on PostgreSQL (skipped when no server answers)."""
    store = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    async for api in _start(tmp_path, store):
        yield api
