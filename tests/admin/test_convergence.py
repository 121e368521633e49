"""Writes through the Deploy API wait until every live replica has applied them, and
``GET /ready`` shows the replicas: first on one dispatcher in this process (SQLite and
PostgreSQL), then on three ``dispatcher serve`` processes sharing one PostgreSQL schema,
where a deploy's propagation is measured and redeploys run under load.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

import dispatcher
from dispatcher.store import ReplicaId, ReplicaInfo, sqlite_path
from dispatcher.types import NamespaceName, WorkerName
from tests.admin.conftest import DEV, TOKEN, Answer, Api, send
from tests.admin.test_end_to_end import upstream
from tests.store.conftest import with_parameters

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"
UPSTREAM: Final = "http://127.0.0.1:9"
GHOST: Final = ReplicaId("elsewhere:1:00000000")
GHOST_INFO: Final = ReplicaInfo("elsewhere", 1, {"environment": "production"})
WAIT_RULE: Final = "wait must be a number of seconds from 0 to 30, with at most 3 decimals"


def without_times(replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replica entries with their clock fields checked and dropped."""
    kept = []
    for replica in replicas:
        entry = dict(replica)
        assert isinstance(entry.pop("started_at"), str)
        assert isinstance(entry.pop("last_seen"), str)
        assert 0 <= entry.pop("age") < 5
        kept.append(entry)
    return kept


def own_replica(api: Api) -> dict[str, Any]:
    running = api.running
    return {
        "id": running.replica_id,
        "revision": running.snapshot.revision,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "info": {
            "version": dispatcher.__version__,
            "environment": "development",
            "namespace": DEV,
            "listen": f"127.0.0.1:{running.listener.port}",
            "admin": f"127.0.0.1:{running.admin_listener.port}",
        },
    }


def served_target(api: Api) -> str | None:
    namespace = api.running.snapshot.namespace
    worker = namespace.lookup(WorkerName("gateway")) if namespace is not None else None
    return None if worker is None else worker.deployment.target.describe()


# --- one dispatcher: /ready ----------------------------------------------------------------


async def test_ready_names_the_revision_this_replica_and_the_live_replicas(
    admin_any: Api,
) -> None:
    answer = await admin_any("GET", "/ready", token=None)

    body = answer.json
    replicas = without_times(body.pop("replicas"))
    assert (answer.status, body) == (
        200,
        {
            "status": "ready",
            "revision": admin_any.running.snapshot.revision,
            "replica": admin_any.running.replica_id,
            "store": "ok",
        },
    )
    assert replicas == [own_replica(admin_any)]
    assert answer.headers["cache-control"] == "no-store"


async def test_ready_is_degraded_while_the_namespace_is_missing(admin_any: Api) -> None:
    running = admin_any.running
    await running.store.delete_namespace(NamespaceName(DEV), force=True)
    await running.watcher.refresh()

    answer = await admin_any("GET", "/ready", token=None)

    body = answer.json
    assert len(body.pop("replicas")) == 1
    assert (answer.status, body) == (
        503,
        {
            "status": "degraded",
            "reason": f'namespace "{DEV}" does not exist in the registry store; every routed '
            "request is refused",
            "revision": running.snapshot.revision,
            "replica": running.replica_id,
            "store": "ok",
        },
    )


# --- one dispatcher: writes wait ------------------------------------------------------------


async def test_a_deploy_is_applied_here_at_once_and_answers_converged(admin_any: Api) -> None:
    answer = await admin_any("PUT", WORKER, body={"url": UPSTREAM})

    body = answer.json
    assert (answer.status, body["converged"], body["version"]) == (201, True, 1)
    assert without_times(body["replicas"]) == [own_replica(admin_any)]
    assert admin_any.running.snapshot.revision == body["revision"]
    assert served_target(admin_any) == f"upstream {UPSTREAM}"
    assert (answer.headers["dispatcher-converged"], answer.headers["dispatcher-revision"]) == (
        "true",
        str(body["revision"]),
    )
    assert answer.headers["location"] == WORKER


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", WORKER),
        ("DELETE", "/namespaces/team-a?force=true"),
    ],
)
async def test_a_converged_removal_stays_204_with_the_convergence_in_headers(
    admin_any: Api, method: str, path: str
) -> None:
    await admin_any("PUT", "/namespaces/team-a")
    await admin_any("PUT", WORKER, body={"url": UPSTREAM})

    answer = await admin_any(method, path)

    revision = admin_any.running.snapshot.revision
    assert (answer.status, answer.body) == (204, b"")
    assert (answer.headers["dispatcher-converged"], answer.headers["dispatcher-revision"]) == (
        "true",
        str(revision),
    )
    assert revision == await admin_any.running.store.revision()


