"""The seed's coverage list, each case a real HTTP request to a real dispatcher.

Every dispatcher here listens on a free loopback port (``dispatcher.testing``) and serves
real ASGI workers: the echo app of ``dispatcher dev`` and the apps of ``tests/workers.py``.
Error bodies are asserted whole: the seed's fields, in the seed's order, plus our ``code``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from dispatcher import echo
from dispatcher.app import RunningDispatcher
from dispatcher.forwarding.asgi import import_app
from dispatcher.testing import DispatcherThread, run_dispatcher
from dispatcher.types import ASGIApp

SEED_SERVICES: Final = ("gateway", "db", "auth", "schedule", "webhooks", "email", "mcp", "queue")
JSON: Final = "application/json"
NOT_DEPLOYED_HINT: Final = "Service may not be deployed yet. Deploy via Deploy API."


def worker_app(name: str) -> ASGIApp:
    """An app of ``tests/workers.py``, loaded the way the dispatcher loads a deployed one."""
    return import_app(f"tests.workers:{name}")


# --- A small real HTTP/1.1 client -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response as received."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def fetch(
    url: str,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Reply:
    """Send one request to the dispatcher at ``url`` with exactly these header lines."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


async def fetch_async(url: str, host: str, path: str = "/") -> Reply:
    """``fetch`` off the event loop, for dispatchers running on the test's own loop."""
    return await asyncio.to_thread(fetch, url, host, path)


def assert_error(reply: Reply, status: int, body: dict[str, Any]) -> None:
    """The status, the Content-Type and the whole JSON body, keys in the seed's order."""
    assert reply.status == status, reply.body
    assert reply.header("content-type") == JSON
    assert list(reply.json().items()) == list(body.items())


def chunked(parts: Sequence[bytes]) -> bytes:
    """``parts`` framed with Transfer-Encoding: chunked (RFC 9112 §7.1)."""
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return framed + b"0\r\n\r\n"


# --- Dispatchers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded() -> Iterator[RunningDispatcher]:
    """Development: an echo worker for each seed service, and ``gateway-v2``."""
    workers: dict[str, ASGIApp] = {service: echo.app for service in SEED_SERVICES}
    workers["gateway-v2"] = worker_app("identity")
    with DispatcherThread(workers=workers, environment="development", environ={}) as running:
        yield running


@pytest.fixture(scope="module")
def special() -> Iterator[RunningDispatcher]:
    """Development: workers that show headers, digest bodies or raise."""
    workers = {
        "gateway": worker_app("raising"),
        "db": worker_app("header_lines"),
        "auth": worker_app("digest"),
    }
    with DispatcherThread(workers=workers, environment="development", environ={}) as running:
        yield running


@pytest.fixture(scope="module")
def empty_production() -> Iterator[RunningDispatcher]:
    """Production with nothing deployed."""
    with DispatcherThread(environment="production", environ={}) as running:
        yield running


# --- Subdomain, path and default routing -----------------------------------------------------


@pytest.mark.parametrize("service", SEED_SERVICES)
def test_subdomain_routes_to_its_service(seeded: RunningDispatcher, service: str) -> None:
    reply = fetch(seeded.url, f"{service}.do", "/health")

    assert reply.status == 200
    answer = reply.json()
    assert (answer["service"], answer["environment"], answer["path"]) == (
        service,
        "development",
        "/health",
    )


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/api/db/query", "db"),
        ("/api/auth/login", "auth"),
        ("/api/schedule/jobs", "schedule"),
        ("/api/dbx/x", "gateway"),
        ("/api/notdb/x", "gateway"),
    ],
)
def test_path_routes_on_api_do(seeded: RunningDispatcher, path: str, service: str) -> None:
    reply = fetch(seeded.url, "api.do", path)

    assert reply.status == 200
    assert (reply.json()["service"], reply.json()["path"]) == (service, path)


@pytest.mark.parametrize("host", ["do", "api.do"])
def test_root_domains_default_to_gateway(seeded: RunningDispatcher, host: str) -> None:
    reply = fetch(seeded.url, host, "/anything")

    assert reply.status == 200
    assert reply.json()["service"] == "gateway"


