"""The admin API and configuration errors (``shared/ROBUSTNESS.md`` items 50 to 53) against a
real dispatcher, for what ``tests/admin`` and ``tests/test_cli.py`` do not already prove (the
index, ``test_index.py``, names those tests).

* 50: every refusal (no token, wrong token, read-only token on a write, the 11th failure in a
  minute) is audit-logged with the method, path and who asked, never with the token value.
* 51: ``dispatcher serve`` started without tokens listens for admin on 127.0.0.1 only and
  generates its own random 256-bit token (mode 0600); no two starts share one; a non-loopback admin
  bind without a token refuses to start; tokens are compared as fixed-length digests.
* 52: the public listener never reaches the Deploy API, whatever Host, path trick or
  forwarded header the client sends, even with a valid admin token.
* 53: an invalid deploy is a 4xx with its reason, writes nothing, and traffic goes on to the
  worker deployed before; an unparseable config stops ``serve`` with a nonzero exit before
  it listens; ``check`` validates without opening the store or a listener.

The checklist's "duplicate Host+path" and "route shadowing the admin prefix" have no
counterpart in the Deploy API: routes are configuration (``tests/test_routing.py`` refuses
duplicates when the table is built) and the admin API has a listener of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest

from dispatcher.testing import run_dispatcher
from tests.admin.conftest import DEV, READER, TOKEN, Answer, Api, admin_environ, send
from tests.forwarding.conftest import Gateway
from tests.forwarding.upstreams import RecordingUpstream, free_port

from .conftest import assert_not_listening, run_command, send_raw, serving

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"


@asynccontextmanager
async def admin_stack(tmp_path: Path) -> AsyncIterator[tuple[Api, Gateway, RecordingUpstream]]:
    """A dispatcher on SQLite with the admin tokens of ``tests/admin`` and the ``gateway``
    worker deployed (through the Deploy API) to a recording upstream."""
    environ = admin_environ(tmp_path)
    async with (
        RecordingUpstream.start() as upstream,
        run_dispatcher(store=tmp_path / "registry.db", environ=environ) as running,
    ):
        api = Api(running)
        deployed = await api("PUT", WORKER, body={"url": upstream.url})
        assert deployed.status == 201, deployed.body
        gateway = Gateway(running)
        try:
            yield api, gateway, upstream
        finally:
            for client in gateway.clients:
                await client.aclose()


async def assert_still_served(gateway: Gateway, upstream: RecordingUpstream) -> None:
    """Routed traffic reaches the worker deployed before."""
    before = len(upstream.requests)
    response = await gateway.request("/still", host="gateway.do")
    assert response.status == 200, response.body
    assert [r.target for r in upstream.requests[before:]] == [b"/still"]


# --- 50. Refusals are audit-logged, never with the token ------------------------------------

WRONG: Final = "wrong-token-for-the-robustness-suite"


async def refuse_missing(api: Api) -> Answer:
    return await api("PUT", WORKER, body={"url": "http://127.0.0.1:9"}, token=None)


async def refuse_wrong(api: Api) -> Answer:
    return await api("PUT", WORKER, body={"url": "http://127.0.0.1:9"}, token=WRONG)


async def refuse_read_only(api: Api) -> Answer:
    return await api("PUT", WORKER, body={"url": "http://127.0.0.1:9"}, token=READER)


async def refuse_eleventh(api: Api) -> Answer:
    for _ in range(10):
        assert (await api("GET", "/namespaces", token=WRONG)).status == 401
    return await api("PUT", WORKER, body={"url": "http://127.0.0.1:9"}, token=TOKEN)


REFUSALS: Final = [
    pytest.param(refuse_missing, 401, "refused: missing bearer token", id="no-token"),
    pytest.param(refuse_wrong, 401, "refused: unknown bearer token", id="wrong-token"),
    pytest.param(
        refuse_read_only, 403, 'forbidden: token "reader" lacks the deploy scope', id="read-only"
    ),
    pytest.param(
        refuse_eleventh,
        429,
        "too many",
        id="eleventh-failure",
    ),
]


@pytest.mark.parametrize(("refuse", "status", "logged"), REFUSALS)
async def test_an_admin_refusal_is_audit_logged_without_the_token(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    refuse: Callable[[Api], Awaitable[Answer]],
    status: int,
    logged: str,
) -> None:
    async with admin_stack(tmp_path) as (api, _, _):
        before = await api.state()
        caplog.clear()
        caplog.set_level(logging.INFO, logger="dispatcher")
        answer = await refuse(api)
        assert answer.status == status, answer.body
        assert await api.state() == before
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "dispatcher.admin" and r.levelno >= logging.WARNING
    ]
    audit = [line for line in lines if line.startswith(f"admin: PUT {WORKER} ")]
    assert len(audit) == 1, lines
    assert logged in audit[0], audit
    assert "127.0.0.1" in audit[0] or "reader" in audit[0], audit  # who asked
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN, READER, WRONG):
        assert secret not in everything
        assert secret.encode() not in answer.body


# --- 51. Loopback, a generated token, fixed-length comparison -------------------------------


def generated_token(directory: Path) -> str:
    path = directory / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (``/proc/net/tcp*``)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: TCP_LISTEN
                    packed = bytes.fromhex(address)
                    if len(packed) == 4:
                        found.add(socket.inet_ntoa(packed[::-1]))
                    else:
                        found.add("ipv6:" + address)
    return found


async def test_without_tokens_serve_binds_admin_to_loopback_with_a_generated_token(
    tmp_path: Path,
) -> None:
    """``dispatcher serve`` as it starts by default: no token configured, no admin host."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    async with (
        serving(first, first / "registry.db") as one,
        serving(second, second / "registry.db") as two,
    ):
        addresses = listening_addresses(one.admin_port)
        token, other = generated_token(first), generated_token(second)
        answers = [
            await asyncio.to_thread(send, one.admin_url, "GET", "/namespaces", token=token),
            await asyncio.to_thread(send, one.admin_url, "GET", "/namespaces", token=None),
            await asyncio.to_thread(send, two.admin_url, "GET", "/namespaces", token=token),
        ]
    assert addresses == {"127.0.0.1"}
    # 256 random bits, URL-safe base64 without padding.
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 32
    assert other != token  # no fixed default: every first start makes its own
    assert [a.status for a in answers] == [200, 401, 401]


