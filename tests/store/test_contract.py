"""The ``RegistryStore`` contract, one suite for every backend; then what only SQLite has, and
what only PostgreSQL has.

A backend joins the contract suite by adding its name to ``BACKENDS`` and one branch to the
``backend`` fixture that knows how to open a fresh store object on shared storage. PostgreSQL
runs each test in a schema of its own (the ``pg_url`` fixture in ``conftest.py``) and is
skipped when no server answers, unless ``CI`` is set.
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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

import dispatcher
from dispatcher.errors import (
    ConfigError,
    NamespaceNotEmpty,
    NamespaceNotFound,
    NothingToRollBack,
    StoreError,
    StoreUnavailable,
    WorkerNotFound,
)
from dispatcher.store import (
    REPLICA_RETENTION,
    AuditEntry,
    RegistryStore,
    Replica,
    ReplicaId,
    ReplicaInfo,
    check_store_url,
    open_store,
)
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.sqlite import SQLiteStore
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
TARGET_V3 = AppTarget("gateway.v3:app")
GATEWAY_V2 = WorkerName("gateway-v2")
WEB_1 = ReplicaId("web-1:4242:9f3ab2c1")
WEB_2 = ReplicaId("web-2:77:0c1d2e3f")
INFO = ReplicaInfo("web-1", 4242, {"environment": "production", "listen": "10.0.0.5:8787"})
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
SCHEMA_VERSION = 3


class ContractStore(RegistryStore, Protocol):
    """The Protocol plus the audit and change-check reads every backend offers."""

    async def history(
        self,
        *,
        namespace: NamespaceName | None = None,
        worker: WorkerName | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]: ...


class Backend(Protocol):
    """Opens store objects that share one storage (one file, one database)."""

    async def open(self) -> ContractStore: ...

    async def close_all(self) -> None: ...

    def backdate_replica(self, replica_id: ReplicaId, seconds: float) -> None:
        """Make the replica's last heartbeat ``seconds`` older, behind the store's back."""


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

    def backdate_replica(self, replica_id: ReplicaId, seconds: float) -> None:
        with sqlite3.connect(self.path) as raw:
            (seen,) = raw.execute(
                "SELECT last_seen FROM replicas WHERE id = ?", (replica_id,)
            ).fetchone()
            moment = datetime.strptime(seen, "%Y-%m-%dT%H:%M:%S.%fZ") - timedelta(seconds=seconds)
            raw.execute(
                "UPDATE replicas SET last_seen = ? WHERE id = ?",
                (moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), replica_id),
            )
        raw.close()


@dataclass
class PostgresBackend:
    url: str
    opened: list[PostgresStore] = field(default_factory=list)

    async def open(self) -> ContractStore:
        store = await PostgresStore.open(self.url)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()

    def backdate_replica(self, replica_id: ReplicaId, seconds: float) -> None:
        with psycopg.connect(self.url, autocommit=True) as raw:
            raw.execute(
                "UPDATE replicas SET last_seen = last_seen - make_interval(secs => %s) "
                "WHERE id = %s",
                (seconds, replica_id),
            )


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: Backend
    if request.param == "sqlite":
        opened = SQLiteBackend(tmp_path / "registry.db")
    elif request.param == "postgres":
        # Requested here, not as an argument: the SQLite runs must not need a server.
        opened = PostgresBackend(request.getfixturevalue("pg_url"))
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
    assert await store.revision() == 0
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
        pytest.param(
            lambda s: s.deploy(PROD, AUTH, TARGET_V2, actor="ci", pinned=WorkerName("auth-v2")),
            1,
            id="deploy-pinned",
        ),
        pytest.param(lambda s: s.rollback(PROD, GATEWAY, actor="ci"), 1, id="rollback"),
        pytest.param(lambda s: s.heartbeat(WEB_1, 3, INFO), 0, id="heartbeat"),
        pytest.param(lambda s: s.replicas(5.0), 0, id="replicas"),
        pytest.param(lambda s: s.retire(WEB_1), 0, id="retire"),
    ],
)
async def test_each_change_bumps_the_revision_by_one(
    store: ContractStore, operation: Operation, bump: int
) -> None:
    await store.ensure_namespaces([PROD, EMPTY])
    await deploy(store)
    await deploy(store, GATEWAY, TARGET_V2)
    before = await store.revision()

    await operation(store)

    assert await store.revision() == before + bump
    assert await store.revision() == before + bump


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
        pytest.param(
            lambda s: s.deploy(STAGING, GATEWAY, TARGET_V2, actor="ci", pinned=GATEWAY_V2),
            NamespaceNotFound,
            'namespace "staging" does not exist in the registry store',
            id="deploy-pinned-missing-namespace",
        ),
        pytest.param(
            lambda s: s.rollback(PROD, GATEWAY, actor="ci"),
            NothingToRollBack,
            'worker "gateway" in namespace "prod" has no version before its current version 1 '
            "to roll back to",
            id="rollback-first-version",
        ),
        pytest.param(
            lambda s: s.rollback(PROD, DB, actor="ci"),
            WorkerNotFound,
            'worker "db" is not deployed in namespace "prod"',
            id="rollback-missing-worker",
        ),
        pytest.param(
            lambda s: s.rollback(STAGING, GATEWAY, actor="ci"),
            NamespaceNotFound,
            'namespace "staging" does not exist in the registry store',
            id="rollback-missing-namespace",
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
        PROD, GATEWAY, 1, TARGET_V1, deployed.deployed_at, "alice", deployed.metadata, revision=2
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


async def test_ensure_namespaces_returns_the_ones_it_created(store: ContractStore) -> None:
    assert await store.ensure_namespaces([STAGING, PROD]) == [PROD, STAGING]
    assert await store.ensure_namespaces([PROD, EMPTY]) == [EMPTY]
    assert await store.ensure_namespaces([PROD]) == []
    assert await store.ensure_namespaces([]) == []


# --- version labels, pinned workers and rollback -------------------------------------------


def current(loaded: tuple[int, list[Deployment]] | None) -> dict[str, tuple[int, object]]:
    assert loaded is not None
    return {d.worker: (d.version, d.target) for d in loaded[1]}


async def test_a_label_is_stored_with_the_record(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])

    deployed = await store.deploy(PROD, GATEWAY, TARGET_V1, actor="ci", version_label="v1.2")

    assert (deployed.version_label, deployed.previous_version, deployed.revision) == (
        "v1.2",
        None,
        2,
    )
    assert await store.load_namespace(PROD) == (2, [deployed])
    (entry,) = await store.history()
    assert (entry.version_label, entry.restored_version) == ("v1.2", None)


async def test_a_pinned_twin_is_deployed_in_the_same_revision(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store, GATEWAY, TARGET_V1)

    deployed = await store.deploy(
        PROD,
        GATEWAY,
        TARGET_V2,
        actor="ci",
        metadata={"commit": "abc"},
        version_label="v2",
        pinned=GATEWAY_V2,
    )
    later = await deploy(store, GATEWAY, TARGET_V3)

    assert (deployed.worker, deployed.version, deployed.revision) == (GATEWAY, 2, 3)
    assert current(await store.load_namespace(PROD)) == {
        GATEWAY: (3, TARGET_V3),
        GATEWAY_V2: (1, TARGET_V2),
    }
    assert later.previous_version == 2
    entries = await store.history(limit=3)
    assert [(e.revision, e.worker, e.version, e.version_label) for e in entries] == [
        (4, GATEWAY, 3, None),
        (3, GATEWAY, 2, "v2"),
        (3, GATEWAY_V2, 1, "v2"),
    ]
    assert [dict(e.metadata) for e in entries[1:]] == [{"commit": "abc"}] * 2


async def test_rollback_redeploys_the_previous_target_as_a_new_record(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD])
    await store.deploy(
        PROD, GATEWAY, TARGET_V1, actor="ci", metadata={"commit": "a1"}, version_label="v1"
    )
    await deploy(store, GATEWAY, TARGET_V2)

    rolled = await store.rollback(PROD, GATEWAY, actor="oncall")

    assert rolled == Deployment(
        PROD,
        GATEWAY,
        3,
        TARGET_V1,
        rolled.deployed_at,
        "oncall",
        rolled.metadata,
        version_label="v1",
        previous_version=None,
        revision=4,
    )
    assert dict(rolled.metadata) == {"commit": "a1"}
    assert await store.load_namespace(PROD) == (4, [rolled])
    (entry, *_) = await store.history()
    assert entry == AuditEntry(
        4, PROD, GATEWAY, "rollback", 3, TARGET_V1, "oncall", entry.at, {"commit": "a1"}, "v1", 1
    )


async def test_repeated_rollbacks_step_back_until_the_first_version(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD])
    for target in (TARGET_V1, TARGET_V2, TARGET_V3):
        await deploy(store, GATEWAY, target)

    first = await store.rollback(PROD, GATEWAY, actor="ci")
    second = await store.rollback(PROD, GATEWAY, actor="ci")
    with pytest.raises(NothingToRollBack, match="before its current version 5 to roll back"):
        await store.rollback(PROD, GATEWAY, actor="ci")

    assert [(d.version, d.target, d.previous_version) for d in (first, second)] == [
        (4, TARGET_V2, 1),
        (5, TARGET_V1, None),
    ]
    assert [(e.action, e.version, e.restored_version) for e in await store.history(limit=2)] == [
        ("rollback", 5, 1),
        ("rollback", 4, 2),
    ]


async def test_rollback_after_a_deploy_returns_to_what_ran_before_it(
    store: ContractStore,
) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store, GATEWAY, TARGET_V1)
    await deploy(store, GATEWAY, TARGET_V2)
    await store.rollback(PROD, GATEWAY, actor="ci")  # v3 runs TARGET_V1
    await deploy(store, GATEWAY, TARGET_V3)  # v4

    rolled = await store.rollback(PROD, GATEWAY, actor="ci")

    assert (rolled.version, rolled.target, rolled.previous_version) == (5, TARGET_V1, None)


async def test_an_undeploy_ends_the_rollback_chain(store: ContractStore) -> None:
    await store.ensure_namespaces([PROD])
    await deploy(store, GATEWAY, TARGET_V1)
    await store.undeploy(PROD, GATEWAY, actor="ci")
    redeployed = await deploy(store, GATEWAY, TARGET_V2)

    assert (redeployed.version, redeployed.previous_version) == (2, None)
    with pytest.raises(NothingToRollBack):
        await store.rollback(PROD, GATEWAY, actor="ci")


async def test_concurrent_rollbacks_and_deploys_never_share_a_version(
    backend: Backend, store: ContractStore
) -> None:
    other = await backend.open()
    await store.ensure_namespaces([PROD])
    for index in range(6):
        await deploy(store, GATEWAY, AppTarget(f"gateway.v{index}:app"))

    results = await asyncio.gather(
        *(store.rollback(PROD, GATEWAY, actor="ci") for _ in range(3)),
        *(deploy(other, GATEWAY, AppTarget(f"gateway.new{i}:app")) for i in range(3)),
        return_exceptions=True,
    )

    records = [r for r in results if isinstance(r, Deployment)]
    refusals = [r for r in results if not isinstance(r, Deployment)]
    assert all(isinstance(r, NothingToRollBack) for r in refusals)
    assert sorted(d.version for d in records) == list(range(7, 7 + len(records)))
    assert len(await store.history(worker=GATEWAY, limit=100)) == 6 + len(records)


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
    assert await store.revision() == 2
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


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.undeploy(PROD, GATEWAY, actor="ci"), id="undeploy"),
        pytest.param(lambda s: s.delete_namespace(EMPTY), id="delete-namespace"),
        pytest.param(lambda s: s.delete_namespace(PROD, force=True), id="delete-forced"),
    ],
)
async def test_removals_return_the_revision_that_recorded_them(
    store: ContractStore, operation: Operation
) -> None:
    await store.ensure_namespaces([PROD, EMPTY])
    await deploy(store)

    revision = await operation(store)

    assert revision == await store.revision() == 3


async def test_close_is_idempotent_and_later_calls_fail(store: ContractStore) -> None:
    await store.close()
    await store.close()

    with pytest.raises(StoreError, match="^registry store is closed: "):
        await store.revision()


# --- replicas ------------------------------------------------------------------------------


def fresh(replica: Replica) -> Replica:
    """The record with its times checked and set aside (they are the store's clock)."""
    assert TIMESTAMP.fullmatch(replica.started_at)
    assert TIMESTAMP.fullmatch(replica.last_seen)
    assert 0 <= replica.age < 2
    return replace(replica, started_at="", last_seen="", age=0.0)


async def test_a_heartbeat_registers_a_live_replica(store: ContractStore) -> None:
    await store.heartbeat(WEB_1, 7, INFO)

    (replica,) = await store.replicas(live_within=5.0)

    assert fresh(replica) == Replica(WEB_1, 7, "web-1", 4242, "", "", 0.0, INFO.details)
    assert replica.started_at == replica.last_seen


async def test_later_heartbeats_move_last_seen_keep_started_at_and_never_lower_the_revision(
    store: ContractStore,
) -> None:
    await store.heartbeat(WEB_1, 7, INFO)
    (first,) = await store.replicas(live_within=5.0)
    await asyncio.sleep(0.01)
    moved = ReplicaInfo("web-1", 4242, {"listen": "10.0.0.5:9000"})
    await store.heartbeat(WEB_1, 5, moved)  # a late, out-of-order report

    (later,) = await store.replicas(live_within=5.0)

    assert (later.revision, later.started_at, later.details) == (7, first.started_at, moved.details)
    assert later.last_seen > first.last_seen
    await store.heartbeat(WEB_1, 9, moved)
    assert [r.revision for r in await store.replicas(live_within=5.0)] == [9]


async def test_replicas_are_live_within_the_window_and_sorted_by_id(
    backend: Backend, store: ContractStore
) -> None:
    await store.heartbeat(WEB_2, 1, ReplicaInfo("web-2", 77))
    await store.heartbeat(WEB_1, 2, INFO)
    backend.backdate_replica(WEB_2, 10.0)

    live = await store.replicas(live_within=5.0)
    everyone = await store.replicas(live_within=60.0)

    assert [r.id for r in live] == [WEB_1]
    assert [(r.id, r.revision, r.host, r.pid, dict(r.details)) for r in everyone] == [
        (WEB_1, 2, "web-1", 4242, dict(INFO.details)),
        (WEB_2, 1, "web-2", 77, {}),
    ]
    assert 10.0 <= everyone[1].age < 12.0


async def test_a_replica_silent_past_the_retention_is_dropped_by_the_next_heartbeat(
    backend: Backend, store: ContractStore
) -> None:
    await store.heartbeat(WEB_2, 1, ReplicaInfo("web-2", 77))
    backend.backdate_replica(WEB_2, REPLICA_RETENTION + 5)
    assert [r.id for r in await store.replicas(live_within=2 * REPLICA_RETENTION)] == [WEB_2]

    await store.heartbeat(WEB_1, 2, INFO)

    assert [r.id for r in await store.replicas(live_within=2 * REPLICA_RETENTION)] == [WEB_1]


async def test_a_retired_replica_is_forgotten_and_retiring_twice_is_harmless(
    store: ContractStore,
) -> None:
    await store.heartbeat(WEB_1, 2, INFO)
    await store.heartbeat(WEB_2, 2, INFO)

    await store.retire(WEB_1)
    await store.retire(WEB_1)

    assert [r.id for r in await store.replicas(live_within=5.0)] == [WEB_2]


async def test_a_heartbeat_is_seen_by_another_store_object(backend: Backend) -> None:
    writer, reader = await backend.open(), await backend.open()

    await writer.heartbeat(WEB_1, 3, INFO)

    assert [(r.id, r.revision) for r in await reader.replicas(live_within=5.0)] == [(WEB_1, 3)]


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan")])
async def test_replicas_refuses_a_window_that_is_not_positive(
    store: ContractStore, window: float
) -> None:
    with pytest.raises(ValueError, match=r"^live_within must be > 0 seconds \(got "):
        await store.replicas(live_within=window)


# --- migration 2 keeps the data of a version 1 store ---------------------------------------

# A version 1 store as a dispatcher before labels and rollback left it: gateway deployed twice,
# auth deployed, undeployed and deployed again.
V1_ROWS = [
    (2, "gateway", "deploy", 1, '{"app": "gateway.v1:app"}'),
    (3, "gateway", "deploy", 2, '{"app": "gateway.v2:app"}'),
    (4, "auth", "deploy", 1, '{"app": "gateway.v1:app"}'),
    (5, "auth", "undeploy", 1, None),
    (6, "auth", "deploy", 2, '{"app": "gateway.v2:app"}'),
]
V1_WORKERS = [("gateway", 2), ("auth", 5)]  # (name, deployments.id), ids counted from 1


def write_v1_sqlite(path: Path) -> None:
    from dispatcher.store import sqlite as module

    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)")
        raw.executescript(module._MIGRATIONS[0])
        raw.execute("INSERT INTO meta VALUES ('schema_version', 1)")
        raw.execute("UPDATE meta SET value = 6 WHERE key = 'revision'")
        raw.execute("INSERT INTO namespaces VALUES ('prod', '2024-01-01T00:00:00.000000Z')")
        raw.executemany(
            "INSERT INTO deployments (revision, namespace, worker, action, version, target, "
            "actor, at) VALUES (?, 'prod', ?, ?, ?, ?, 'ci', '2024-01-01T00:00:00.000000Z')",
            V1_ROWS,
        )
        raw.executemany(
            "INSERT INTO workers VALUES ('prod', ?, ?)", [(n, i) for n, i in V1_WORKERS]
        )
    raw.close()


