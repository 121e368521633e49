"""The ``RegistryStore`` contract, one suite for every backend; then what only SQLite has.

A backend joins the contract suite by adding its name to ``BACKENDS`` and one branch to the
``backend`` fixture that knows how to open a fresh store object on shared storage.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

import dispatcher
from dispatcher.errors import (
    NamespaceNotEmpty,
    NamespaceNotFound,
    StoreError,
    StoreUnavailable,
    WorkerNotFound,
)
from dispatcher.store import RegistryStore, open_store
from dispatcher.store.sqlite import AuditEntry, SQLiteStore
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import AppTarget, Deployment

PROD = NamespaceName("prod")
STAGING = NamespaceName("staging")
EMPTY = NamespaceName("empty")
GATEWAY = WorkerName("gateway")
AUTH = WorkerName("auth")
DB = WorkerName("db")
TARGET_V1 = AppTarget("gateway.v1:app")
TARGET_V2 = AppTarget("gateway.v2:app")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class ContractStore(RegistryStore, Protocol):
    """The Protocol plus the audit and change-check reads every backend offers."""

    async def history(
        self,
        *,
        namespace: NamespaceName | None = None,
        worker: WorkerName | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]: ...

    async def data_version(self) -> int: ...


class Backend(Protocol):
    """Opens store objects that share one storage (one file, one database)."""

    async def open(self) -> ContractStore: ...

    async def close_all(self) -> None: ...


@dataclass
class SQLiteBackend:
    path: Path
    opened: list[SQLiteStore] = field(default_factory=list)

    async def open(self) -> ContractStore:
        store = await SQLiteStore.open(str(self.path))
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: Backend
    if request.param == "sqlite":
        opened = SQLiteBackend(tmp_path / "registry.db")
    else:  # pragma: no cover - a new backend adds its branch here
        raise AssertionError(f"unknown backend {request.param}")
    yield opened
    await opened.close_all()


@pytest.fixture
async def store(backend: Backend) -> ContractStore:
    return await backend.open()


async def deploy(
    store: ContractStore,
    worker: WorkerName = GATEWAY,
    target: AppTarget = TARGET_V1,
    *,
    namespace: NamespaceName = PROD,
    actor: str = "ci",
) -> Deployment:
    return await store.deploy(namespace, worker, target, actor=actor)


def summary(entries: list[AuditEntry]) -> list[tuple[str, str, str, int | None]]:
    return [(e.namespace, e.worker, e.action, e.version) for e in entries]


# --- revision ------------------------------------------------------------------------------


async def test_a_new_store_is_empty_at_revision_zero(store: ContractStore) -> None:
    assert await store.revision() == 0
    assert await store.data_version() == 0
    assert await store.list_namespaces() == []
    assert await store.history() == []
    assert await store.load_namespace(PROD) is None


Operation = Callable[[ContractStore], Awaitable[object]]


@pytest.mark.parametrize(
    ("operation", "bump"),
    [
        pytest.param(lambda s: s.ensure_namespaces([STAGING]), 1, id="ensure-new"),
        pytest.param(lambda s: s.ensure_namespaces([STAGING, DB]), 1, id="ensure-two-new"),
        pytest.param(lambda s: s.ensure_namespaces([PROD, EMPTY]), 0, id="ensure-existing"),
        pytest.param(lambda s: s.ensure_namespaces([PROD, STAGING]), 1, id="ensure-mixed"),
        pytest.param(lambda s: s.ensure_namespaces([]), 0, id="ensure-nothing"),
        pytest.param(lambda s: deploy(s, AUTH), 1, id="deploy-new-worker"),
        pytest.param(lambda s: deploy(s, GATEWAY, TARGET_V2), 1, id="deploy-new-version"),
        pytest.param(lambda s: s.undeploy(PROD, GATEWAY, actor="ci"), 1, id="undeploy"),
        pytest.param(lambda s: s.delete_namespace(EMPTY), 1, id="delete-empty"),
        pytest.param(lambda s: s.delete_namespace(PROD, force=True), 1, id="delete-forced"),
        pytest.param(lambda s: s.load_namespace(PROD), 0, id="load"),
        pytest.param(lambda s: s.history(), 0, id="history"),
        pytest.param(lambda s: s.list_namespaces(), 0, id="list"),
    ],
)
async def test_each_change_bumps_the_revision_by_one(
    store: ContractStore, operation: Operation, bump: int
) -> None:
    await store.ensure_namespaces([PROD, EMPTY])
    await deploy(store)
    before = await store.revision()

    await operation(store)

    assert await store.revision() == before + bump
    assert await store.data_version() == before + bump


@pytest.mark.parametrize(
    ("operation", "error", "message"),
    [
        pytest.param(
            lambda s: deploy(s, namespace=STAGING),
            NamespaceNotFound,
            'namespace "staging" does not exist in the registry store',
            id="deploy-missing-namespace",
        ),
        pytest.param(
            lambda s: s.undeploy(PROD, DB, actor="ci"),
            WorkerNotFound,
            'worker "db" is not deployed in namespace "prod"',
            id="undeploy-missing-worker",
        ),
        pytest.param(
            lambda s: s.undeploy(STAGING, GATEWAY, actor="ci"),
            NamespaceNotFound,
            'namespace "staging" does not exist in the registry store',
            id="undeploy-missing-namespace",
        ),
        pytest.param(
            lambda s: s.delete_namespace(STAGING, force=True),
            NamespaceNotFound,
            'namespace "staging" does not exist in the registry store',
            id="delete-missing-namespace",
        ),
        pytest.param(
            lambda s: s.delete_namespace(PROD),
            NamespaceNotEmpty,
            'namespace "prod" still holds 2 worker(s): auth, gateway; '
            "undeploy them first or delete with force",
            id="delete-non-empty",
        ),
    ],
)
async def test_a_refused_change_writes_nothing(
    store: ContractStore, operation: Operation, error: type[StoreError], message: str
) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store, GATEWAY)
    await deploy(store, AUTH)
    revision, history = await store.revision(), await store.history()
    current = await store.load_namespace(PROD)

    with pytest.raises(error) as raised:
        await operation(store)

    assert str(raised.value) == message
    assert await store.revision() == revision
    assert await store.history() == history
    assert await store.load_namespace(PROD) == current
    assert await store.list_namespaces() == [PROD]


# --- namespaces ----------------------------------------------------------------------------


async def test_ensure_namespaces_is_idempotent_and_lists_sorted(store: ContractStore) -> None:
    await store.ensure_namespaces([STAGING, PROD])
    await store.ensure_namespaces([PROD, STAGING, PROD])
    await store.ensure_namespaces(iter([EMPTY]))

    assert await store.list_namespaces() == [EMPTY, PROD, STAGING]
    assert await store.revision() == 2


async def test_an_empty_namespace_loads_with_no_deployments(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])

    assert await store.load_namespace(PROD) == (1, [])


async def test_forced_delete_removes_workers_and_records_system_undeploys(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD, STAGING])
    await deploy(store, GATEWAY)
    await deploy(store, AUTH)
    await deploy(store, DB, namespace=STAGING)

    await store.delete_namespace(PROD, force=True)

    assert await store.list_namespaces() == [STAGING]
    assert await store.load_namespace(PROD) is None
    undeploys = (await store.history(namespace=PROD))[:2]
    assert summary(undeploys) == [
        ("prod", "gateway", "undeploy", 1),
        ("prod", "auth", "undeploy", 1),
    ]
    assert {(e.actor, e.revision, e.target) for e in undeploys} == {("system", 5, None)}
    assert [dict(e.metadata) for e in undeploys] == [{"reason": "namespace deleted"}] * 2
    staging = await store.load_namespace(STAGING)
    assert staging is not None and [d.worker for d in staging[1]] == [DB]


async def test_a_recreated_namespace_starts_empty_but_keeps_counting_versions(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store)
    await store.delete_namespace(PROD, force=True)
    await store.ensure_namespaces([PROD])

    assert await store.load_namespace(PROD) == (4, [])
    assert (await deploy(store)).version == 2


# --- deploy and undeploy -------------------------------------------------------------------


async def test_deploy_returns_the_record_that_load_namespace_reads(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])

    deployed = await store.deploy(PROD, GATEWAY, TARGET_V1, actor="alice")

    assert deployed == Deployment(
        PROD, GATEWAY, 1, TARGET_V1, deployed.deployed_at, "alice", deployed.metadata
    )
    assert TIMESTAMP.fullmatch(deployed.deployed_at)
    assert dict(deployed.metadata) == {}
    assert await store.load_namespace(PROD) == (2, [deployed])


async def test_load_namespace_sorts_by_worker_and_shows_only_current_versions(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD, STAGING])
    await deploy(store, GATEWAY, TARGET_V1)
    db = await deploy(store, DB)
    gateway = await deploy(store, GATEWAY, TARGET_V2)
    auth = await deploy(store, AUTH)
    await deploy(store, GATEWAY, namespace=STAGING)

    assert await store.load_namespace(PROD) == (6, [auth, db, gateway])


async def test_versions_increase_and_are_never_reused(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD, STAGING])
    versions = [(await deploy(store)).version for _ in range(3)]
    await store.undeploy(PROD, GATEWAY, actor="ci")
    loaded = await store.load_namespace(PROD)
    redeployed = await deploy(store, GATEWAY, TARGET_V2)
    elsewhere = await deploy(store, GATEWAY, namespace=STAGING)

    assert versions == [1, 2, 3]
    assert loaded == (5, [])
    assert redeployed.version == 4
    assert elsewhere.version == 1
    assert await store.load_namespace(PROD) == (7, [redeployed])


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        {"commit": "3f2a9c1", "ticket": "OPS-42"},
        {"note": 'quotes " and \\ and ünïcödé', "empty": ""},
    ],
)
async def test_metadata_round_trips(
    store: ContractStore, metadata: Mapping[str, str] | None
) -> None:
    await store.ensure_namespaces([PROD])

    deployed = await store.deploy(PROD, GATEWAY, TARGET_V1, actor="ci", metadata=metadata)

    expected = dict(metadata or {})
    loaded = await store.load_namespace(PROD)
    assert loaded is not None
    assert [dict(deployed.metadata), dict(loaded[1][0].metadata)] == [expected, expected]
    assert [dict(e.metadata) for e in await store.history()] == [expected]


async def test_undeploy_records_the_removed_version(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store)
    await deploy(store)

    await store.undeploy(PROD, GATEWAY, actor="bob")

    (entry, *_) = await store.history()
    assert entry == AuditEntry(4, PROD, GATEWAY, "undeploy", 2, None, "bob", entry.at, {})
    assert TIMESTAMP.fullmatch(entry.at)


# --- history -------------------------------------------------------------------------------


@pytest.fixture
async def busy_store(store: ContractStore) -> ContractStore:
    await store.ensure_namespaces([PROD, STAGING])
    await deploy(store, GATEWAY)  # revision 2
    await deploy(store, AUTH)  # 3
    await deploy(store, GATEWAY, namespace=STAGING)  # 4
    await deploy(store, GATEWAY, TARGET_V2)  # 5
    await store.undeploy(PROD, AUTH, actor="bob")  # 6
    return store


@pytest.mark.parametrize(
    ("namespace", "worker", "limit", "expected"),
    [
        (
            None,
            None,
            50,
            [
                ("prod", "auth", "undeploy", 1),
                ("prod", "gateway", "deploy", 2),
                ("staging", "gateway", "deploy", 1),
                ("prod", "auth", "deploy", 1),
                ("prod", "gateway", "deploy", 1),
            ],
        ),
        (None, None, 2, [("prod", "auth", "undeploy", 1), ("prod", "gateway", "deploy", 2)]),
        (
            PROD,
            None,
            50,
            [
                ("prod", "auth", "undeploy", 1),
                ("prod", "gateway", "deploy", 2),
                ("prod", "auth", "deploy", 1),
                ("prod", "gateway", "deploy", 1),
            ],
        ),
        (
            None,
            GATEWAY,
            50,
            [
                ("prod", "gateway", "deploy", 2),
                ("staging", "gateway", "deploy", 1),
                ("prod", "gateway", "deploy", 1),
            ],
        ),
        (PROD, GATEWAY, 1, [("prod", "gateway", "deploy", 2)]),
        (STAGING, AUTH, 50, []),
        (NamespaceName("nowhere"), None, 50, []),
    ],
)
async def test_history_is_newest_first_with_filters_and_limit(
    busy_store: ContractStore,
    namespace: NamespaceName | None,
    worker: WorkerName | None,
    limit: int,
    expected: list[tuple[str, str, str, int]],
) -> None:
    entries = await busy_store.history(namespace=namespace, worker=worker, limit=limit)

    assert summary(entries) == expected


async def test_history_entries_carry_revision_target_and_actor(busy_store: ContractStore) -> None:
    entries = await busy_store.history(namespace=PROD)

    assert [(e.revision, e.target, e.actor) for e in entries] == [
        (6, None, "bob"),
        (5, TARGET_V2, "ci"),
        (3, TARGET_V1, "ci"),
        (2, TARGET_V1, "ci"),
    ]


@pytest.mark.parametrize("limit", [0, -1])
async def test_history_refuses_a_limit_below_one(busy_store: ContractStore, limit: int) -> None:
    with pytest.raises(ValueError, match=f"^limit must be at least 1 \\(got {limit}\\)$"):
        await busy_store.history(limit=limit)


# --- several store objects on shared storage -----------------------------------------------


async def test_writes_persist_across_close_and_reopen(
    backend: Backend, store: ContractStore
) -> None:
    await store.ensure_namespaces([PROD])
    deployed = await store.deploy(PROD, GATEWAY, TARGET_V1, actor="ci", metadata={"k": "v"})
    history = await store.history()
    await store.close()

    reopened = await backend.open()

    assert await reopened.revision() == 2
    assert await reopened.load_namespace(PROD) == (2, [deployed])
    assert await reopened.history() == history


async def test_two_store_objects_see_each_others_writes(
    backend: Backend, store: ContractStore
) -> None:
    other = await backend.open()

    await store.ensure_namespaces([PROD])
    assert await other.revision() == 1
    deployed = await deploy(other)
    assert await store.revision() == 2
    assert await store.data_version() == 2
    assert await store.load_namespace(PROD) == (2, [deployed])


async def test_concurrent_deploys_of_one_worker_get_distinct_versions(
    backend: Backend, store: ContractStore
) -> None:
    stores = [store, await backend.open()]
    await store.ensure_namespaces([PROD])

    deployed = await asyncio.gather(
        *(
            deploy(stores[i % 2], GATEWAY, AppTarget(f"gateway.v{i}:app"), actor=f"task-{i}")
            for i in range(20)
        )
    )

    assert sorted(d.version for d in deployed) == list(range(1, 21))
    history = await store.history(worker=GATEWAY, limit=100)
    assert len(history) == 20
    assert sorted(e.revision for e in history) == list(range(2, 22))
    assert await store.revision() == 21
    last = max(deployed, key=lambda d: d.version)
    assert await stores[1].load_namespace(PROD) == (21, [last])


async def test_close_is_idempotent_and_later_calls_fail(store: ContractStore) -> None:
    await store.close()
    await store.close()

    with pytest.raises(StoreError, match="^registry store is closed: "):
        await store.revision()


# --- SQLite only ---------------------------------------------------------------------------


async def open_sqlite(path: Path, busy_timeout: float = 5.0) -> SQLiteStore:
    return await SQLiteStore.open(str(path), busy_timeout=busy_timeout)


async def test_sqlite_open_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "registry.db"

    async with await open_sqlite(path) as store:
        await store.ensure_namespaces([PROD])
        assert repr(store) == f"SQLiteStore(path={str(path)!r})"

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == [
            ("revision", 1),
            ("schema_version", 1),
        ]
    raw.close()


async def test_sqlite_opens_a_bare_file_name_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async with await SQLiteStore.open("registry.db") as store:
        await store.ensure_namespaces([PROD])

    assert (tmp_path / "registry.db").is_file()


async def test_sqlite_warns_when_wal_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    async with await SQLiteStore.open(":memory:") as store:
        await store.ensure_namespaces([PROD])
        assert await store.revision() == 1

    assert caplog.messages == ["registry store :memory: runs in journal mode memory, not WAL"]


async def test_open_store_opens_a_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"

    async with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SQLiteStore)
        await store.ensure_namespaces([PROD])

    with pytest.raises(StoreError, match="^registry store is closed: "):
        await store.revision()
    async with open_store(str(path)) as reopened:
        assert await reopened.list_namespaces() == [PROD]


async def test_sqlite_reports_a_held_write_lock_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await open_sqlite(path, busy_timeout=0.2)
    await store.ensure_namespaces([PROD])
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await deploy(store)
        assert str(raised.value) == f"registry store is locked (busy for more than 0.2 s): {path}"
        # WAL: readers are not blocked by the writer.
        assert await store.load_namespace(PROD) == (1, [])
    finally:
        raw.execute("ROLLBACK")
        raw.close()

    deployed = await deploy(store)

    assert deployed.version == 1
    assert await store.revision() == 2
    assert len(await store.history()) == 1
    await store.close()


def corrupt_the_index(path: Path) -> None:
    """Overwrite the end of the audit index's root page: pages stay readable, checks fail."""
    with sqlite3.connect(path) as raw:
        (root,) = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'deployments_by_worker'"
        ).fetchone()
        (page_size,) = raw.execute("PRAGMA page_size").fetchone()
    raw.close()
    with path.open("r+b") as file:
        file.seek(root * page_size - 20)
        file.write(b"\xff" * 20)