async def test_wait_0_answers_at_once_and_says_nothing_of_convergence(admin_any: Api) -> None:
    await admin_any.running.store.heartbeat(GHOST, 0, GHOST_INFO)  # would hold a waiting write

    started = time.monotonic()
    answer = await admin_any("PUT", WORKER + "?wait=0", body={"url": UPSTREAM})

    assert time.monotonic() - started < 1.0
    assert answer.status == 201
    assert "converged" not in answer.json and "replicas" not in answer.json
    assert "dispatcher-converged" not in answer.headers
    assert answer.headers["dispatcher-revision"] == str(answer.json["revision"])
    # This process applied it anyway: the next routed request here gets it.
    assert served_target(admin_any) == f"upstream {UPSTREAM}"


async def test_a_live_replica_behind_makes_a_deploy_answer_202_when_the_wait_runs_out(
    admin_any: Api,
) -> None:
    await admin_any.running.store.heartbeat(GHOST, 0, GHOST_INFO)

    started = time.monotonic()
    answer = await admin_any("PUT", WORKER + "?wait=0.3", body={"url": UPSTREAM})
    took = time.monotonic() - started

    body = answer.json
    assert 0.3 <= took < 2.0
    assert (answer.status, body["converged"], body["pending_replicas"]) == (202, False, [GHOST])
    assert (body["version"], body["target"]) == (1, {"url": UPSTREAM})
    assert [(r["id"], r["revision"]) for r in body["replicas"]] == [
        (GHOST, 0),
        (admin_any.running.replica_id, body["revision"]),
    ]
    assert answer.headers["dispatcher-converged"] == "false"
    assert answer.headers["location"] == WORKER
    assert "convergence_problem" not in body


async def test_a_removal_not_converged_answers_202_with_a_body(admin_any: Api) -> None:
    await admin_any("PUT", WORKER, body={"url": UPSTREAM})
    await admin_any.running.store.heartbeat(GHOST, 0, GHOST_INFO)

    answer = await admin_any("DELETE", WORKER + "?wait=0.1")

    body = answer.json
    revision = admin_any.running.snapshot.revision
    assert answer.status == 202
    assert [(r["id"], r["revision"]) for r in body.pop("replicas")] == [
        (GHOST, 0),
        (admin_any.running.replica_id, revision),
    ]
    assert body == {"revision": revision, "converged": False, "pending_replicas": [GHOST]}


async def test_a_write_converges_as_soon_as_the_replica_behind_catches_up(
    admin_any: Api,
) -> None:
    store = admin_any.running.store
    await store.heartbeat(GHOST, 0, GHOST_INFO)

    async def catch_up() -> None:
        await asyncio.sleep(0.3)
        await store.heartbeat(GHOST, await store.revision(), GHOST_INFO)

    started = time.monotonic()
    answer, _ = await asyncio.gather(
        admin_any("PUT", WORKER + "?wait=5", body={"url": UPSTREAM}), catch_up()
    )

    assert 0.3 <= time.monotonic() - started < 2.0
    assert (answer.status, answer.json["converged"]) == (201, True)
    assert {r["id"] for r in answer.json["replicas"]} == {GHOST, admin_any.running.replica_id}