def write_v1_postgres(url: str) -> None:
    from dispatcher.store import postgres as module

    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
        raw.execute(module._MIGRATIONS[0])
        raw.execute("INSERT INTO meta VALUES ('schema_version', 1)")
        raw.execute("UPDATE meta SET value = 6 WHERE key = 'revision'")
        raw.execute("INSERT INTO namespaces (name) VALUES ('prod')")
        with raw.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO deployments (revision, namespace, worker, action, version, target, "
                "actor) VALUES (%s, 'prod', %s, %s, %s, %s, 'ci')",
                V1_ROWS,
            )
            cursor.executemany(
                "INSERT INTO workers VALUES ('prod', %s, %s)", [(n, i) for n, i in V1_WORKERS]
            )


@pytest.mark.parametrize("name", BACKENDS)
async def test_migration_2_keeps_a_version_1_store_and_can_roll_it_back(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    opened: Backend
    if name == "sqlite":
        write_v1_sqlite(tmp_path / "registry.db")
        opened = SQLiteBackend(tmp_path / "registry.db")
    else:
        url = request.getfixturevalue("pg_url")
        write_v1_postgres(url)
        opened = PostgresBackend(url)
    try:
        store = await opened.open()
        history = summary(await store.history())
        loaded = await store.load_namespace(PROD)
        rolled = await store.rollback(PROD, GATEWAY, actor="ops")
        with pytest.raises(NothingToRollBack):
            await store.rollback(PROD, AUTH, actor="ops")
        await store.heartbeat(WEB_1, 7, INFO)  # migration 3 added the replica table
        replicas = [(r.id, r.revision) for r in await store.replicas(live_within=5.0)]
    finally:
        await opened.close_all()

    assert history == [
        ("prod", "auth", "deploy", 2),
        ("prod", "auth", "undeploy", 1),
        ("prod", "auth", "deploy", 1),
        ("prod", "gateway", "deploy", 2),
        ("prod", "gateway", "deploy", 1),
    ]
    assert loaded is not None and loaded[0] == 6
    assert [(d.worker, d.version, d.previous_version, d.version_label) for d in loaded[1]] == [
        (AUTH, 2, None, None),
        (GATEWAY, 2, 1, None),
    ]
    assert (rolled.version, rolled.target, rolled.revision) == (3, TARGET_V1, 7)
    assert replicas == [(WEB_1, 7)]


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
            ("schema_version", SCHEMA_VERSION),
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
            "registry store schema version 99 is newer than this dispatcher supports (3): {path}",
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
            # The rest names what a worker spec needs, which workers.py words.
            "unreadable row: target '{\"bogus\": 1}': stored worker: ",
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


# --- open_store and URLs -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["redis://h/0", "mysql://u:p@h/db", "SQLITE:///x.db"])
async def test_open_store_refuses_an_unknown_scheme(url: str) -> None:
    scheme = url.split("://")[0]
    message = (
        f"DISPATCHER_STORE: unsupported store scheme {scheme!r} "
        "(supported: sqlite, postgresql, postgres)"
    )

    with pytest.raises(ConfigError) as raised:
        async with open_store(url):
            pass  # pragma: no cover - never opened

    assert str(raised.value) == message
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_store_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///registry.db", None),
        ("registry.db", None),
        ("postgresql://dispatcher@db.internal/registry", None),
        ("postgres://db.internal/registry?application_name=x", None),
        (
            "sqlite://registry.db",
            "DISPATCHER_STORE: expected sqlite:///path, got 'sqlite://registry.db'",
        ),
        (
            "postgresql://ci:s3cret@db.internal/registry?bogus=1",
            "DISPATCHER_STORE: not a valid PostgreSQL URL: "
            "postgresql://ci:****@db.internal/registry?bogus=1",
        ),
        (
            "postgres://db.internal/registry?password=s3cret&x=%zz",
            "DISPATCHER_STORE: not a valid PostgreSQL URL: "
            "postgres://db.internal/registry?password=****&x=%zz",
        ),
    ],
)
def test_check_store_url_validates_without_connecting(url: str, message: str | None) -> None:
    if message is None:
        check_store_url(url)
        return
    with pytest.raises(ConfigError) as raised:
        check_store_url(url)
    assert str(raised.value) == message