def overwrite_the_tables(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(os.urandom(4096 * 4))


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a SQLite database\n" * 200)


def claim_a_future_schema(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    raw.close()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (write_garbage, "registry store is corrupt or not a SQLite database: {path} "),
        (overwrite_the_tables, "registry store is corrupt or not a SQLite database: {path} "),
        (corrupt_the_index, "registry store is corrupt: {path} (quick_check: "),
        (
            claim_a_future_schema,
            "registry store schema version 99 is newer than this dispatcher supports (1): {path}",
        ),
    ],
)
async def test_sqlite_refuses_a_damaged_file_at_open(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    path = tmp_path / "registry.db"
    async with await open_sqlite(path) as store:
        await store.ensure_namespaces([PROD])
        for _ in range(20):
            await deploy(store)
    damage(path)

    with pytest.raises(StoreError) as raised:
        await open_sqlite(path)

    assert str(raised.value).startswith(message.format(path=path))


async def test_sqlite_reports_a_parent_it_cannot_create(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(StoreError) as raised:
        await open_sqlite(tmp_path / "file" / "registry.db")

    assert str(raised.value) == (
        f"cannot create the registry store directory {tmp_path / 'file'}: File exists"
    )


async def test_sqlite_reports_a_file_it_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as raised:
        await open_sqlite(tmp_path)

    assert str(raised.value) == (
        f"registry store open failed: {tmp_path} (unable to open database file)"
    )


async def test_sqlite_refuses_a_negative_busy_timeout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^busy_timeout must be >= 0 seconds \(got -1\)$"):
        await open_sqlite(tmp_path / "registry.db", busy_timeout=-1)


@pytest.mark.parametrize(
    ("sql", "operation", "detail"),
    [
        (
            "UPDATE deployments SET target = '{\"bogus\": 1}'",
            "load_namespace",
            "unreadable row: target '{\"bogus\": 1}': stored worker: unknown key(s) ['bogus']",
        ),
        ("UPDATE deployments SET metadata = '[1]'", "load_namespace", "unreadable row: metadata"),
        ("UPDATE deployments SET target = 'nope'", "load_namespace", "unreadable row: target"),
        ("UPDATE deployments SET target = '[1]'", "history", "unreadable row: target '[1]'"),
        ("UPDATE deployments SET metadata = '{'", "history", "unreadable row: metadata '{'"),
        ("UPDATE deployments SET action = 'explode'", "history", "unreadable row: unknown audit"),
        ("DROP TABLE workers", "load_namespace", "no such table: workers"),
    ],
)
async def test_sqlite_maps_bad_rows_and_sql_errors_to_store_error(
    tmp_path: Path, sql: str, operation: str, detail: str
) -> None:
    path = tmp_path / "registry.db"
    store = await open_sqlite(path)
    await store.ensure_namespaces([PROD])
    await deploy(store)
    with sqlite3.connect(path) as raw:
        raw.execute(sql)
    raw.close()

    with pytest.raises(StoreError) as raised:
        await (store.load_namespace(PROD) if operation == "load_namespace" else store.history())

    assert str(raised.value).startswith(f"registry store {operation} failed: {path} ({detail}")
    await store.close()


KILLED_DEPLOY = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from dispatcher.store.sqlite import SQLiteStore
    from dispatcher.types import NamespaceName, WorkerName
    from dispatcher.workers import AppTarget

    async def main() -> None:
        store = await SQLiteStore.open(sys.argv[1])
        await store.ensure_namespaces([NamespaceName("prod")])
        await store.deploy(
            NamespaceName("prod"), WorkerName("gateway"), AppTarget("gateway.v1:app"),
            actor="doomed", metadata={"last": "words"},
        )
        print("ok", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_sqlite_keeps_an_acknowledged_deploy_after_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    source = str(Path(dispatcher.__path__[0]).parent)
    environment = {**os.environ, "PYTHONPATH": source}

    finished = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", KILLED_DEPLOY, str(path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )

    assert (finished.returncode, finished.stdout, finished.stderr) == (-signal.SIGKILL, "ok\n", "")
    async with await open_sqlite(path) as store:
        loaded = await store.load_namespace(PROD)
        assert loaded is not None
        revision, (deployed,) = loaded
        assert (revision, deployed.worker, deployed.version, deployed.actor) == (
            2,
            GATEWAY,
            1,
            "doomed",
        )
        assert dict(deployed.metadata) == {"last": "words"}