async def test_a_replica_not_seen_for_5_s_is_not_waited_for(admin: Api) -> None:
    await admin.running.store.heartbeat(GHOST, 0, GHOST_INFO)
    long_ago = (datetime.now(UTC) - timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with sqlite3.connect(sqlite_path(admin.running.settings.store_url)) as raw:
        raw.execute("UPDATE replicas SET last_seen = ? WHERE id = ?", (long_ago, GHOST))
    raw.close()

    answer = await admin("PUT", WORKER + "?wait=1", body={"url": UPSTREAM})

    assert (answer.status, answer.json["converged"]) == (201, True)
    assert [r["id"] for r in answer.json["replicas"]] == [admin.running.replica_id]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/namespaces/team-a"),
        ("DELETE", "/namespaces/team-b?force=true"),
        ("PUT", WORKER),
        ("DELETE", "/namespaces/team-b/workers/api"),
        ("POST", "/namespaces/team-b/workers/api/rollback"),
    ],
)
async def test_every_write_waits_for_the_replicas(admin: Api, method: str, path: str) -> None:
    await admin("PUT", "/namespaces/team-b")
    await admin("PUT", "/namespaces/team-b/workers/api", body={"url": UPSTREAM})
    await admin("PUT", "/namespaces/team-b/workers/api", body={"url": "http://127.0.0.1:10"})
    body = {"url": UPSTREAM} if path == WORKER else None
    await admin.running.store.heartbeat(GHOST, 0, GHOST_INFO)

    answer = await admin(method, path + ("&" if "?" in path else "?") + "wait=0.05", body=body)

    assert (answer.status, answer.json["pending_replicas"]) == (202, [GHOST]), answer.body


@pytest.mark.parametrize("value", ["abc", "-1", "30.5", "31", "1e3", "nan", "1.2345", "", "0x1"])
async def test_a_bad_wait_is_400_and_writes_nothing(admin: Api, value: str) -> None:
    before = await admin.state()

    answer = await admin("PUT", f"{WORKER}?wait={value}", body={"url": UPSTREAM})

    assert (answer.status, answer.json) == (
        400,
        {
            "error": "Bad request",
            "message": f"{WAIT_RULE} (got {value!r})",
            "code": "bad_request",
            "field": "wait",
        },
    )
    assert await admin.state() == before


@pytest.mark.parametrize("value", ["0", "0.5", "2.125", "30"])
async def test_a_good_wait_is_taken(admin: Api, value: str) -> None:
    answer = await admin("PUT", f"{WORKER}?wait={value}", body={"url": UPSTREAM})

    assert answer.status == 201
    if value == "0":
        assert "converged" not in answer.json
    else:
        assert answer.json["converged"] is True


async def test_wait_given_twice_or_on_a_read_is_400(admin: Api) -> None:
    twice = await admin("PUT", f"{WORKER}?wait=1&wait=2", body={"url": UPSTREAM})
    on_read = await admin("GET", f"{WORKER}?wait=1")

    assert (twice.status, twice.json["message"]) == (400, "query parameter 'wait' is given twice")
    assert (on_read.status, on_read.json["message"]) == (
        400,
        "unknown query parameter 'wait' (accepted: none)",
    )


async def test_the_openapi_document_describes_ready_wait_and_202(admin: Api) -> None:
    document = (await admin("GET", "/openapi.json", token=None)).json
    paths = document["paths"]

    ready = paths["/ready"]["get"]
    assert (ready["security"], sorted(ready["responses"])) == ([], ["200", "503"])
    writes = [
        paths["/namespaces/{namespace}"]["put"],
        paths["/namespaces/{namespace}"]["delete"],
        paths["/namespaces/{namespace}/workers/{worker}"]["put"],
        paths["/namespaces/{namespace}/workers/{worker}"]["delete"],
        paths["/namespaces/{namespace}/workers/{worker}/rollback"]["post"],
    ]
    for operation in writes:
        wait = [p for p in operation["parameters"] if p["name"] == "wait"]
        assert wait == [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "schema": {"type": "number", "minimum": 0, "maximum": 30.0, "default": 2.0},
                "description": "Seconds to wait until every live replica has applied the "
                "write (202 when the wait runs out); 0 answers at once.",
            }
        ]
        assert "202" in operation["responses"]
    assert {"Replica", "Ready", "Degraded", "Pending"} <= set(document["components"]["schemas"])