# --- PostgreSQL only -----------------------------------------------------------------------

Admin = psycopg.AsyncConnection[TupleRow]
UNREACHABLE = "postgresql://postgres:s3cret@127.0.0.1:1/test"


def where(url: str) -> str:
    """How the store's messages name the database of ``url``."""
    params = conninfo_to_dict(url)
    return (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )


def application_name(url: str) -> str:
    return str(conninfo_to_dict(url)["application_name"])


def with_password(url: str, password: str) -> str:
    """``url`` with a password (the test server trusts loopback, so any password works)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[Admin]:
    """A connection of the test's own, in the test's schema, that no test terminates."""
    async with await psycopg.AsyncConnection.connect(
        pg_url, autocommit=True, application_name="dispatcher-test-admin"
    ) as connection:
        yield connection


async def wait_for_backends(
    admin: Admin, name: str, condition: str = "TRUE", count: int = 1
) -> list[int]:
    """The pids of ``count`` backends named ``name`` that meet ``condition``, once they do."""
    deadline = time.monotonic() + 5
    while True:
        cursor = await admin.execute(
            f"SELECT pid FROM pg_stat_activity WHERE application_name = %s AND {condition}",
            (name,),
        )
        pids = [pid for (pid,) in await cursor.fetchall()]
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"{count} backend(s) {name} where {condition}: {pids}"
        await asyncio.sleep(0.02)


async def terminate(admin: Admin, pids: list[int]) -> None:
    """``pg_terminate_backend`` each pid and wait until its process is gone."""
    for pid in pids:
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 5
    while True:
        cursor = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        )
        if (await cursor.fetchone()) == (0,):
            return
        assert time.monotonic() < deadline, f"backends {pids} outlived pg_terminate_backend"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def revision_row_locked(pg_url: str) -> AsyncIterator[None]:
    """Another client holds the revision row lock, as a writer in another process would."""
    async with await psycopg.AsyncConnection.connect(
        pg_url, application_name="dispatcher-test-locker"
    ) as locker:
        await locker.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
        try:
            yield
        finally:
            await locker.rollback()


async def contents(store: PostgresStore) -> tuple[object, ...]:
    return (
        await store.revision(),
        await store.history(limit=100),
        await store.load_namespace(PROD),
        await store.list_namespaces(),
    )


async def test_postgres_open_creates_the_schema_and_masks_the_password(
    pg_url: str, admin: Admin
) -> None:
    password = conninfo_to_dict(pg_url).get("password") or "s3cret"
    url = with_password(pg_url, str(password))

    async with await PostgresStore.open(url) as store:
        await store.ensure_namespaces([PROD])
        await store.deploy(PROD, GATEWAY, TARGET_V1, actor="ci", metadata={"k": "v"})
        shown = repr(store)

    assert shown.startswith("PostgresStore(url='postgresql://postgres:****@")
    assert str(password) not in shown
    meta = await admin.execute("SELECT key, value FROM meta ORDER BY key")
    assert await meta.fetchall() == [("revision", 2), ("schema_version", SCHEMA_VERSION)]
    stored = await admin.execute("SELECT target, metadata FROM deployments")
    assert await stored.fetchall() == [({"app": "gateway.v1:app"}, {"k": "v"})]
    types = await admin.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'deployments' "
        "AND column_name IN ('target', 'metadata', 'at') ORDER BY column_name"
    )
    assert await types.fetchall() == [
        ("at", "timestamp with time zone"),
        ("metadata", "jsonb"),
        ("target", "jsonb"),
    ]


async def test_postgres_stores_opened_together_migrate_once(pg_url: str, admin: Admin) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(6)))
    try:
        await asyncio.gather(*(store.ensure_namespaces([PROD]) for store in stores))
        assert [await store.revision() for store in stores] == [1] * 6
    finally:
        for store in stores:
            await store.close()

    meta = await admin.execute("SELECT key, value FROM meta ORDER BY key")
    assert await meta.fetchall() == [("revision", 1), ("schema_version", SCHEMA_VERSION)]


async def test_postgres_refuses_a_newer_schema(pg_url: str, admin: Admin) -> None:
    await (await PostgresStore.open(pg_url)).close()
    await admin.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")

    with pytest.raises(StoreError) as raised:
        await PostgresStore.open(pg_url)

    assert str(raised.value) == (
        "registry store schema version 99 is newer than this dispatcher supports (3): "
        f"{where(pg_url)}"
    )


async def test_postgres_reports_an_unreachable_server_without_its_password() -> None:
    started = time.monotonic()

    with pytest.raises(StoreUnavailable) as raised:
        await PostgresStore.open(UNREACHABLE, connect_timeout=1)

    assert time.monotonic() - started < 1.5
    message = str(raised.value)
    assert message.startswith("registry store is unavailable: 127.0.0.1:1/test (connection ")
    assert "Connection refused" in message
    assert "s3cret" not in message
    assert "s3cret" not in str(raised.value.__cause__)


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never says a word; yields the port."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_postgres_gives_up_on_a_silent_server_within_the_connect_timeout() -> None:
    async with silent_server() as port:
        started = time.monotonic()

        with pytest.raises(StoreUnavailable) as raised:
            await PostgresStore.open(
                f"postgresql://postgres:s3cret@127.0.0.1:{port}/test", connect_timeout=0.5
            )

        assert time.monotonic() - started < 1.0
    assert str(raised.value) == (
        f"registry store is unavailable: 127.0.0.1:{port}/test (no answer within 0.5 s)"
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be > 0 seconds (got 0)"),
        ({"connect_timeout": -1.5}, "connect_timeout must be > 0 seconds (got -1.5)"),
        ({"lock_timeout": 0}, "lock_timeout must be > 0 seconds (got 0)"),
        ({"connect_timeout": float("nan")}, "connect_timeout must be > 0 seconds (got nan)"),
    ],
)
async def test_postgres_refuses_timeouts_that_are_not_positive(
    keywords: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        await PostgresStore.open(UNREACHABLE, **keywords)


async def test_postgres_replaces_a_connection_the_server_terminated(
    pg_url: str, admin: Admin
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.ensure_namespaces([PROD])
        await terminate(admin, await wait_for_backends(admin, application_name(pg_url)))

        assert await store.revision() == 1
        assert (await deploy(store)).version == 1
        assert await store.load_namespace(PROD) is not None


async def install_stall(admin: Admin) -> None:
    """Writing workers sleeps: a deploy stops after its other writes, holding its locks."""
    await admin.execute(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
    )
    await admin.execute(
        "CREATE TRIGGER stall AFTER INSERT OR UPDATE ON workers "
        "FOR EACH ROW EXECUTE FUNCTION stall()"
    )


async def stop_deploys(how: str, pg_url: str, admin: Admin, stack: AsyncExitStack) -> str:
    """Make the next deploy stop mid-way; returns how ``pg_stat_activity`` then shows it."""
    if how == "waiting-for-the-revision-lock":
        await stack.enter_async_context(revision_row_locked(pg_url))
        return "wait_event_type = 'Lock'"
    await install_stall(admin)
    stack.push_async_callback(admin.execute, "DROP TRIGGER stall ON workers")
    return "wait_event = 'PgSleep'"


@pytest.mark.parametrize(
    "how", ["waiting-for-the-revision-lock", "after-its-writes-holding-the-revision-lock"]
)
async def test_postgres_a_deploy_killed_mid_transaction_writes_nothing(
    pg_url: str, admin: Admin, how: str
) -> None:
    async with await PostgresStore.open(pg_url, lock_timeout=30) as store:
        await store.ensure_namespaces([PROD])
        await deploy(store)
        before = await contents(store)
        async with AsyncExitStack() as stack:
            condition = await stop_deploys(how, pg_url, admin, stack)
            deploying = asyncio.create_task(deploy(store, GATEWAY, TARGET_V2))
            pids = await wait_for_backends(admin, application_name(pg_url), condition)
            await terminate(admin, pids)
            with pytest.raises(StoreUnavailable) as raised:
                await deploying

        assert str(raised.value) == (
            f"registry store is unavailable: {where(pg_url)} "
            "(terminating connection due to administrator command)"
        )
        assert await contents(store) == before
        redeployed = await deploy(store, GATEWAY, TARGET_V2)
        assert (redeployed.version, await store.revision()) == (2, 3)


async def test_postgres_reports_a_held_revision_lock_and_recovers(pg_url: str) -> None:
    async with await PostgresStore.open(pg_url, lock_timeout=0.2) as store:
        await store.ensure_namespaces([PROD])
        async with revision_row_locked(pg_url):
            with pytest.raises(StoreUnavailable) as raised:
                await deploy(store)
            assert str(raised.value) == (
                f"registry store is locked (waited more than 0.2 s): {where(pg_url)}"
            )
            # Readers take no row locks: they go on while a writer holds the revision.
            assert await store.load_namespace(PROD) == (1, [])

        assert (await deploy(store)).version == 1
        assert await store.revision() == 2


async def test_postgres_reports_a_pool_with_no_free_connection(pg_url: str, admin: Admin) -> None:
    async with await PostgresStore.open(pg_url, connect_timeout=0.5, lock_timeout=30) as store:
        await store.ensure_namespaces([PROD])
        async with revision_row_locked(pg_url):
            waiting = [asyncio.create_task(deploy(store)) for _ in range(4)]
            await wait_for_backends(
                admin, application_name(pg_url), "wait_event_type = 'Lock'", count=4
            )
            with pytest.raises(StoreUnavailable) as raised:
                await store.revision()
        deployed = await asyncio.gather(*waiting)

    assert str(raised.value) == (
        f"registry store is unavailable: {where(pg_url)} (no free connection within 0.5 s)"
    )
    assert sorted(d.version for d in deployed) == [1, 2, 3, 4]


async def fail_inserts(admin: Admin, sqlstate: str, times: int) -> None:
    """The first ``times`` audit inserts fail with ``sqlstate``; a sequence counts attempts."""
    await admin.execute("CREATE SEQUENCE attempts")
    await admin.execute(
        "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF nextval('attempts') <= {times} THEN "
        f"RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '{sqlstate}'; END IF; "
        "RETURN NEW; END $$"
    )
    await admin.execute(
        "CREATE TRIGGER fail_insert BEFORE INSERT ON deployments "
        "FOR EACH ROW EXECUTE FUNCTION fail_insert()"
    )


async def attempts(admin: Admin) -> int:
    cursor = await admin.execute("SELECT last_value FROM attempts")
    (value,) = await _one_row(cursor)
    return int(value)


async def _one_row(cursor: psycopg.AsyncCursor[TupleRow]) -> TupleRow:
    row = await cursor.fetchone()
    assert row is not None
    return row


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
@pytest.mark.parametrize("failures", [1, 3])
async def test_postgres_retries_a_transaction_the_server_rolled_back(
    pg_url: str, admin: Admin, sqlstate: str, failures: int
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.ensure_namespaces([PROD])
        await fail_inserts(admin, sqlstate, failures)

        deployed = await deploy(store)

        assert (deployed.version, await store.revision()) == (1, 2)
        assert summary(await store.history()) == [("prod", "gateway", "deploy", 1)]
    assert await attempts(admin) == failures + 1


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_postgres_gives_up_after_three_retries(
    pg_url: str, admin: Admin, sqlstate: str
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.ensure_namespaces([PROD])
        before = await contents(store)
        await fail_inserts(admin, sqlstate, 99)

        with pytest.raises(StoreUnavailable) as raised:
            await deploy(store)

        assert str(raised.value) == (
            f"registry store is unavailable: {where(pg_url)} "
            "(deploy gave up after 4 attempts: simulated conflict)"
        )
        assert await contents(store) == before
    assert await attempts(admin) == 4


READS: Mapping[str, Operation] = {
    "load_namespace": lambda store: store.load_namespace(PROD),
    "history": lambda store: store.history(),
    "revision": lambda store: store.revision(),
}


@pytest.mark.parametrize(
    ("sql", "operation", "detail"),
    [
        (
            """UPDATE deployments SET target = '{"bogus": 1}'""",
            "load_namespace",
            "unreadable row: target {'bogus': 1}: stored worker: ",
        ),
        (
            "UPDATE deployments SET metadata = '[1]'",
            "load_namespace",
            "unreadable row: metadata [1]: expected an object of strings",
        ),
        (
            """UPDATE deployments SET target = '"nope"'""",
            "history",
            "unreadable row: target 'nope': expected a JSON object",
        ),
        (
            """UPDATE deployments SET metadata = '{"n": 1}'""",
            "history",
            "unreadable row: metadata {'n': 1}: expected an object of strings",
        ),
        ("DROP TABLE workers", "load_namespace", 'relation "workers" does not exist'),
        (
            "DELETE FROM meta WHERE key = 'revision'",
            "revision",
            "unreadable row: expected a row, got none",
        ),
    ],
)
async def test_postgres_maps_bad_rows_and_sql_errors_to_store_error(
    pg_url: str, admin: Admin, sql: str, operation: str, detail: str
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.ensure_namespaces([PROD])
        await deploy(store)
        await admin.execute(sql)

        with pytest.raises(StoreError) as raised:
            await READS[operation](store)

    assert type(raised.value) is StoreError
    assert str(raised.value).startswith(
        f"registry store {operation} failed: {where(pg_url)} ({detail}"
    )


async def test_postgres_reports_a_schema_it_cannot_create(pg_url: str) -> None:
    schema = application_name(pg_url)
    nowhere = pg_url.replace(f"search_path%3D{schema}", f"search_path%3D{schema}_missing")

    with pytest.raises(StoreError) as raised:
        await PostgresStore.open(nowhere)

    assert str(raised.value) == (
        f"registry store open failed: {where(pg_url)} (no schema has been selected to create in)"
    )


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_store_opens_a_postgres_url(pg_url: str, scheme: str) -> None:
    url = scheme + pg_url[pg_url.index("://") :]

    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await store.ensure_namespaces([PROD])

    with pytest.raises(StoreError, match="^registry store is closed: "):
        await store.revision()


# --- PostgreSQL: listen ---------------------------------------------------------------------


def listen_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dispatcher.store.postgres"]


async def test_postgres_listen_yields_another_stores_deploy_within_a_second(
    pg_url: str,
) -> None:
    async with (
        await PostgresStore.open(pg_url) as watcher,
        await PostgresStore.open(pg_url) as writer,
    ):
        await writer.ensure_namespaces([PROD])
        async with aclosing(watcher.listen()) as revisions:
            # First the revision current when listening began: nothing before it is missed.
            assert await asyncio.wait_for(anext(revisions), 1) == 1
            for expected in (2, 3):
                await deploy(writer)
                assert await asyncio.wait_for(anext(revisions), 1) == expected


async def test_postgres_listen_reconnects_and_yields_what_changed_meanwhile(
    pg_url: str, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.ensure_namespaces([PROD])
        async with aclosing(store.listen()) as revisions:
            assert await anext(revisions) == 1
            listener = f"{application_name(pg_url)}-listen"
            await terminate(admin, await wait_for_backends(admin, listener))
            await deploy(store)  # announced while nobody listens

            assert await asyncio.wait_for(anext(revisions), 2) == 2
            await deploy(store)
            assert await asyncio.wait_for(anext(revisions), 1) == 3

    # Whether the server's goodbye or the closed socket is read first varies.
    (warning,) = listen_warnings(caplog)
    assert warning.startswith(f"registry store {where(pg_url)}: listening failed (")
    assert warning.endswith("); reconnecting in 0.1 s")


class Proxy:
    """A loopback TCP proxy to the test server that can go down and come back on its port."""

    def __init__(self, target: str) -> None:
        params = conninfo_to_dict(target)
        self.host = str(params.get("host", "127.0.0.1"))
        self.target_port = int(params.get("port") or 5432)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a restarting server does."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.host, self.target_port
        )
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._copy(reader, upstream_writer),
            self._copy(upstream_reader, writer),
            return_exceptions=True,
        )

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_postgres_listen_retries_with_growing_pauses_until_the_server_is_back(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(pg_url)
    await proxy.start()
    proxied = pg_url.replace(urlsplit(pg_url).netloc, f"postgres:s3cret@127.0.0.1:{proxy.port}")
    async with (
        await PostgresStore.open(proxied) as store,
        await PostgresStore.open(pg_url) as writer,
    ):
        async with aclosing(store.listen()) as revisions:
            assert await anext(revisions) == 0
            await proxy.stop()
            following = asyncio.ensure_future(anext(revisions))
            await asyncio.sleep(0.5)  # attempts at about 0, 0.1, 0.3 s; the next at 0.7 s
            await writer.ensure_namespaces([PROD])
            await proxy.start()

            assert await asyncio.wait_for(following, 2) == 1
        await proxy.stop()

    messages = listen_warnings(caplog)
    pauses = [float(m.rsplit(" in ", 1)[1].removesuffix(" s")) for m in messages]
    assert pauses == [0.1, 0.2, 0.4]
    assert messages[0].startswith(f"registry store {where(proxied)}: listening failed")
    assert all("Connection refused" in m for m in messages[1:])
    assert not any("s3cret" in m for m in messages)


async def test_postgres_listen_skips_a_payload_that_is_not_a_revision(
    pg_url: str, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    async with await PostgresStore.open(pg_url) as store:
        async with aclosing(store.listen()) as revisions:
            assert await anext(revisions) == 0
            await admin.execute("SELECT pg_notify('dispatcher_registry', 'not a revision')")
            await store.ensure_namespaces([PROD])

            assert await asyncio.wait_for(anext(revisions), 1) == 1

    assert listen_warnings(caplog) == [
        "registry store: ignored a dispatcher_registry notification 'not a revision'"
    ]


async def test_postgres_listen_ends_when_the_store_closes(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url)
    async with aclosing(store.listen()) as revisions:
        assert await anext(revisions) == 0
        await store.close()

        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(revisions), 1)

    with pytest.raises(StoreError, match="^registry store is closed: "):
        await anext(store.listen())