@pytest.mark.parametrize(
    "host",
    ["GATEWAY.DO", "Gateway.Do", "gateway.do.", "gateway.do:8080", "GATEWAY.DO.:8080"],
)
def test_host_spellings_route_like_the_canonical_host(seeded: RunningDispatcher, host: str) -> None:
    reply = fetch(seeded.url, host, "/x")

    assert reply.status == 200
    assert reply.json()["service"] == "gateway"
    assert reply.json()["headers"]["host"] == host  # the worker sees the Host as sent


def test_versioned_subdomain_reaches_the_versioned_worker(seeded: RunningDispatcher) -> None:
    reply = fetch(seeded.url, "v2.gateway.do", "/x")

    assert reply.status == 200
    assert reply.json() == {
        "app": "identity",
        "service": "gateway",
        "worker": "gateway-v2",
        "environment": "development",
        "namespace": "dotdo-development",
        "path": "/x",
    }


def test_undeployed_version_is_not_deployed(seeded: RunningDispatcher) -> None:
    reply = fetch(seeded.url, "v3.gateway.do", "/x")

    assert_error(
        reply,
        404,
        {
            "error": "Service not deployed",
            "message": 'Worker "gateway-v3" not found in development namespace',
            "hint": NOT_DEPLOYED_HINT,
            "code": "not_deployed",
        },
    )


# --- The dispatcher's own health ------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST:8787"])
def test_health_on_own_host_is_answered_by_the_dispatcher(
    seeded: RunningDispatcher, host: str
) -> None:
    reply = fetch(seeded.url, host, "/health")

    assert reply.status == 200
    assert reply.header("content-type") == JSON
    answer = reply.json()
    assert answer == {
        "status": "ok",
        "environment": "development",
        "namespace": "dotdo-development",
        "workers": 9,
        "revision": answer["revision"],
    }
    assert isinstance(answer["revision"], int)


@pytest.mark.parametrize("host", ["gateway.do", "api.do"])
def test_health_on_a_service_host_reaches_the_worker(seeded: RunningDispatcher, host: str) -> None:
    reply = fetch(seeded.url, host, "/health")

    assert reply.status == 200
    assert (reply.json()["service"], reply.json()["path"]) == ("gateway", "/health")


# --- Error handling -------------------------------------------------------------------------


def test_unknown_service_is_404_with_the_available_services(seeded: RunningDispatcher) -> None:
    reply = fetch(seeded.url, "unknown.do", "/test")

    assert_error(
        reply,
        404,
        {
            "error": "Service not found",
            "message": "No worker found for unknown.do/test",
            "available_services": list(SEED_SERVICES),
            "code": "service_not_found",
        },
    )


def test_undeployed_worker_is_404_with_the_seed_hint(empty_production: RunningDispatcher) -> None:
    reply = fetch(empty_production.url, "gateway.do", "/health")

    assert_error(
        reply,
        404,
        {
            "error": "Service not deployed",
            "message": 'Worker "gateway" not found in production namespace',
            "hint": NOT_DEPLOYED_HINT,
            "code": "not_deployed",
        },
    )


def test_raising_worker_is_500_internal_server_error(special: RunningDispatcher) -> None:
    reply = fetch(special.url, "gateway.do", "/boom")

    assert reply.status == 500
    assert reply.header("content-type") == JSON
    body = reply.json()
    assert list(body) == ["error", "message", "code"]
    assert (body["error"], body["code"]) == ("Internal server error", "internal_error")
    assert re.fullmatch(
        r"Unexpected error while dispatching \(error id [0-9a-f]{12}\)", body["message"]
    )


def test_raising_worker_leaves_the_dispatcher_serving(special: RunningDispatcher) -> None:
    assert fetch(special.url, "gateway.do", "/boom").status == 500

    assert fetch(special.url, "db.do", "/").status == 200


async def test_missing_namespace_is_500_configuration_error(tmp_path: Path) -> None:
    config_error = {
        "error": "Configuration error",
        "message": "Namespace not found for environment: development",
        "code": "config_error",
    }
    async with run_dispatcher(
        workers={"gateway": echo.app}, environment="development", environ={}
    ) as d:
        assert (await fetch_async(d.url, "gateway.do", "/")).status == 200

        await d.store.delete_namespace(d.settings.namespace, force=True)
        reply = await _poll_until(d.url, "gateway.do", "/", status=500, within=2.0)

        assert_error(reply, 500, config_error)
        health = await fetch_async(d.url, "localhost", "/health")
        assert health.status == 503
        assert health.json()["reason"] == "Namespace not found for environment: development"