# --- three dispatcher processes on one PostgreSQL schema -----------------------------------

CLUSTER_SIZE: Final = 3
HOST: Final = "gateway.do"
STARTUP: Final = 30.0
CLUSTER_CONFIG: Final = """\
# Three replicas of one environment sharing a PostgreSQL registry: NOTIFY carries each
# change; the poll below is only the safety net.
[store]
sync_interval = 0.25
"""


@dataclass
class Node:
    """One ``dispatcher serve`` process: its listeners and its log."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path
    replica: str = ""

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


@dataclass(frozen=True, slots=True)
class Cluster:
    nodes: list[Node]
    url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_node(directory: Path, config: Path, store_url: str, index: int) -> Node:
    port, admin_port = free_port(), free_port()
    log = directory / f"node-{index}.log"
    source = Path(dispatcher.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "DISPATCHER_STORE": store_url,
        "DISPATCHER_ADMIN_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("ENVIRONMENT", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", "--config", str(config),
             "--port", str(port), "--admin-port", str(admin_port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
        )  # fmt: skip
    return Node(process, port, admin_port, log)


def wait_until_ready(nodes: list[Node]) -> None:
    """Every node answers /ready 200 and lists every node as a live replica."""
    deadline = time.monotonic() + STARTUP
    for node in nodes:
        while True:
            if node.process.poll() is not None:
                pytest.fail(f"node exited {node.process.returncode}: {node.log.read_text()}")
            try:
                answer = send(node.admin_url, "GET", "/ready", token=None)
                if answer.status == 200 and len(answer.json["replicas"]) == len(nodes):
                    node.replica = answer.json["replica"]
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"node not ready within {STARTUP} s: {node.log.read_text()}")
            time.sleep(0.05)


def stop(nodes: list[Node]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGCONT)
            node.process.terminate()
    for node in nodes:
        try:
            node.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


@pytest.fixture(scope="module")
def cluster(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three ``dispatcher serve`` processes on loopback, one PostgreSQL schema, for the module."""
    directory = tmp_path_factory.mktemp("cluster")
    schema = f"dispatcher_cluster_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = with_parameters(pg_server, options=f"-c search_path={schema}", application_name=schema)
    config = directory / "dispatcher.toml"
    config.write_text(CLUSTER_CONFIG)
    nodes: list[Node] = []
    try:
        for index in range(CLUSTER_SIZE):
            nodes.append(start_node(directory, config, url, index))
        wait_until_ready(nodes)
        yield Cluster(nodes, url)
    finally:
        stop(nodes)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"{schema}%",),
            )
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


