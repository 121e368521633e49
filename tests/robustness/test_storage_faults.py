"""Storage faults (``shared/ROBUSTNESS.md`` S1 to S6) against real dispatchers: in this process,
as ``dispatcher serve`` processes, or through the CLI, on real SQLite files and the real
PostgreSQL (each test in its own schema), for what ``tests/test_faults.py`` and
``tests/store`` do not already prove (the index, ``test_index.py``, names those tests).

* S1: while another connection holds the SQLite write lock and a deploy waits on it, routed
  requests keep their latency: the data plane never waits on the store.
* S2: a corrupted registry file (bytes flipped in a b-tree page, the file cut short, or
  not SQLite at all) stops ``dispatcher serve`` with a clear error before it listens; never
  zero routes served silently.
* S3: ``dispatcher serve`` killed with SIGKILL in the middle of a deploy's transaction, at
  its COMMIT, or right after it: restarted, the registry is wholly the old one or wholly the
  new one, and the next deploy works. The process is paused at the chosen statement by a
  trace callback set on its SQLite connection, then killed from outside.
* S4: a write the filesystem refuses. Running as root, a read-only file or directory does
  not stop writes, and mounting a small or read-only filesystem needs privileges CI lacks,
  so the ``serve`` process's file-size limit (``RLIMIT_FSIZE``) is set to 0 from outside:
  every write to a file fails (EFBIG, which SQLite reports as an I/O error, as it reports a
  full disk's ENOSPC as SQLITE_FULL). The deploy is a 503 with ``Retry-After``, nothing is
  written, traffic goes on; with the limit lifted, the same deploy succeeds.
* S5: ``pg_terminate_backend`` of a deploy's transaction (held mid-way by a trigger) is a
  503 on that node; neither node serves or records a half-applied deploy; a retry succeeds
  and both serve it. PostgreSQL unreachable at startup: ``serve`` fails fast (exit 1), the
  documented policy (docs/multi-node.md).
* S6: two dispatchers on one registry (PostgreSQL, and SQLite on one machine) deploying the
  same worker at the same moment: the writes serialize (distinct versions, one after the
  other) and both nodes serve the later one as soon as both answers are in.
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

import psycopg
import pytest

from dispatcher.app import RunningDispatcher
from dispatcher.errors import StoreError
from dispatcher.store.sqlite import SQLiteStore
from dispatcher.testing import run_dispatcher
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import parse_target
from tests.admin.conftest import DEV, TOKEN, Answer, send
from tests.admin.test_end_to_end import fetch, upstream
from tests.forwarding.upstreams import free_port
from tests.store.conftest import pg_server, pg_url
from tests.store.test_contract import (
    application_name,
    install_stall,
    overwrite_the_tables,
    terminate,
    wait_for_backends,
    write_garbage,
)
from tests.test_faults import UNAVAILABLE, write_lock_held

from .conftest import (
    Node,
    assert_not_listening,
    run_command,
    serving,
    start_node,
    stop,
    wait_ready,
)

__all__ = ["pg_server", "pg_url"]  # the PostgreSQL fixtures, shared with tests/store

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"
HOST: Final = "gateway.do"
STORE_TIMEOUT: Final = 1.0
ENVIRON: Final = {"DISPATCHER_ADMIN_TOKEN": TOKEN}
LATENCY_FLOOR: Final = 0.05
"""Seconds under which a p99 is noise on a loaded machine (measured idle: about 1 ms)."""
NODE_CONFIG: Final = f"[store]\ntimeout = {STORE_TIMEOUT}\n\n[limits]\ndrain_timeout = 1.0\n"


def node_config(tmp_path: Path) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(NODE_CONFIG)
    return path


async def call(url: str, method: str, path: str, body: object = None) -> Answer:
    """One Deploy API call with the full-access token, from a thread."""
    return await asyncio.to_thread(send, url, method, path, body=body)


async def routed(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(fetch, url, HOST)


async def registry(path: Path) -> tuple[int, list[tuple[str, int | None, str | None]]]:
    """What the SQLite file at ``path`` holds: the revision and the audit trail, newest first
    (action, version, upstream URL)."""
    async with await SQLiteStore.open(str(path)) as store:
        revision = await store.revision()
        trail = await store.history(limit=100)
    return revision, [
        (e.action, e.version, None if e.target is None else e.target.to_json()["url"])
        for e in trail
    ]


async def seed(path: Path, url: str) -> None:
    """A registry file holding the development namespace and ``gateway`` v1 at ``url``."""
    async with await SQLiteStore.open(str(path)) as store:
        await store.ensure_namespaces([NamespaceName(DEV)])
        await store.deploy(
            NamespaceName(DEV), WorkerName("gateway"), parse_target({"url": url}), actor="seed"
        )


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- S1. A held SQLite lock does not slow the data plane -----------------------------------


async def routed_latencies(d: RunningDispatcher, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.monotonic()
        assert await routed(d.url) == (200, "A")
        taken.append(time.monotonic() - started)
    return taken


async def test_a_held_sqlite_lock_leaves_routed_latency_alone(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    async with (
        upstream("A") as a,
        upstream("B") as b,
        run_dispatcher(node_config(tmp_path), store=store, environ=ENVIRON) as d,
    ):
        assert (await call(d.admin_url, "PUT", WORKER, {"url": a})).status == 201
        baseline = await routed_latencies(d, 20)
        async with write_lock_held(str(store)):
            writing = asyncio.ensure_future(call(d.admin_url, "PUT", WORKER, {"url": b}))
            during = []
            while not writing.done():
                during += await routed_latencies(d, 1)
            refused = await writing
    assert (refused.status, refused.json) == (503, UNAVAILABLE)
    print(
        f"\n{len(during)} routed requests while the deploy waited on the lock; p99 "
        f"{p99(baseline) * 1000:.1f} ms before, {p99(during) * 1000:.1f} ms during"
    )
    # One routed request per few milliseconds for the whole wait, none of them held up: a
    # data plane that waited on the store would show latencies near the store timeout.
    assert len(during) >= 10
    assert p99(during) <= max(2 * p99(baseline), LATENCY_FLOOR)


# --- S2. A corrupted registry file stops the start -----------------------------------------


def cut_short(path: Path) -> None:
    """The file cut in the middle of its pages, as a failed copy or a full disk leaves it."""
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(size // 2 + 100)


def flip_a_table_page(path: Path) -> None:
    """Flip every byte of the second half of the audit table's root b-tree page."""
    with sqlite3.connect(path) as raw:
        (root,) = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'deployments'"
        ).fetchone()
        (page_size,) = raw.execute("PRAGMA page_size").fetchone()
    raw.close()
    with path.open("r+b") as file:
        start = (root - 1) * page_size + page_size // 2
        file.seek(start)
        data = file.read(page_size // 2)
        file.seek(start)
        file.write(bytes(b ^ 0xFF for b in data))


DAMAGES: Final = [
    pytest.param(flip_a_table_page, "registry store is corrupt", id="flipped-btree-page"),
    pytest.param(overwrite_the_tables, "registry store is corrupt", id="overwritten-pages"),
    pytest.param(cut_short, "registry store is corrupt", id="cut-short"),
    pytest.param(
        write_garbage, "registry store is corrupt or not a SQLite database: {path} ", id="garbage"
    ),
]


@pytest.mark.parametrize(("damage", "message"), DAMAGES)
async def test_a_corrupted_registry_stops_the_start(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    store = tmp_path / "registry.db"
    await fill(store)
    damage(store)
    with pytest.raises(StoreError) as raised:
        async with run_dispatcher(node_config(tmp_path), store=store, environ=ENVIRON):
            pytest.fail("a dispatcher started on a corrupted registry")
    assert str(raised.value).startswith(message.format(path=store)), raised.value


async def test_serve_on_a_corrupted_registry_exits_1_before_it_listens(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    await fill(store)
    flip_a_table_page(store)
    port = free_port()
    finished = await asyncio.to_thread(
        run_command,
        *("serve", "--port", str(port), "--admin-port", "0"),
        cwd=tmp_path,
        DISPATCHER_STORE=str(store),
        DISPATCHER_ADMIN_TOKEN=TOKEN,
    )
    assert finished.returncode == 1, finished.stderr
    assert finished.stderr == (
        "Error: registry store: registry store is corrupt or not a SQLite database: "
        f"{store} (database disk image is malformed)\n"
    )
    assert_not_listening(port)


async def fill(path: Path) -> None:
    """A registry with enough deploys to span several pages, closed (checkpointed)."""
    async with await SQLiteStore.open(str(path)) as store:
        await store.ensure_namespaces([NamespaceName(DEV)])
        for index in range(40):
            await store.deploy(
                NamespaceName(DEV),
                WorkerName(f"worker-{index % 8}"),
                parse_target({"url": f"http://10.0.0.{index}:8080"}),
                actor="seed",
                metadata={"note": "x" * 200},
            )


# --- S3. SIGKILL in the middle of a deploy -------------------------------------------------

PAUSE_HOOK: Final = """
import os, sqlite3, time

_pause_at = os.environ["DISPATCHER_TEST_PAUSE_AT"]
_marker = os.environ["DISPATCHER_TEST_MARKER"]
_state = {"deploying": False, "committed": False}


def _pause():
    open(_marker, "w").close()
    while True:
        time.sleep(60)


def _trace(statement):
    text = statement.lstrip().upper()
    if text.startswith("INSERT INTO DEPLOYMENTS"):
        _state["deploying"] = True
    elif not _state["deploying"]:
        return
    elif _pause_at == "mid-transaction" and text.startswith("INSERT INTO WORKERS"):
        _pause()
    elif _pause_at == "at-commit" and text == "COMMIT":
        _pause()
    elif _pause_at == "after-commit":
        if _state["committed"]:
            _pause()
        _state["committed"] = text == "COMMIT"


_connect = sqlite3.connect


def connect(*args, **kwargs):
    connection = _connect(*args, **kwargs)
    connection.set_trace_callback(_trace)
    return connection


sqlite3.connect = connect
"""
"""Run in the ``serve`` process before the dispatcher: its registry connection stops for good
at the chosen statement of the first deploy (the store's one thread holds the write lock
there) and says so by creating the marker file."""


async def wait_for_file(path: Path, node: Node, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert node.process.poll() is None, f"serve exited: {node.describe()}"
        assert time.monotonic() < deadline, f"never paused: {node.describe()}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("pause_at", "outcome"),
    [("mid-transaction", "old"), ("at-commit", "old"), ("after-commit", "new")],
)
async def test_sigkill_mid_deploy_leaves_the_registry_wholly_old_or_wholly_new(
    tmp_path: Path, pause_at: str, outcome: str
) -> None:
    store = tmp_path / "registry.db"
    marker = tmp_path / "paused"
    async with upstream("A") as a, upstream("B") as b:
        await seed(store, a)
        node = start_node(
            tmp_path,
            store,
            node_config(tmp_path),
            PAUSE_HOOK,
            DISPATCHER_ADMIN_TOKEN=TOKEN,
            DISPATCHER_TEST_PAUSE_AT=pause_at,
            DISPATCHER_TEST_MARKER=str(marker),
        )
        try:
            await wait_ready(node)
            before = await registry(store)  # after the start, which creates namespaces
            deploying = asyncio.ensure_future(call(node.admin_url, "PUT", WORKER, {"url": b}))
            await wait_for_file(marker, node)
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)
            with pytest.raises((ConnectionError, http.client.HTTPException)):
                await deploying  # never answered: the process died holding the request
        finally:
            stop(node)
        assert node.process.returncode == -signal.SIGKILL

        after = await registry(store)
        async with run_dispatcher(node_config(tmp_path), store=store, environ=ENVIRON) as d:
            served = await routed(d.url)
            # wait=0: the killed process's replica row still looks live for a few seconds.
            redeployed = await call(d.admin_url, "PUT", WORKER + "?wait=0", {"url": a})
    revision, trail = before
    if outcome == "old":
        assert after == before
        assert served == (200, "A")
        assert redeployed.json["version"] == 2
    else:
        assert after == (revision + 1, [("deploy", 2, b), *trail])
        assert served == (200, "B")
        assert redeployed.json["version"] == 3
    assert redeployed.status == 200


# --- S4. The filesystem refuses the write --------------------------------------------------


@contextmanager
def file_writes_refused(pid: int) -> Iterator[None]:
    """Every write to a file by process ``pid`` fails (EFBIG) until the block ends."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


async def test_a_write_the_filesystem_refuses_is_a_503_and_changes_nothing(
    tmp_path: Path,
) -> None:
    store = tmp_path / "registry.db"
    async with upstream("A") as a, upstream("B") as b:
        await seed(store, a)
        config = node_config(tmp_path)
        async with serving(tmp_path, store, config, DISPATCHER_ADMIN_TOKEN=TOKEN) as node:
            before = await registry(store)
            assert await routed(node.url) == (200, "A")
            with file_writes_refused(node.process.pid):
                refused = await call(node.admin_url, "PUT", WORKER, {"url": b})
                served = await routed(node.url)
                shown = await call(node.admin_url, "GET", WORKER)
            after = await registry(store)
            retried = await call(node.admin_url, "PUT", WORKER, {"url": b})
            served_after = await routed(node.url)
    assert (refused.status, refused.json, refused.headers.get("retry-after")) == (
        503,
        UNAVAILABLE,
        "1",
    ), node.describe()
    assert served == (200, "A")
    assert (shown.status, shown.json["version"]) == (200, 1)
    assert after == before
    assert (retried.status, retried.json["version"]) == (200, 2)
    assert served_after == (200, "B")


# --- S5. PostgreSQL: a deploy's backend terminated; unreachable at startup -----------------


async def test_a_deploy_whose_backend_is_terminated_is_a_503_then_a_retry_succeeds(
    pg_url: str, tmp_path: Path
) -> None:
    config = node_config(tmp_path)
    async with (
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin,
        upstream("A") as a,
        upstream("B") as b,
        run_dispatcher(config, store=pg_url, environ=ENVIRON) as first,
        run_dispatcher(config, store=pg_url, environ=ENVIRON) as second,
    ):
        deployed = await call(first.admin_url, "PUT", WORKER, {"url": a})
        assert deployed.status == 201, deployed.body
        before = await pg_registry(first)
        await install_stall(admin)
        deploying = asyncio.ensure_future(call(first.admin_url, "PUT", WORKER, {"url": b}))
        stalled = await wait_for_backends(admin, application_name(pg_url), "wait_event = 'PgSleep'")
        await terminate(admin, stalled)
        refused = await deploying
        await admin.execute("DROP TRIGGER stall ON workers")
        meanwhile = [await routed(d.url) for d in (first, second)]
        after = await pg_registry(second)
        retried = await call(first.admin_url, "PUT", WORKER, {"url": b})
        served = [await routed(d.url) for d in (first, second)]
    assert (refused.status, refused.json, refused.headers.get("retry-after")) == (
        503,
        UNAVAILABLE,
        "1",
    )
    assert meanwhile == [(200, "A"), (200, "A")]
    assert after == before  # nothing of the killed transaction, seen from the other node
    assert (retried.status, retried.json["version"], retried.json["converged"]) == (200, 2, True)
    assert served == [(200, "B"), (200, "B")]


async def pg_registry(d: RunningDispatcher) -> tuple[object, ...]:
    return (
        await d.store.revision(),
        await d.store.history(limit=100),
        await d.store.load_namespace(NamespaceName(DEV)),
    )


def test_postgres_unreachable_at_startup_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        url = f"postgresql://postgres@127.0.0.1:{closed.getsockname()[1]}/test"
        port = free_port()
        finished = run_command(
            *("serve", "--port", str(port), "--admin-port", "0"),
            cwd=tmp_path,
            DISPATCHER_STORE=url,
            DISPATCHER_ADMIN_TOKEN=TOKEN,
        )
    assert finished.returncode == 1, finished.stderr
    assert finished.stderr.startswith("Error: registry store: registry store is unavailable: ")
    assert finished.stderr.count("\n") == 1, finished.stderr
    assert_not_listening(port)


# --- S6. Two nodes deploy the same worker at once ------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One registry for two nodes: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return str(tmp_path / "registry.db")


@asynccontextmanager
async def two_nodes(
    store: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningDispatcher, RunningDispatcher]]:
    config = node_config(tmp_path)
    async with (
        run_dispatcher(config, store=store, environ=ENVIRON) as first,
        run_dispatcher(config, store=store, environ=ENVIRON) as second,
    ):
        yield first, second


ROUNDS: Final = 4


async def test_two_nodes_deploying_one_worker_at_once_serialize_and_converge(
    shared_store: str, tmp_path: Path
) -> None:
    async with (
        upstream("one") as one,
        upstream("two") as two,
        two_nodes(shared_store, tmp_path) as (first, second),
    ):
        previous = 0
        for _ in range(ROUNDS):
            answers = await asyncio.gather(
                call(first.admin_url, "PUT", WORKER, {"url": one}),
                call(second.admin_url, "PUT", WORKER, {"url": two}),
            )
            assert all(a.status in (200, 201) for a in answers), [a.body for a in answers]
            assert all(a.json["converged"] for a in answers), [a.body for a in answers]
            versions = sorted(a.json["version"] for a in answers)
            assert versions == [previous + 1, previous + 2]  # one after the other
            previous = versions[1]
            later = max(answers, key=lambda a: a.json["version"])
            winner = "one" if later.json["target"]["url"] == one else "two"
            # Both answers say every replica applied the later write: both serve it now.
            assert [await routed(d.url) for d in (first, second)] == [(200, winner)] * 2
            shown = [await call(d.admin_url, "GET", WORKER) for d in (first, second)]
            assert [s.json["version"] for s in shown] == [previous, previous]
        trail = (await call(first.admin_url, "GET", "/deployments?worker=gateway&limit=100")).json
    assert [e["version"] for e in trail["deployments"]] == list(range(previous, 0, -1))
