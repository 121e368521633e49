"""A deploy through the Deploy API is served by the main listener within 1 s; the versioned
subdomain reaches the pinned version; a rollback switches traffic back. Real upstream
servers on loopback, real HTTP on both listeners, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final
from urllib.parse import urlsplit

from tests.admin.conftest import DEV, Api

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"
WITHIN: Final = 1.0


@asynccontextmanager
async def upstream(name: str) -> AsyncIterator[str]:
    """An HTTP/1.1 server that answers every request with its ``name``; yields its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                body = name.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def fetch(url: str, host: str) -> tuple[int, str]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", "/hello", headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def served_within(api: Api, host: str, expected: str) -> float:
    """Seconds until ``host`` on the main listener answers ``expected``; fails after 1 s."""
    started = time.monotonic()
    while True:
        answer = await asyncio.to_thread(fetch, api.running.url, host)
        elapsed = time.monotonic() - started
        if answer == (200, expected):
            return elapsed
        assert elapsed < WITHIN, f"{host} still answers {answer}, not {expected!r}"
        await asyncio.sleep(0.02)


async def deploy(api: Api, url: str, version: str | None = None) -> None:
    body = {"url": url} if version is None else {"url": url, "version": version}
    answer = await api("PUT", WORKER, body=body)
    assert answer.status in (200, 201), answer.json


async def test_deploy_version_and_rollback_reach_the_main_listener(admin_any: Api) -> None:
    async with upstream("one") as one, upstream("two") as two, upstream("three") as three:
        await deploy(admin_any, one, "v1")
        await served_within(admin_any, "gateway.do", "one")

        await deploy(admin_any, two, "v2")
        await served_within(admin_any, "gateway.do", "two")
        await served_within(admin_any, "v2.gateway.do", "two")
        await served_within(admin_any, "v1.gateway.do", "one")

        await deploy(admin_any, three)
        await served_within(admin_any, "gateway.do", "three")
        assert await asyncio.to_thread(fetch, admin_any.running.url, "v2.gateway.do") == (
            200,
            "two",
        )

        rolled = await admin_any("POST", WORKER + "/rollback")
        assert (rolled.status, rolled.json["restored_version"]) == (200, 2)
        await served_within(admin_any, "gateway.do", "two")

        undeployed = await admin_any("DELETE", WORKER)
        assert undeployed.status == 204
        started = time.monotonic()
        while (await asyncio.to_thread(fetch, admin_any.running.url, "gateway.do"))[0] != 404:
            assert time.monotonic() - started < WITHIN
            await asyncio.sleep(0.02)


async def test_the_admin_api_is_not_reachable_through_the_main_listener(admin: Api) -> None:
    for host in ("admin", "localhost", "127.0.0.1"):
        status, body = await asyncio.to_thread(fetch_path, admin.running.url, host, "/namespaces")
        assert status in (404, 421), (host, status, body)
        assert "namespaces" not in body or "Service not found" in body


def fetch_path(url: str, host: str, path: str) -> tuple[int, str]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