class Client:
    """One keep-alive HTTP/1.1 connection to a main listener, written on raw asyncio streams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, host: str = HOST) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        writer.write(f"GET /load HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head.split(b" ", 2)[1])
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
        if b"connection: close" in head:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


@asynccontextmanager
async def clients(cluster: Cluster) -> AsyncIterator[list[Client]]:
    opened = [Client(node.port) for node in cluster.nodes]
    try:
        yield opened
    finally:
        for client in opened:
            await client.close()


async def deploy(node: Node, url: str, wait: str | None = None) -> Answer:
    path = WORKER if wait is None else f"{WORKER}?wait={wait}"
    answer = await asyncio.to_thread(send, node.admin_url, "PUT", path, body={"url": url})
    assert answer.status in (200, 201), answer.body
    return answer


async def served_everywhere(connections: list[Client], expected: bytes) -> float:
    """Poll every node until each serves ``expected``; when the last one did (monotonic)."""
    deadline = time.monotonic() + 5
    pending = list(connections)
    while pending:
        replies = await asyncio.gather(*(client.get() for client in pending))
        pending = [c for c, (_, body) in zip(pending, replies, strict=True) if body != expected]
        if pending:
            assert time.monotonic() < deadline, f"{expected!r} not served within 5 s"
            await asyncio.sleep(0.002)
    return time.monotonic()


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest rank: the smallest sample at or above ``fraction`` of them."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@pytest.mark.slow
async def test_a_deploy_reaches_every_process_within_a_second_p99(cluster: Cluster) -> None:
    async with upstream("A") as a, upstream("B") as b, clients(cluster) as connections:
        await deploy(cluster.nodes[0], a)
        await served_everywhere(connections, b"A")
        delays = []
        for round_ in range(20):
            name, url = (b"B", b) if round_ % 2 == 0 else (b"A", a)
            started = time.monotonic()
            # wait=0: the answer does not wait, so what is measured is propagation alone.
            await deploy(cluster.nodes[round_ % CLUSTER_SIZE], url, wait="0")
            delays.append(await served_everywhere(connections, name) - started)

    p50, p99 = percentile(delays, 0.50), percentile(delays, 0.99)
    print(f"\npropagation over {len(delays)} deploys: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")  # fmt: skip
    assert p99 < 1.0


@pytest.mark.slow
async def test_a_converged_deploy_is_served_by_every_process_at_once(cluster: Cluster) -> None:
    async with upstream("A") as a, upstream("B") as b, clients(cluster) as connections:
        for round_, (name, url) in enumerate([(b"A", a), (b"B", b)] * 3):
            answer = await deploy(cluster.nodes[round_ % CLUSTER_SIZE], url)

            revision = answer.json["revision"]
            assert answer.json["converged"] is True
            assert sorted(r["id"] for r in answer.json["replicas"]) == sorted(
                node.replica for node in cluster.nodes
            )
            assert all(r["revision"] >= revision for r in answer.json["replicas"])
            # No polling: a converged answer means every process serves it already.
            replies = await asyncio.gather(*(client.get() for client in connections))
            assert replies == [(200, name)] * CLUSTER_SIZE


@pytest.mark.slow
async def test_redeploys_under_load_never_fail_a_request(cluster: Cluster) -> None:
    failures: list[str] = []
    counts = {b"A": 0, b"B": 0}
    done = asyncio.Event()

    async def load(client: Client) -> None:
        while not done.is_set():
            try:
                status, body = await client.get()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                failures.append(f"port {client.port}: {exc!r}")
                await client.close()
                continue
            if status != 200 or body not in counts:
                failures.append(f"port {client.port}: {status} {body[:200]!r}")
            else:
                counts[body] += 1

    async with (
        upstream("A") as a,
        upstream("B") as b,
        clients(cluster) as connections,
        AsyncExitStack() as stack,
    ):
        await deploy(cluster.nodes[0], a)
        await served_everywhere(connections, b"A")
        loaders = [asyncio.create_task(load(client)) for client in connections]

        async def stop_loading() -> None:
            done.set()
            await asyncio.gather(*loaders)

        stack.push_async_callback(stop_loading)
        started = time.monotonic()
        answers = []
        for round_ in range(100):
            url = b if round_ % 2 == 0 else a
            answers.append(await deploy(cluster.nodes[round_ % CLUSTER_SIZE], url))
            assert time.monotonic() - started < 15, f"only {round_} redeploys in 15 s"
        took = time.monotonic() - started
        await asyncio.sleep(0.1)  # load on the last target too

    print(f"\n100 redeploys in {took:.1f} s under load: {counts[b'A']} requests served by A, "
          f"{counts[b'B']} by B, {len(failures)} failed")  # fmt: skip
    assert failures == []
    assert min(counts.values()) > 100
    assert all(answer.json["converged"] is True for answer in answers)


@pytest.mark.slow
async def test_a_stopped_process_makes_a_deploy_answer_202_then_catches_up(
    cluster: Cluster,
) -> None:
    frozen = cluster.nodes[2]
    async with upstream("A") as a, upstream("B") as b, clients(cluster) as connections:
        await deploy(cluster.nodes[0], a)
        await served_everywhere(connections, b"A")
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            answer = await asyncio.to_thread(
                send, cluster.nodes[0].admin_url, "PUT", WORKER + "?wait=0.5", body={"url": b}
            )
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        caught_up = await served_everywhere(connections, b"B")

    assert (answer.status, answer.json["converged"]) == (202, False)
    assert answer.json["pending_replicas"] == [frozen.replica]
    assert answer.json["target"] == {"url": b}
    assert caught_up > 0
