"""``PostgresStore``: the registry in PostgreSQL, each write one transaction, announced by NOTIFY.

Example::

    async with await PostgresStore.open("postgresql://dispatcher@db.internal/registry") as store:
        await store.ensure_namespaces([NamespaceName("dotdo-production")])
        await store.deploy(
            NamespaceName("dotdo-production"), WorkerName("gateway"),
            AppTarget("gateway.app:app"), actor="ci",
        )
        async for revision in store.listen():
            ...  # every committed change, as it commits

Any number of dispatcher processes and CLIs may share one database: every write first takes the
row lock on the revision counter, so writers queue in one order and each commit is one revision.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any, Final, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
Connection = psycopg.AsyncConnection[TupleRow]
_Work = Callable[[Connection], Awaitable[_T]]

CHANNEL: Final = "dispatcher_registry"
"""The NOTIFY channel; the payload is the committed revision as decimal text."""

_MIGRATION_LOCK: Final = 0x6469737061746368
"""``pg_advisory_xact_lock`` key ("dispatch" in ASCII) that serializes schema migrations."""

_POOL_MIN_SIZE: Final = 1
_POOL_MAX_SIZE: Final = 4
_SERIALIZATION_RETRIES: Final = 3
_RETRY_PAUSE: Final = 0.01
# Class 40 "transaction rollback": the transaction did nothing and may simply run again.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})
_LOCK_NOT_AVAILABLE: Final = "55P03"

_LISTEN_POLL: Final = 0.5
"""How often an idle ``listen()`` looks whether its store was closed, in seconds."""
_RECONNECT_FIRST_DELAY: Final = 0.1
_RECONNECT_MAX_DELAY: Final = 5.0
# A LISTEN connection only reads; TCP keepalives are what notice a peer that vanished silently.
_LISTENER_KEEPALIVES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
    }
)

_BOOTSTRAP: Final = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)"

_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: namespaces, the append-only audit trail, and the current worker of each name.
    # deployments has no foreign key to namespaces on purpose: its rows outlive the namespace.
    # Names sort as bytes (COLLATE "C"), as they do in SQLite, whatever the database locale.
    """
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    CREATE TABLE namespaces (
        name TEXT COLLATE "C" PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE deployments (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        revision BIGINT NOT NULL,
        namespace TEXT COLLATE "C" NOT NULL,
        worker TEXT COLLATE "C" NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('deploy', 'undeploy')),
        version INTEGER,
        target JSONB,
        actor TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        metadata JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX deployments_by_worker ON deployments (namespace, worker, version);
    CREATE TABLE workers (
        namespace TEXT COLLATE "C" NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
        name TEXT COLLATE "C" NOT NULL,
        deployment_id BIGINT NOT NULL REFERENCES deployments (id),
        PRIMARY KEY (namespace, name)
    );
    """,
    # 2: version labels and rollback (see SQLiteStore's migration 2 for the backfill's rule).
    """
    ALTER TABLE deployments
        ADD COLUMN version_label TEXT,
        ADD COLUMN previous_version INTEGER,
        ADD COLUMN restored_version INTEGER,
        DROP CONSTRAINT deployments_action_check,
        ADD CONSTRAINT deployments_action_check
            CHECK (action IN ('deploy', 'undeploy', 'rollback'));
    UPDATE deployments AS d SET previous_version = (
        SELECT CASE WHEN p.action = 'deploy' THEN p.version END FROM deployments AS p
        WHERE p.namespace = d.namespace AND p.worker = d.worker AND p.id < d.id
        ORDER BY p.id DESC LIMIT 1
    ) WHERE d.action = 'deploy';
    """,
    # 3: replica heartbeats, timed by the database's clock so no two machines' clocks meet.
    """
    CREATE TABLE replicas (
        id TEXT COLLATE "C" PRIMARY KEY,
        revision BIGINT NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        info JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX replicas_by_last_seen ON replicas (last_seen);
    """,
)
"""Schema migrations, applied in order; ``schema_version`` counts how many have run."""

# One statement, so the revision and the rows come from one snapshot without a transaction.
_LOAD_NAMESPACE: Final = (
    "SELECT m.value, w.name, d.version, d.target, d.at, d.actor, d.metadata, d.version_label, "
    "d.previous_version, d.revision "
    "FROM namespaces AS n JOIN meta AS m ON m.key = 'revision' "
    "LEFT JOIN workers AS w ON w.namespace = n.name "
    "LEFT JOIN deployments AS d ON d.id = w.deployment_id "
    "WHERE n.name = %s ORDER BY w.name"
)
_CURRENT_ONE: Final = (
    "SELECT d.version, d.previous_version FROM workers AS w JOIN deployments AS d "
    "ON d.id = w.deployment_id WHERE w.namespace = %s AND w.name = %s"
)
# Versions are unique among deploy and rollback rows (an undeploy repeats the one it removed).
_RESTORABLE: Final = (
    "SELECT version, target, metadata, version_label, previous_version FROM deployments "
    "WHERE namespace = %s AND worker = %s AND version = %s "
    "AND action IN ('deploy', 'rollback') ORDER BY id DESC LIMIT 1"
)
_AUDIT_COLUMNS: Final = (
    "revision, namespace, worker, action, version, target, actor, at, metadata, "
    "version_label, restored_version"
)

_URL_PASSWORD: Final = re.compile(r"^(\w+://[^:@/?#]*):[^@]*@")
_PARAMETER_PASSWORD: Final = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")
_MASK: Final = "****"


@dataclass(frozen=True, slots=True)
class _Database:
    """Where and how the store connects; the raw URL (with its password) never prints."""

    url: str = field(repr=False)
    password: str = field(repr=False)
    parameters: frozenset[str]
    where: str
    masked_url: str
    application_name: str
    connect_timeout: float
    lock_timeout: float

    @classmethod
    def from_url(cls, url: str, connect_timeout: float, lock_timeout: float) -> _Database:
        params = _parse_url(url)
        masked = mask_url(url)
        password = str(params.get("password") or "")
        host = str(params.get("host") or "localhost")
        where = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
        return cls(
            url=url,
            password=password,
            parameters=frozenset(params),
            where=where,
            masked_url=masked,
            application_name=str(params.get("application_name") or "dispatcher"),
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
        )

    def scrub(self, text: str) -> str:
        """``text`` with the password masked, should a server or driver message echo it."""
        return text.replace(self.password, _MASK) if self.password else text

    def describe(self, exc: BaseException) -> str:
        """The first line of an error message, password masked."""
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return self.scrub(lines[0].strip())

    def connect_arguments(self, application_name: str) -> dict[str, Any]:
        # libpq counts connect_timeout in whole seconds, 2 at least; open() also bounds it exactly.
        return {
            "autocommit": True,
            "application_name": application_name,
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
        }

    def unavailable(self, detail: str) -> StoreUnavailable:
        return StoreUnavailable(f"registry store is unavailable: {self.where} ({detail})")

    def translate(self, exc: psycopg.Error, operation: str) -> StoreError:
        if isinstance(exc, PoolTimeout):
            return self.unavailable(f"no free connection within {self.connect_timeout} s")
        if exc.sqlstate == _LOCK_NOT_AVAILABLE:
            return StoreUnavailable(
                f"registry store is locked (waited more than {self.lock_timeout} s): {self.where}"
            )
        if isinstance(exc, psycopg.OperationalError):
            return self.unavailable(self.describe(exc))
        return StoreError(f"registry store {operation} failed: {self.where} ({self.describe(exc)})")


def check_url(url: str) -> None:
    """``ConfigError`` unless libpq can parse ``url``; connects to nothing."""
    _parse_url(url)


def _parse_url(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.Error as exc:
        # The parser's message may quote the password back: name only the masked URL.
        raise ConfigError(f"DISPATCHER_STORE: not a valid PostgreSQL URL: {mask_url(url)}") from exc


def mask_url(url: str) -> str:
    return _PARAMETER_PASSWORD.sub(rf"\1{_MASK}", _URL_PASSWORD.sub(rf"\1:{_MASK}@", url))


class PostgresStore:
    """The ``RegistryStore`` on a PostgreSQL database, through a small connection pool.

    Each write runs in one transaction that bumps the revision first (``UPDATE meta ...
    RETURNING``): the row lock queues writers from every process, and the ``NOTIFY`` it sends
    is delivered when the transaction commits.
    """

    def __init__(self, database: _Database, pool: AsyncConnectionPool[Connection]) -> None:
        self._database = database
        self._pool = pool
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, connect_timeout: float = 5.0, lock_timeout: float = 5.0
    ) -> PostgresStore:
        """Connect, create or migrate the schema, and start the pool.

        ``connect_timeout`` bounds each connection attempt and each wait for a free pooled
        connection; ``lock_timeout`` bounds each wait for a row lock held by another writer.
        Both end in ``StoreUnavailable``.
        """
        _require_positive("connect_timeout", connect_timeout)
        _require_positive("lock_timeout", lock_timeout)
        database = _Database.from_url(url, float(connect_timeout), float(lock_timeout))
        connection = await _connect(database, database.application_name)
        try:
            await _configure(connection, lock_timeout=database.lock_timeout)
            await _migrate(connection, database.where)
        except psycopg.Error as exc:
            raise database.translate(exc, "open") from exc
        finally:
            await connection.close()
        return cls(database, await _open_pool(database))

    def __repr__(self) -> str:
        return f"PostgresStore(url={self._database.masked_url!r})"

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def revision(self) -> int:
        return await self._read("revision", _read_revision)

    async def ensure_namespaces(self, names: Iterable[NamespaceName]) -> list[NamespaceName]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        return await self._write("ensure_namespaces", partial(_ensure_namespaces, names=wanted))

    async def list_namespaces(self) -> list[NamespaceName]:
        return await self._read("list_namespaces", _list_namespaces)

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
            raise ValueError(f"limit must be at least 1 (got {limit})")
        query = partial(_history, namespace=namespace, worker=worker, limit=limit)
        return await self._read("history", query)

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

    async def listen(self) -> AsyncGenerator[int, None]:
        """Revisions as they commit, from any process, until the store is closed.

        Each time its connection is (re)established it first yields the current revision, so
        a change committed while it was disconnected (or before it started) is never missed.
        Connection errors are logged and retried with a growing pause; they never end it.
        After ``close()`` it ends within ``_LISTEN_POLL`` seconds, or after a pending pause.
        A yielded number is a hint to re-read: another store in the same database (another
        schema) announces on the same channel.
        """
        self._require_open()
        delay = _RECONNECT_FIRST_DELAY
        while not self._closed:
            try:
                async with await self._connect_listener() as connection:
                    yield await self._current_revision(connection)
                    delay = _RECONNECT_FIRST_DELAY
                    async with aclosing(self._notifications(connection)) as revisions:
                        async for revision in revisions:
                            yield revision
            except (psycopg.Error, StoreUnavailable) as exc:
                if self._closed:
                    return
                logger.warning(
                    "registry store %s: listening failed (%s); reconnecting in %.1f s",
                    self._database.where,
                    self._database.describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def _connect_listener(self) -> Connection:
        connection = await _connect(
            self._database, f"{self._database.application_name}-listen", _LISTENER_KEEPALIVES
        )
        try:
            await connection.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _current_revision(self, connection: Connection) -> int:
        try:
            return await _read_revision(connection)
        except _UnreadableRow as exc:
            raise StoreError(
                f"registry store listen failed: {self._database.where} (unreadable row: {exc})"
            ) from exc

    async def _notifications(self, connection: Connection) -> AsyncGenerator[int, None]:
        while not self._closed:
            # Notifications arriving between two polls wait in psycopg's backlog.
            async with aclosing(connection.notifies(timeout=_LISTEN_POLL)) as notifies:
                async for notify in notifies:
                    revision = _parse_revision(notify.payload)
                    if revision is not None:
                        yield revision

    async def _write(self, operation: str, work: _Work[_T]) -> _T:
        return await self._run(operation, work, transaction=True)

    async def _read(self, operation: str, work: _Work[_T]) -> _T:
        # Every read is one statement: atomic on its own, no BEGIN/COMMIT round trips.
        return await self._run(operation, work, transaction=False)

    async def _run(self, operation: str, work: _Work[_T], *, transaction: bool) -> _T:
        self._require_open()
        attempts = 1 + _SERIALIZATION_RETRIES
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(work, transaction=transaction)
            except psycopg.Error as exc:
                if exc.sqlstate not in _RETRYABLE_SQLSTATES:
                    raise self._database.translate(exc, operation) from exc
                if attempt == attempts:
                    detail = f"{operation} gave up after {attempts} attempts: "
                    raise self._database.unavailable(detail + self._database.describe(exc)) from exc
                logger.info(
                    "registry store %s: %s retried (%s)",
                    self._database.where,
                    operation,
                    self._database.describe(exc),
                )
                await asyncio.sleep(_RETRY_PAUSE * attempt)
            except _UnreadableRow as exc:
                raise StoreError(
                    f"registry store {operation} failed: {self._database.where} "
                    f"(unreadable row: {exc})"
                ) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, work: _Work[_T], *, transaction: bool) -> _T:
        async with self._pool.connection() as connection:
            if not transaction:
                return await work(connection)
            async with connection.transaction():
                return await work(connection)

    def _require_open(self) -> None:
        if self._closed:
            raise StoreError(f"registry store is closed: {self._database.where}")


@dataclass(frozen=True, slots=True)
class _AuditRow:
    """What an operation appends to the audit trail (the database adds id and time)."""

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
    """A stored row does not decode; becomes a StoreError naming the operation and database."""


# --- opening -------------------------------------------------------------------------------


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds (got {value})")


async def _connect(
    database: _Database, application_name: str, defaults: Mapping[str, str] | None = None
) -> Connection:
    """One connection outside the pool; ``defaults`` fill in what the URL does not set."""
    arguments = database.connect_arguments(application_name)
    arguments.update((k, v) for k, v in (defaults or {}).items() if k not in database.parameters)
    try:
        async with asyncio.timeout(database.connect_timeout):
            return await psycopg.AsyncConnection.connect(database.url, **arguments)
    except TimeoutError as exc:
        raise database.unavailable(f"no answer within {database.connect_timeout} s") from exc
    except psycopg.Error as exc:
        raise database.translate(exc, "connect") from exc


async def _configure(connection: Connection, *, lock_timeout: float) -> None:
    milliseconds = max(1, round(lock_timeout * 1000))
    await connection.execute("SELECT set_config('lock_timeout', %s, false)", (f"{milliseconds}ms",))


async def _open_pool(database: _Database) -> AsyncConnectionPool[Connection]:
    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
        database.url,
        kwargs=database.connect_arguments(database.application_name),
        min_size=_POOL_MIN_SIZE,
        max_size=_POOL_MAX_SIZE,
        open=False,
        configure=partial(_configure, lock_timeout=database.lock_timeout),
        # A connection the server dropped while idle (restart, pg_terminate_backend) is
        # replaced when it is handed out, not discovered by the caller's query.
        check=AsyncConnectionPool.check_connection,
        name=f"dispatcher-registry {database.where}",
        timeout=database.connect_timeout,
    )
    try:
        await pool.open(wait=True, timeout=database.connect_timeout)
    except PoolTimeout as exc:
        await pool.close()
        raise database.unavailable(
            f"the pool got no connection within {database.connect_timeout} s"
        ) from exc
    return pool


async def _migrate(connection: Connection, where: str) -> None:
    """Apply the pending migrations in one transaction; no lock at all if none is due."""
    if await _schema_version(connection) == len(_MIGRATIONS):
        return
    async with connection.transaction():
        # Dispatchers starting together queue here; each re-reads the version under the lock.
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await connection.execute(_BOOTSTRAP)
        current = await _schema_version(connection)
        _require_known_schema(current, where)
        for script in _MIGRATIONS[current:]:
            await connection.execute(script)
        await connection.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (len(_MIGRATIONS),),
        )


async def _schema_version(connection: Connection) -> int:
    cursor = await connection.execute("SELECT to_regclass('meta') IS NOT NULL")
    if not (await _one(cursor))[0]:
        return 0
    cursor = await connection.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


def _require_known_schema(version: int, where: str) -> None:
    if version > len(_MIGRATIONS):
        raise StoreError(
            f"registry store schema version {version} is newer than this dispatcher supports "
            f"({len(_MIGRATIONS)}): {where}"
        )


def _parse_revision(payload: str) -> int | None:
    try:
        return int(payload)
    except ValueError:
        logger.warning("registry store: ignored a %s notification %r", CHANNEL, payload)
        return None


# --- the operations, each on one pooled connection (writes inside one transaction) ---------


async def _one(cursor: psycopg.AsyncCursor[TupleRow]) -> TupleRow:
    row = await cursor.fetchone()
    if row is None:
        raise _UnreadableRow("expected a row, got none")
    return row


async def _read_revision(connection: Connection) -> int:
    cursor = await connection.execute("SELECT value FROM meta WHERE key = 'revision'")
    return int((await _one(cursor))[0])


async def _bump_revision(connection: Connection) -> int:
    """Count one more revision and announce it on commit; the row lock queues all writers."""
    cursor = await connection.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"
    )
    revision = int((await _one(cursor))[0])
    await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))
    return revision


async def _require_namespace(connection: Connection, name: NamespaceName) -> None:
    cursor = await connection.execute("SELECT 1 FROM namespaces WHERE name = %s", (name,))
    if await cursor.fetchone() is None:
        raise NamespaceNotFound(f'namespace "{name}" does not exist in the registry store')


async def _ensure_namespaces(
    connection: Connection, *, names: list[NamespaceName]
) -> list[NamespaceName]:
    # Queue behind other writers first, as every write does, and bump only if one was new.
    await connection.execute("SELECT 1 FROM meta WHERE key = 'revision' FOR UPDATE")
    cursor = await connection.execute(
        "INSERT INTO namespaces (name) SELECT unnest(%s::text[]) "
        "ON CONFLICT (name) DO NOTHING RETURNING name",
        (names,),
    )
    created = sorted(NamespaceName(name) for (name,) in await cursor.fetchall())
    if created:
        await _bump_revision(connection)
    return created


async def _list_namespaces(connection: Connection) -> list[NamespaceName]:
    cursor = await connection.execute("SELECT name FROM namespaces ORDER BY name")
    return [NamespaceName(name) for (name,) in await cursor.fetchall()]


async def _append_audit(connection: Connection, revision: int, row: _AuditRow) -> tuple[int, str]:
    """Append one audit row at ``revision``; returns its id and timestamp."""
    target = None if row.target is None else Jsonb(row.target.to_json())
    cursor = await connection.execute(
        "INSERT INTO deployments (revision, namespace, worker, action, version, target, actor, "
        "metadata, version_label, previous_version, restored_version) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, at",
        (
            revision,
            row.namespace,
            row.worker,
            row.action,
            row.version,
            target,
            row.actor,
            Jsonb(dict(row.metadata)),
            row.version_label,
            row.previous_version,
            row.restored_version,
        ),
    )
    row_id, at = await _one(cursor)
    return int(row_id), _format_time(at)


async def _deploy(
    connection: Connection, *, spec: _DeploySpec, worker: WorkerName, pinned: WorkerName | None
) -> Deployment:
    revision = await _bump_revision(connection)
    await _require_namespace(connection, spec.namespace)
    if pinned is not None:
        await _record_deploy(connection, revision, spec, pinned)
    return await _record_deploy(connection, revision, spec, worker)


async def _record_deploy(
    connection: Connection, revision: int, spec: _DeploySpec, worker: WorkerName
) -> Deployment:
    """Append a deploy of ``worker`` at ``revision`` and make it current."""
    # Read after the revision lock, so the last writer's rows are visible (READ COMMITTED).
    cursor = await connection.execute(_CURRENT_ONE, (spec.namespace, worker))
    current = await cursor.fetchone()
    row = _AuditRow(
        spec.namespace,
        worker,
        "deploy",
        await _next_version(connection, spec.namespace, worker),
        spec.target,
        spec.actor,
        spec.metadata,
        spec.version_label,
        previous_version=None if current is None else int(current[0]),
    )
    return await _make_current(connection, revision, row)


async def _next_version(
    connection: Connection, namespace: NamespaceName, worker: WorkerName
) -> int:
    # The highest version ever recorded, undeploys included: versions are never reused.
    cursor = await connection.execute(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM deployments "
        "WHERE namespace = %s AND worker = %s",
        (namespace, worker),
    )
    return int((await _one(cursor))[0])


async def _make_current(connection: Connection, revision: int, row: _AuditRow) -> Deployment:
    assert row.target is not None  # deploys and rollbacks always have one
    row_id, at = await _append_audit(connection, revision, row)
    await connection.execute(
        "INSERT INTO workers (namespace, name, deployment_id) VALUES (%s, %s, %s) "
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


async def _rollback(
    connection: Connection, *, namespace: NamespaceName, worker: WorkerName, actor: str
) -> Deployment:
    revision = await _bump_revision(connection)
    await _require_namespace(connection, namespace)
    cursor = await connection.execute(_CURRENT_ONE, (namespace, worker))
    current = await cursor.fetchone()
    if current is None:
        raise WorkerNotFound(f'worker "{worker}" is not deployed in namespace "{namespace}"')
    version, previous = int(current[0]), current[1]
    if previous is None:
        raise NothingToRollBack(
            f'worker "{worker}" in namespace "{namespace}" has no version before its current '
            f"version {version} to roll back to"
        )
    cursor = await connection.execute(_RESTORABLE, (namespace, worker, previous))
    restored_version, target, metadata, label, before = await _one(cursor)
    row = _AuditRow(
        namespace,
        worker,
        "rollback",
        await _next_version(connection, namespace, worker),
        _decode_target(target),
        actor,
        _decode_metadata(metadata),
        label,
        previous_version=before,
        restored_version=int(restored_version),
    )
    return await _make_current(connection, revision, row)


async def _undeploy(
    connection: Connection, *, namespace: NamespaceName, worker: WorkerName, actor: str
) -> int:
    revision = await _bump_revision(connection)
    await _require_namespace(connection, namespace)
    cursor = await connection.execute(
        "SELECT d.version FROM workers AS w JOIN deployments AS d ON d.id = w.deployment_id "
        "WHERE w.namespace = %s AND w.name = %s",
        (namespace, worker),
    )
    row = await cursor.fetchone()
    if row is None:
        raise WorkerNotFound(f'worker "{worker}" is not deployed in namespace "{namespace}"')
    audit = _AuditRow(namespace, worker, "undeploy", int(row[0]), None, actor, {})
    await _append_audit(connection, revision, audit)
    await connection.execute(
        "DELETE FROM workers WHERE namespace = %s AND name = %s", (namespace, worker)
    )
    return revision


async def _delete_namespace(connection: Connection, *, name: NamespaceName, force: bool) -> int:
    revision = await _bump_revision(connection)
    await _require_namespace(connection, name)
    cursor = await connection.execute(
        "SELECT w.name, d.version FROM workers AS w JOIN deployments AS d "
        "ON d.id = w.deployment_id WHERE w.namespace = %s ORDER BY w.name",
        (name,),
    )
    current = await cursor.fetchall()
    if current and not force:
        workers = ", ".join(worker for worker, _ in current)
        raise NamespaceNotEmpty(
            f'namespace "{name}" still holds {len(current)} worker(s): {workers}; '
            "undeploy them first or delete with force"
        )
    reason = {"reason": "namespace deleted"}
    for worker, version in current:
        audit = _AuditRow(name, worker, "undeploy", int(version), None, SYSTEM_ACTOR, reason)
        await _append_audit(connection, revision, audit)
    # ON DELETE CASCADE removes the namespace's rows in workers.
    await connection.execute("DELETE FROM namespaces WHERE name = %s", (name,))
    return revision


async def _load_namespace(
    connection: Connection, *, namespace: NamespaceName
) -> tuple[int, list[Deployment]] | None:
    cursor = await connection.execute(_LOAD_NAMESPACE, (namespace,))
    rows = await cursor.fetchall()
    if not rows:
        return None
    # An empty namespace is one row whose worker columns are NULL (the LEFT JOIN).
    deployments = [_deployment_from_row(namespace, row[1:]) for row in rows if row[1] is not None]
    return int(rows[0][0]), deployments


async def _history(
    connection: Connection,
    *,
    namespace: NamespaceName | None,
    worker: WorkerName | None,
    limit: int,
) -> list[AuditEntry]:
    conditions = ["TRUE"]
    parameters: list[object] = []
    if namespace is not None:
        conditions.append("namespace = %s")
        parameters.append(namespace)
    if worker is not None:
        conditions.append("worker = %s")
        parameters.append(worker)
    cursor = await connection.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM deployments WHERE {' AND '.join(conditions)} "
        "ORDER BY id DESC LIMIT %s",
        (*parameters, limit),
    )
    return [_audit_entry_from_row(row) for row in await cursor.fetchall()]


async def _heartbeat(
    connection: Connection, *, replica_id: ReplicaId, revision: int, info: ReplicaInfo
) -> None:
    # No revision lock and no NOTIFY: a heartbeat never waits behind a deploy, nor wakes anyone.
    # statement_timestamp(), not clock_timestamp(): one instant for both columns of a new row.
    await connection.execute(
        "INSERT INTO replicas (id, revision, host, pid, info, last_seen, started_at) "
        "VALUES (%s, %s, %s, %s, %s, statement_timestamp(), statement_timestamp()) "
        "ON CONFLICT (id) DO UPDATE SET revision = GREATEST(replicas.revision, excluded.revision), "
        "last_seen = excluded.last_seen, host = excluded.host, pid = excluded.pid, "
        "info = excluded.info",
        (replica_id, revision, info.host, info.pid, Jsonb(dict(info.details))),
    )
    await connection.execute(
        "DELETE FROM replicas WHERE last_seen < clock_timestamp() - make_interval(secs => %s)",
        (REPLICA_RETENTION,),
    )


async def _replicas(connection: Connection, *, live_within: float) -> list[Replica]:
    cursor = await connection.execute(
        "SELECT id, revision, host, pid, started_at, last_seen, "
        "EXTRACT(EPOCH FROM clock_timestamp() - last_seen)::float8, info FROM replicas "
        "WHERE last_seen >= clock_timestamp() - make_interval(secs => %s) ORDER BY id",
        (live_within,),
    )
    return [_replica_from_row(row) for row in await cursor.fetchall()]


async def _retire(connection: Connection, *, replica_id: ReplicaId) -> None:
    await connection.execute("DELETE FROM replicas WHERE id = %s", (replica_id,))


# --- decoding rows -------------------------------------------------------------------------


def _format_time(value: datetime) -> str:
    """The same text ``SQLiteStore`` stores: UTC, microseconds, a ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _deployment_from_row(namespace: NamespaceName, row: tuple[Any, ...]) -> Deployment:
    worker, version, target, at, actor, metadata, label, previous, revision = row
    return Deployment(
        namespace=namespace,
        worker=WorkerName(worker),
        version=int(version),
        target=_decode_target(target),
        deployed_at=_format_time(at),
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
        at=_format_time(at),
        metadata=_decode_metadata(metadata),
        version_label=label,
        restored_version=None if restored is None else int(restored),
    )


def _replica_from_row(row: tuple[Any, ...]) -> Replica:
    replica_id, revision, host, pid, started_at, last_seen, age, info = row
    return Replica(
        id=ReplicaId(replica_id),
        revision=int(revision),
        host=host,
        pid=int(pid),
        started_at=_format_time(started_at),
        last_seen=_format_time(last_seen),
        age=max(0.0, float(age)),
        details=_decode_metadata(info),
    )


def _decode_action(value: object) -> AuditAction:
    if value == "deploy":
        return "deploy"
    if value == "undeploy":
        return "undeploy"
    if value == "rollback":
        return "rollback"
    # The column's CHECK constraint admits nothing else; this keeps the type closed.
    raise _UnreadableRow(f"unknown audit action {value!r}")  # pragma: no cover


def _decode_target(data: object) -> Target:
    if not isinstance(data, dict):
        raise _UnreadableRow(f"target {data!r}: expected a JSON object")
    try:
        return target_from_json(data)
    except ConfigError as exc:
        raise _UnreadableRow(f"target {data!r}: {exc}") from exc


def _decode_metadata(data: object) -> Mapping[str, str]:
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _UnreadableRow(f"metadata {data!r}: expected an object of strings")
    return MappingProxyType(data)