def test_a_non_loopback_admin_bind_without_a_token_does_not_start(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    port = free_port()
    finished = run_command(
        *("serve", "--port", str(port), "--admin-host", "0.0.0.0", "--admin-port", "0"),
        cwd=tmp_path,
        DISPATCHER_STORE=str(store),
    )
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr == (
        "Error: --admin-host: the admin API would listen on 0.0.0.0, which is not a loopback "
        "address, without a token; set DISPATCHER_ADMIN_TOKEN or admin.tokens_file "
        "(or listen on 127.0.0.1)\n"
    )
    assert not store.exists()  # refused before the store was opened
    assert_not_listening(port)


async def test_tokens_are_compared_as_fixed_length_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    async with admin_stack(tmp_path) as (api, _, _):
        monkeypatch.setattr(hmac, "compare_digest", recording)
        answers = [
            await api("GET", "/namespaces", token=presented)
            for presented in ("short", "a" * 500, TOKEN[:-1], TOKEN, READER)
        ]
        monkeypatch.undo()
    assert [a.status for a in answers] == [401, 401, 401, 200, 200]
    # Whatever length was presented, only SHA-256 digests were compared, in constant time.
    assert compared and set(compared) == {(32, 32)}, compared


# --- 52. The admin API through the public listener -----------------------------------------

ERROR_FIELDS: Final = frozenset({"error", "message", "code", "available_services", "request_id"})


def admin_tricks(admin_port: int) -> list[bytes]:
    """Requests that try to reach the Deploy API through the public listener."""
    put = (
        b"PUT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n%sContent-Length: 2\r\n\r\n{}"
    )
    token = TOKEN.encode()
    admin = b"127.0.0.1:%d" % admin_port
    return [
        b"GET /namespaces HTTP/1.1\r\nHost: admin\r\n\r\n",
        b"GET /namespaces HTTP/1.1\r\nHost: %s\r\n\r\n" % admin,
        b"GET http://%s/namespaces HTTP/1.1\r\nHost: %s\r\n\r\n" % (admin, admin),
        b"GET /admin/..%2fnamespaces HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /admin/..%2f HTTP/1.1\r\nHost: admin\r\n\r\n",
        b"GET /%2e%2e/namespaces HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /namespaces HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n",
        b"GET /namespaces HTTP/1.1\r\nHost: localhost\r\nX-Real-IP: 127.0.0.1\r\n\r\n",
        b"GET /namespaces HTTP/1.1\r\nHost: localhost\r\nForwarded: for=127.0.0.1\r\n\r\n",
        b"GET /openapi.json HTTP/1.1\r\nHost: %s\r\nX-Forwarded-Host: %s\r\n\r\n" % (admin, admin),
        put % (WORKER.encode(), b"localhost", token, b""),
        put % (WORKER.encode(), admin, token, b"X-Forwarded-For: 127.0.0.1\r\n"),
        put % (b"/admin/..%2f" + WORKER.encode()[1:], b"admin", token, b"X-Real-IP: 127.0.0.1\r\n"),
    ]


async def test_the_public_listener_never_reaches_the_admin_api(tmp_path: Path) -> None:
    async with admin_stack(tmp_path) as (api, gateway, upstream):
        before = await api.state()
        tricks = admin_tricks(api.running.admin_listener.port)
        for trick in tricks:
            method = trick.split(b" ", 1)[0].decode()
            client, response = await send_raw(gateway, trick, method)
            await client.aclose()
            assert response.status in (400, 403, 404, 421), (trick, response.status)
            # The dispatcher's own error, never a Deploy API answer (a namespace list, the
            # OpenAPI document, a deployment record).
            assert set(response.json()) <= ERROR_FIELDS, (trick, response.body)
            assert response.json()["error"] in ("Service not found", "Bad request"), trick
        assert await api.state() == before
        assert upstream.requests == []  # nor did any reach the worker
        await assert_still_served(gateway, upstream)


# --- 53. Invalid deploys; invalid configuration at startup ---------------------------------

INVALID_DEPLOYS: Final = [
    pytest.param({"url": "file:///etc/passwd"}, 422, "url", id="file-url"),
    pytest.param({"url": "http://169.254.169.254"}, 422, "link-local", id="metadata-ipv4"),
    pytest.param({"url": "http://[fe80::1]:80"}, 422, "link-local", id="link-local-ipv6"),
    pytest.param({"url": "gopher://127.0.0.1:70"}, 422, "url", id="gopher-url"),
    pytest.param({"url": ["http://127.0.0.1:9", "file:///x"]}, 422, "url", id="file-url-in-list"),
    pytest.param({"colour": "red"}, 422, "colour", id="schema-unknown-field"),
    pytest.param({"url": 5}, 422, "url", id="schema-wrong-type"),
]


@pytest.mark.parametrize(("body", "status", "reason"), INVALID_DEPLOYS)
async def test_an_invalid_deploy_says_why_writes_nothing_and_traffic_goes_on(
    tmp_path: Path, body: object, status: int, reason: str
) -> None:
    async with admin_stack(tmp_path) as (api, gateway, upstream):
        before = await api.state()
        answer = await api("PUT", WORKER, body=body)
        assert answer.status == status, answer.body
        assert reason in answer.json["message"], answer.json
        assert answer.json["code"] == "validation_failed"
        assert await api.state() == before
        await assert_still_served(gateway, upstream)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]",
        "http://[::ffff:a9fe:a9fe]",
        "http://2852039166",
        "http://0xa9.0xfe.0xa9.0xfe",
        "http://0251.0376.0251.0376",
        "http://169.254.43518",
    ],
)
async def test_every_spelling_of_the_metadata_address_is_refused(tmp_path: Path, url: str) -> None:
    async with admin_stack(tmp_path) as (api, gateway, upstream):
        before = await api.state()
        answer = await api("PUT", WORKER, body={"url": url})
        assert answer.status == 422, answer.body
        assert await api.state() == before
        await assert_still_served(gateway, upstream)


def test_an_unparseable_config_stops_serve_before_it_listens(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    config.write_text("[routing\nservices = [\n")
    store = tmp_path / "registry.db"
    port = free_port()
    finished = run_command(
        *("serve", "--config", str(config), "--port", str(port), "--admin-port", "0"),
        cwd=tmp_path,
        DISPATCHER_STORE=str(store),
    )
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith(f"Error: {config}: invalid TOML: "), finished.stderr
    assert finished.stderr.count("\n") == 1
    assert not store.exists()  # never an empty route table served from a fresh store
    assert_not_listening(port)


def test_check_validates_without_opening_the_store_or_a_listener(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.toml"
    port = free_port()
    config.write_text(f"[server]\nport = {port}\n")
    store = tmp_path / "registry.db"
    finished = run_command(
        "check", "--config", str(config), cwd=tmp_path, DISPATCHER_STORE=str(store)
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("configuration OK: "), finished.stdout
    assert not store.exists()
    assert not (tmp_path / "admin-token").exists()
    assert_not_listening(port)