async def _poll_until(url: str, host: str, path: str, *, status: int, within: float) -> Reply:
    """Ask until the answer has ``status`` (the watcher syncs every 0.25 s), or fail."""
    deadline = time.monotonic() + within
    while True:
        reply = await fetch_async(url, host, path)
        if reply.status == status or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.05)


# --- Environment selection ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "namespace"),
    [
        ("production", "dotdo-production"),
        ("staging", "dotdo-staging"),
        ("development", "dotdo-development"),
    ],
)
def test_environment_selects_its_namespace(environment: str, namespace: str) -> None:
    identity = worker_app("identity")
    with DispatcherThread(workers={"gateway": identity}, environment=environment, environ={}) as d:
        reply = fetch(d.url, "gateway.do", "/")
        health = fetch(d.url, "localhost", "/health")

    assert reply.status == 200
    assert (reply.json()["environment"], reply.json()["namespace"]) == (environment, namespace)
    assert (health.json()["environment"], health.json()["namespace"]) == (environment, namespace)


def test_environment_variable_selects_the_environment() -> None:
    with DispatcherThread(workers={"gateway": echo.app}, environ={"ENVIRONMENT": "staging"}) as d:
        reply = fetch(d.url, "gateway.do", "/")

    assert reply.json()["environment"] == "staging"


def test_worker_deployed_in_staging_only_is_not_deployed_in_production(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    identity = worker_app("identity")
    with (
        DispatcherThread(
            workers={"db": identity}, environment="staging", store=store, environ={}
        ) as staging,
        DispatcherThread(environment="production", store=store, environ={}) as production,
    ):
        in_staging = fetch(staging.url, "db.do", "/query")
        in_production = fetch(production.url, "db.do", "/query")

    assert in_staging.status == 200
    assert (in_staging.json()["environment"], in_staging.json()["namespace"]) == (
        "staging",
        "dotdo-staging",
    )
    assert_error(
        in_production,
        404,
        {
            "error": "Service not deployed",
            "message": 'Worker "db" not found in production namespace',
            "hint": NOT_DEPLOYED_HINT,
            "code": "not_deployed",
        },
    )


# --- Request forwarding ---------------------------------------------------------------------


def test_header_lines_reach_the_worker_in_order_with_repeats(special: RunningDispatcher) -> None:
    sent = [
        ("X-Trace", "first"),
        ("Accept", "application/json"),
        ("X-Trace", "second"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Trace", "third, with a comma"),
        ("X-Empty", ""),
    ]

    reply = fetch(special.url, "db.do", "/", headers=sent)

    assert reply.status == 200
    received = [tuple(line) for line in reply.json()["headers"]]
    request_id = ("x-request-id", reply.header("x-request-id"))
    assert received == [("host", "db.do")] + [(n.lower(), v) for n, v in sent] + [request_id]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_post_body_reaches_the_worker_byte_exact(special: RunningDispatcher, framing: str) -> None:
    payload = os.urandom(3 * 1024 * 1024) + b"\r\n0\r\n\r\n\x00"  # framing-like bytes inside
    if framing == "chunked":
        parts = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
        headers, body = [("Transfer-Encoding", "chunked")], chunked(parts)
    else:
        headers, body = [("Content-Length", str(len(payload)))], payload

    reply = fetch(special.url, "auth.do", "/upload", method="POST", headers=headers, body=body)

    assert reply.status == 200
    assert reply.json() == {
        "app": "digest",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "length": len(payload),
    }


def test_echo_sees_method_path_query_and_body_size(seeded: RunningDispatcher) -> None:
    body = b'{"sql": "select 1"}'
    headers = [("Content-Type", JSON), ("Content-Length", str(len(body)))]

    reply = fetch(
        seeded.url, "api.do", "/api/db/query?id=1&x=%20", method="PUT", headers=headers, body=body
    )

    assert reply.status == 200
    answer = reply.json()
    assert (answer["service"], answer["method"], answer["path"], answer["query"]) == (
        "db",
        "PUT",
        "/api/db/query",
        "id=1&x=%20",
    )
    assert answer["body_bytes"] == len(body)
