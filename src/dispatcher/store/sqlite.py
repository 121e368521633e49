"""``SQLiteStore``: the registry in one SQLite file (WAL), each write one transaction.

Example::

    async with await SQLiteStore.open(".dispatcher/registry.db") as store:
        await store.ensure_namespaces([NamespaceName("dotdo-production")])
        await store.deploy(
            NamespaceName("dotdo-production"), WorkerName("gateway"),
            AppTarget("gateway.app:app"), actor="ci",
        )

Several processes (each dispatcher process and the CLI) may open the same file: WAL lets
readers run beside the one writer, and writers queue on SQLite's busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any, Final, TypeVar

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
    SYSTEM_ACTOR,
    AuditAction,
    AuditEntry,
    Replica,
    ReplicaId,
    ReplicaInfo,
)
from dispatcher.types import NamespaceName, WorkerName
from dispatcher.workers import Deployment, Target, target_from_json

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


_BOOTSTRAP: Final = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)"

_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: namespaces, the append-only audit trail, and the current worker of each name.
    # deployments has no foreign key to namespaces on purpose: its rows outlive the namespace.
    """
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    CREATE TABLE namespaces (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        revision INTEGER NOT NULL,
        namespace TEXT NOT NULL,
        worker TEXT NOT NULL,
        action TEXT NOT NULL,
        version INTEGER,
        target TEXT,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX deployments_by_worker ON deployments (namespace, worker, version);
    CREATE TABLE workers (
        namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        PRIMARY KEY (namespace, name)
    );
    """,
    # 2: version labels and rollback. previous_version is the version a rollback returns to;
    # rows written before it get the version that was current when they were deployed (the
    # worker's row just before, unless that was an undeploy), so old deploys roll back too.
    """
    ALTER TABLE deployments ADD COLUMN version_label TEXT;
    ALTER TABLE deployments ADD COLUMN previous_version INTEGER;
    ALTER TABLE deployments ADD COLUMN restored_version INTEGER;
    UPDATE deployments SET previous_version = (
        SELECT CASE WHEN p.action = 'deploy' THEN p.version END FROM deployments AS p
        WHERE p.namespace = deployments.namespace AND p.worker = deployments.worker
        AND p.id < deployments.id ORDER BY p.id DESC LIMIT 1
    ) WHERE action = 'deploy';
    """,
    # 3: replica heartbeats. Times are text in _now()'s fixed-width form, so they compare
    # as strings; the clock is the machine's, which every process sharing the file shares.
    """
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        last_seen TEXT NOT NULL,
        started_at TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX replicas_by_last_seen ON replicas (last_seen);
    """,
)
"""Schema migrations, applied in order; ``schema_version`` counts how many have run."""


# Primary result codes (https://sqlite.org/rescode.html); the low byte of extended codes.
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

_CURRENT_COLUMNS: Final = (
    "w.name, d.version, d.target, d.at, d.actor, d.metadata, d.version_label, "
    "d.previous_version, d.revision"
)
_CURRENT_SELECT: Final = (
    f"SELECT {_CURRENT_COLUMNS} FROM workers AS w JOIN deployments AS d "
    "ON d.id = w.deployment_id WHERE w.namespace = ? ORDER BY w.name"
)
_CURRENT_ONE: Final = (
    "SELECT d.version, d.previous_version FROM workers AS w JOIN deployments AS d "
    "ON d.id = w.deployment_id WHERE w.namespace = ? AND w.name = ?"
)
# The version a rollback restores: versions are unique among deploy and rollback rows
# (an undeploy row repeats the version it removed).
_RESTORABLE: Final = (
    "SELECT version, target, metadata, version_label, previous_version FROM deployments "
    "WHERE namespace = ? AND worker = ? AND version = ? AND action IN ('deploy', 'rollback') "
    "ORDER BY id DESC LIMIT 1"
)
_AUDIT_COLUMNS: Final = (
    "revision, namespace, worker, action, version, target, actor, at, metadata, "
    "version_label, restored_version"
)
_INSERT_COLUMNS: Final = f"{_AUDIT_COLUMNS}, previous_version"


class SQLiteStore:
    """The ``RegistryStore`` on one SQLite file.

    One connection, used only from one worker thread the store owns, so blocking SQLite calls
    never run on the event loop and calls from one store object run one after the other.
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        connection: sqlite3.Connection,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._connection = connection
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 5.0) -> SQLiteStore:
        """Open (creating if needed) the file at ``path``, check it and bring its schema up."""
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds (got {busy_timeout})")
        timeout = float(busy_timeout)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _connect, path, timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, timeout, connection, executor)

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self._path!r})"

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def revision(self) -> int:
        return await self._run("revision", _read_revision)

    async def ensure_namespaces(self, names: Iterable[NamespaceName]) -> list[NamespaceName]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        return await self._write("ensure_namespaces", partial(_ensure_namespaces, names=wanted))

    async def list_namespaces(self) -> list[NamespaceName]:
        return await self._run("list_namespaces", _list_namespaces)

    async def delete_namespace(self, name: NamespaceName, *, force: bool = False) -> int:
        return await self._write(
            "delete_namespace", partial(_delete_namespace, name=name, force=force)
        )

    async def deploy(
        self,
        namespace: NamespaceName,
        worker: WorkerName,
        target: Target,
        *,
        actor: str,
        metadata: Mapping[str, str] | None = None,
        version_label: str | None = None,
        pinned: WorkerName | None = None,
    ) -> Deployment:
        spec = _DeploySpec(
            namespace, target, actor, MappingProxyType(dict(metadata or {})), version_label
        )
        return await self._write(
            "deploy", partial(_deploy, spec=spec, worker=worker, pinned=pinned)
        )

    async def rollback(
        self, namespace: NamespaceName, worker: WorkerName, *, actor: str
    ) -> Deployment:
        restore = partial(_rollback, namespace=namespace, worker=worker, actor=actor)
        return await self._write("rollback", restore)

    async def undeploy(self, namespace: NamespaceName, worker: WorkerName, *, actor: str) -> int:
        remove = partial(_undeploy, namespace=namespace, worker=worker, actor=actor)
        return await self._write("undeploy", remove)

    async def load_namespace(self, namespace: NamespaceName) -> tuple[int, list[Deployment]] | None:
        return await self._read("load_namespace", partial(_load_namespace, namespace=namespace))

    async def history(
        self,
        *,
        namespace: NamespaceName | None = None,
        worker: WorkerName | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """The audit trail, newest first, optionally for one namespace and/or worker name."""
        if limit < 1:
            # SQLite reads LIMIT -1 as "no limit": refuse rather than dump the whole trail.
            raise ValueError(f"limit must be at least 1 (got {limit})")
        query = partial(_history, namespace=namespace, worker=worker, limit=limit)
        return await self._run("history", query)

    async def heartbeat(self, replica_id: ReplicaId, revision: int, info: ReplicaInfo) -> None:
        await self._write(
            "heartbeat", partial(_heartbeat, replica_id=replica_id, revision=revision, info=info)
        )

    async def replicas(self, live_within: float) -> list[Replica]:
        if not live_within > 0:
            raise ValueError(f"live_within must be > 0 seconds (got {live_within})")
        return await self._read("replicas", partial(_replicas, live_within=live_within))

    async def retire(self, replica_id: ReplicaId) -> None:
        await self._write("retire", partial(_retire, replica_id=replica_id))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._guarded, "close", _close_connection)
        finally:
            self._executor.shutdown(wait=True)

    async def _write(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(operation, partial(_in_transaction, "BEGIN IMMEDIATE", work))

    async def _read(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(operation, partial(_in_transaction, "BEGIN", work))

    async def _run(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreError(f"registry store is closed: {self._path}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, operation, work)

    def _guarded(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs on the store's thread; sqlite3 errors and unreadable rows leave as StoreError."""
        try:
            return work(self._connection)
        except sqlite3.Error as exc:
            raise _translate(exc, operation, self._path, self._busy_timeout) from exc
        except _UnreadableRow as exc:
            raise StoreError(
                f"registry store {operation} failed: {self._path} (unreadable row: {exc})"
            ) from exc


@dataclass(frozen=True, slots=True)
class _AuditRow:
    """What an operation appends to the audit trail (the store adds revision and time)."""

    namespace: NamespaceName
    worker: WorkerName
    action: AuditAction
    version: int
    target: Target | None
    actor: str
    metadata: Mapping[str, str]
    version_label: str | None = None
    previous_version: int | None = None
    restored_version: int | None = None


@dataclass(frozen=True, slots=True)
class _DeploySpec:
    """What one deploy writes, for the worker and for its pinned twin alike."""

    namespace: NamespaceName
    target: Target
    actor: str
    metadata: Mapping[str, str]
    version_label: str | None


class _UnreadableRow(Exception):
    """A stored row does not decode; becomes a StoreError naming the operation and file."""


# --- opening -------------------------------------------------------------------------------


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    _create_parent_directory(path)
    try:
        # timeout= installs sqlite3_busy_timeout: writers wait this long for the lock.
        connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _translate(exc, "open", path, busy_timeout) from exc
    try:
        _configure(connection, path)
        _check_integrity(connection, path)
        _migrate(connection, path)
    except sqlite3.Error as exc:
        connection.close()
        raise _translate(exc, "open", path, busy_timeout) from exc
    except BaseException:
        connection.close()
        raise
    return connection


def _create_parent_directory(path: str) -> None:
    parent = os.path.dirname(path)
    if not parent:
        return
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the registry store directory {parent}: {exc.strerror}"
        ) from exc


def _configure(connection: sqlite3.Connection, path: str) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode != "wal":
        logger.warning("registry store %s runs in journal mode %s, not WAL", path, mode)
    # FULL: an acknowledged commit is on disk, so it survives a crash right after.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")


def _check_integrity(connection: sqlite3.Connection, path: str) -> None:
    problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StoreError(f"registry store is corrupt: {path} (quick_check: {problems[0]})")


def _migrate(connection: sqlite3.Connection, path: str) -> None:
    """Apply the pending migrations in one write transaction; no write lock if none is due."""
    if _schema_version(connection) == len(_MIGRATIONS):
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_BOOTSTRAP)
        # Read again under the write lock: another process may have migrated meanwhile.
        current = _schema_version(connection)
        _require_known_schema(current, path)
        for script in _MIGRATIONS[current:]:
            for statement in _statements(script):
                connection.execute(statement)
        connection.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (len(_MIGRATIONS),),
        )
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise


def _schema_version(connection: sqlite3.Connection) -> int:
    has_meta = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return 0
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def _require_known_schema(version: int, path: str) -> None:
    if version > len(_MIGRATIONS):
        raise StoreError(
            f"registry store schema version {version} is newer than this dispatcher supports "
            f"({len(_MIGRATIONS)}): {path}"
        )


def _statements(script: str) -> list[str]:
    """Split a script into statements; ``executescript`` would COMMIT our open transaction."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip() != ";":
                statements.append(pending.strip())
            pending = ""
    return statements


# --- transactions and errors ---------------------------------------------------------------


def _in_transaction(
    begin: str, work: Callable[[sqlite3.Connection], _T], connection: sqlite3.Connection
) -> _T:
    connection.execute(begin)
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    return result


def _roll_back(connection: sqlite3.Connection) -> None:
    if not connection.in_transaction:
        return
    try:
        connection.execute("ROLLBACK")
    except sqlite3.Error:
        # The original error is the one worth reporting; SQLite discards the transaction anyway.
        logger.exception("registry store: ROLLBACK failed")


def _translate(exc: sqlite3.Error, operation: str, path: str, busy_timeout: float) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreUnavailable(
            f"registry store is locked (busy for more than {busy_timeout} s): {path}"
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreError(f"registry store is corrupt or not a SQLite database: {path} ({exc})")
    if code in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL):
        # The disk refused the write (full, read-only, an I/O error): SQLite has rolled the
        # transaction back, and the same write may succeed once the disk does (ROBUSTNESS.md S4).
        return StoreUnavailable(f"registry store cannot write: {path} ({exc})")
    return StoreError(f"registry store {operation} failed: {path} ({exc})")


def _close_connection(connection: sqlite3.Connection) -> None:
    connection.close()


# --- the operations, each run inside one transaction on the store's thread -----------------


def _now() -> str:
    return _format_time(datetime.now(UTC))


def _format_time(moment: datetime) -> str:
    return moment.strftime(_TIME_FORMAT)


def _read_revision(connection: sqlite3.Connection) -> int:
    (revision,) = connection.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    return int(revision)


def _bump_revision(connection: sqlite3.Connection) -> int:
    connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
    return _read_revision(connection)


def _has_namespace(connection: sqlite3.Connection, name: NamespaceName) -> bool:
    row = connection.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone()
    return row is not None


def _require_namespace(connection: sqlite3.Connection, name: NamespaceName) -> None:
    if not _has_namespace(connection, name):
        raise NamespaceNotFound(f'namespace "{name}" does not exist in the registry store')


def _ensure_namespaces(
    connection: sqlite3.Connection, *, names: list[NamespaceName]
) -> list[NamespaceName]:
    at = _now()
    created: list[NamespaceName] = []
    for name in names:
        cursor = connection.execute(
            "INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)", (name, at)
        )
        if cursor.rowcount:
            created.append(name)
    if created:
        _bump_revision(connection)
    return created


def _list_namespaces(connection: sqlite3.Connection) -> list[NamespaceName]:
    rows = connection.execute("SELECT name FROM namespaces ORDER BY name").fetchall()
    return [NamespaceName(name) for (name,) in rows]


def _append_audit(connection: sqlite3.Connection, revision: int, row: _AuditRow) -> tuple[int, str]:
    """Append one audit row at ``revision``; returns its id and timestamp."""
    at = _now()
    target = None if row.target is None else json.dumps(row.target.to_json(), sort_keys=True)
    cursor = connection.execute(
        f"INSERT INTO deployments ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            revision,
            row.namespace,
            row.worker,
            row.action,
            row.version,
            target,
            row.actor,
            at,
            json.dumps(dict(row.metadata), sort_keys=True),
            row.version_label,
            row.restored_version,
            row.previous_version,
        ),
    )
    return int(cursor.lastrowid or 0), at


def _deploy(
    connection: sqlite3.Connection,
    *,
    spec: _DeploySpec,
    worker: WorkerName,
    pinned: WorkerName | None,
) -> Deployment:
    _require_namespace(connection, spec.namespace)
    revision = _bump_revision(connection)
    if pinned is not None:
        _record_deploy(connection, revision, spec, pinned)
    return _record_deploy(connection, revision, spec, worker)


def _record_deploy(
    connection: sqlite3.Connection, revision: int, spec: _DeploySpec, worker: WorkerName
) -> Deployment:
    """Append a deploy of ``worker`` at ``revision`` and make it current."""
    current = connection.execute(_CURRENT_ONE, (spec.namespace, worker)).fetchone()
    version = _next_version(connection, spec.namespace, worker)
    row = _AuditRow(
        spec.namespace,
        worker,
        "deploy",
        version,
        spec.target,
        spec.actor,
        spec.metadata,
        spec.version_label,
        previous_version=None if current is None else int(current[0]),
    )
    return _make_current(connection, revision, row)


def _next_version(
    connection: sqlite3.Connection, namespace: NamespaceName, worker: WorkerName
) -> int:
    # The highest version ever recorded, undeploys included: versions are never reused.
    (version,) = connection.execute(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM deployments WHERE namespace = ? AND worker = ?",
        (namespace, worker),
    ).fetchone()
    return int(version)


def _make_current(connection: sqlite3.Connection, revision: int, row: _AuditRow) -> Deployment:
    assert row.target is not None  # deploys and rollbacks always have one
    row_id, at = _append_audit(connection, revision, row)
    connection.execute(
        "INSERT INTO workers (namespace, name, deployment_id) VALUES (?, ?, ?) "
        "ON CONFLICT (namespace, name) DO UPDATE SET deployment_id = excluded.deployment_id",
        (row.namespace, row.worker, row_id),
    )
    return Deployment(
        row.namespace,
        row.worker,
        row.version,
        row.target,
        at,
        row.actor,
        row.metadata,
        row.version_label,
        row.previous_version,
        revision,
    )


def _rollback(
    connection: sqlite3.Connection, *, namespace: NamespaceName, worker: WorkerName, actor: str
) -> Deployment:
    _require_namespace(connection, namespace)
    current = connection.execute(_CURRENT_ONE, (namespace, worker)).fetchone()
    if current is None:
        raise WorkerNotFound(f'worker "{worker}" is not deployed in namespace "{namespace}"')
    version, previous = int(current[0]), current[1]
    if previous is None:
        raise NothingToRollBack(_nothing_to_roll_back(namespace, worker, version))
    restored = connection.execute(_RESTORABLE, (namespace, worker, previous)).fetchone()
    if restored is None:
        raise _UnreadableRow(f"version {previous} of {namespace}/{worker} is not recorded")
    restored_version, target, metadata, label, before = restored
    revision = _bump_revision(connection)
    row = _AuditRow(
        namespace,
        worker,
        "rollback",
        _next_version(connection, namespace, worker),
        _decode_target(target),
        actor,
        _decode_metadata(metadata),
        label,
        previous_version=before,
        restored_version=int(restored_version),
    )
    return _make_current(connection, revision, row)


def _nothing_to_roll_back(namespace: NamespaceName, worker: WorkerName, version: int) -> str:
    return (
        f'worker "{worker}" in namespace "{namespace}" has no version before its current '
        f"version {version} to roll back to"
    )


def _undeploy(
    connection: sqlite3.Connection,
    *,
    namespace: NamespaceName,
    worker: WorkerName,
    actor: str,
) -> int:
    _require_namespace(connection, namespace)
    row = connection.execute(
        "SELECT d.version FROM workers AS w JOIN deployments AS d ON d.id = w.deployment_id "
        "WHERE w.namespace = ? AND w.name = ?",
        (namespace, worker),
    ).fetchone()
    if row is None:
        raise WorkerNotFound(f'worker "{worker}" is not deployed in namespace "{namespace}"')
    revision = _bump_revision(connection)
    audit = _AuditRow(namespace, worker, "undeploy", int(row[0]), None, actor, {})
    _append_audit(connection, revision, audit)
    connection.execute("DELETE FROM workers WHERE namespace = ? AND name = ?", (namespace, worker))
    return revision


def _delete_namespace(connection: sqlite3.Connection, *, name: NamespaceName, force: bool) -> int:
    _require_namespace(connection, name)
    current = connection.execute(
        "SELECT w.name, d.version FROM workers AS w JOIN deployments AS d "
        "ON d.id = w.deployment_id WHERE w.namespace = ? ORDER BY w.name",
        (name,),
    ).fetchall()
    if current and not force:
        workers = ", ".join(worker for worker, _ in current)
        raise NamespaceNotEmpty(
            f'namespace "{name}" still holds {len(current)} worker(s): {workers}; '
            "undeploy them first or delete with force"
        )
    revision = _bump_revision(connection)
    reason = {"reason": "namespace deleted"}
    for worker, version in current:
        audit = _AuditRow(name, worker, "undeploy", int(version), None, SYSTEM_ACTOR, reason)
        _append_audit(connection, revision, audit)
    connection.execute("DELETE FROM workers WHERE namespace = ?", (name,))
    connection.execute("DELETE FROM namespaces WHERE name = ?", (name,))
    return revision


def _load_namespace(
    connection: sqlite3.Connection, *, namespace: NamespaceName
) -> tuple[int, list[Deployment]] | None:
    if not _has_namespace(connection, namespace):
        return None
    revision = _read_revision(connection)
    rows = connection.execute(_CURRENT_SELECT, (namespace,)).fetchall()
    return revision, [_deployment_from_row(namespace, row) for row in rows]


def _history(
    connection: sqlite3.Connection,
    *,
    namespace: NamespaceName | None,
    worker: WorkerName | None,
    limit: int,
) -> list[AuditEntry]:
    conditions = ["1 = 1"]
    parameters: list[object] = []
    if namespace is not None:
        conditions.append("namespace = ?")
        parameters.append(namespace)
    if worker is not None:
        conditions.append("worker = ?")
        parameters.append(worker)
    rows = connection.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM deployments WHERE {' AND '.join(conditions)} "
        "ORDER BY id DESC LIMIT ?",
        (*parameters, limit),
    ).fetchall()
    return [_audit_entry_from_row(row) for row in rows]


def _heartbeat(
    connection: sqlite3.Connection, *, replica_id: ReplicaId, revision: int, info: ReplicaInfo
) -> None:
    now = datetime.now(UTC)
    seen = _format_time(now)
    connection.execute(
        "INSERT INTO replicas (id, revision, last_seen, started_at, host, pid, info) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "revision = MAX(replicas.revision, excluded.revision), last_seen = excluded.last_seen, "
        "host = excluded.host, pid = excluded.pid, info = excluded.info",
        (
            replica_id,
            revision,
            seen,
            seen,
            info.host,
            info.pid,
            json.dumps(dict(info.details), sort_keys=True),
        ),
    )
    forgotten = _format_time(now - timedelta(seconds=REPLICA_RETENTION))
    connection.execute("DELETE FROM replicas WHERE last_seen < ?", (forgotten,))


def _replicas(connection: sqlite3.Connection, *, live_within: float) -> list[Replica]:
    now = datetime.now(UTC)
    cutoff = _format_time(now - timedelta(seconds=live_within))
    rows = connection.execute(
        "SELECT id, revision, host, pid, started_at, last_seen, info FROM replicas "
        "WHERE last_seen >= ? ORDER BY id",
        (cutoff,),
    ).fetchall()
    return [_replica_from_row(row, now) for row in rows]


def _retire(connection: sqlite3.Connection, *, replica_id: ReplicaId) -> None:
    connection.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))


# --- decoding rows -------------------------------------------------------------------------


def _deployment_from_row(namespace: NamespaceName, row: tuple[Any, ...]) -> Deployment:
    worker, version, target, at, actor, metadata, label, previous, revision = row
    return Deployment(
        namespace=namespace,
        worker=WorkerName(worker),
        version=int(version),
        target=_decode_target(target),
        deployed_at=at,
        actor=actor,
        metadata=_decode_metadata(metadata),
        version_label=label,
        previous_version=None if previous is None else int(previous),
        revision=int(revision),
    )


def _audit_entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    revision, namespace, worker, action, version, target, actor, at, metadata, label, restored = row
    return AuditEntry(
        revision=int(revision),
        namespace=NamespaceName(namespace),
        worker=WorkerName(worker),
        action=_decode_action(action),
        version=None if version is None else int(version),
        target=None if target is None else _decode_target(target),
        actor=actor,
        at=at,
        metadata=_decode_metadata(metadata),
        version_label=label,
        restored_version=None if restored is None else int(restored),
    )


def _replica_from_row(row: tuple[Any, ...], now: datetime) -> Replica:
    replica_id, revision, host, pid, started_at, last_seen, info = row
    age = (now - _parse_time(last_seen)).total_seconds()
    return Replica(
        id=ReplicaId(replica_id),
        revision=int(revision),
        host=host,
        pid=int(pid),
        started_at=started_at,
        last_seen=last_seen,
        age=max(0.0, age),
        details=_decode_metadata(info),
    )


def _parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise _UnreadableRow(f"time {text!r}: {exc}") from exc


def _decode_action(value: object) -> AuditAction:
    if value == "deploy":
        return "deploy"
    if value == "undeploy":
        return "undeploy"
    if value == "rollback":
        return "rollback"
    raise _UnreadableRow(f"unknown audit action {value!r}")


def _decode_target(text: str | None) -> Target:
    try:
        data = json.loads(text or "null")
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return target_from_json(data)
    except (ConfigError, ValueError) as exc:
        raise _UnreadableRow(f"target {text!r}: {exc}") from exc


def _decode_metadata(text: str) -> Mapping[str, str]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _UnreadableRow(f"metadata {text!r}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _UnreadableRow(f"metadata {text!r}: expected an object of strings")
    return MappingProxyType(data)
