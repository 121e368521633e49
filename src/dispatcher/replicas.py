"""Replicas: every dispatcher process sharing a store records there the revision it has
applied (``Heartbeat``), and ``Replicas`` is the Deploy API's view of them all: apply a write
here at once, wait until every live replica has applied it, and readiness for ``GET /ready``.

Example::

    heartbeat = Heartbeat(store, new_replica_id(), info, revision=snapshot.revision)
    async with heartbeat:
        replicas = Replicas(store, heartbeat, watcher.refresh, lambda: dispatcher.snapshot)
        await replicas.apply_here()
        outcome = await replicas.converge(deployment.revision, timeout=2.0)
        outcome.converged, outcome.pending        # True, ()
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final

from dispatcher.errors import DispatcherError
from dispatcher.namespaces import Snapshot
from dispatcher.store import RegistryStore, Replica, ReplicaId, ReplicaInfo

logger = logging.getLogger("dispatcher.replicas")

HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds between two heartbeats of a replica whose revision did not move."""
LIVE_WITHIN: Final = 5.0
"""A replica the store has not seen for this many seconds is not live: nobody waits for it."""
CONVERGENCE_POLL: Final = 0.02
"""Seconds between two reads of the replica table while a write waits for convergence."""
SILENT_BEATS: Final = 3
"""The store counts as unreachable once no heartbeat succeeded for this many intervals."""
PROBE_TIMEOUT: Final = 1.0
"""The longest ``GET /ready`` waits for the store to list the replicas."""
RETIRE_TIMEOUT: Final = 1.0
"""The longest a stopping replica waits to remove its row (it ages out anyway)."""


def new_replica_id() -> ReplicaId:
    """``host:pid:random``: unique per process start, and readable in ``/ready``."""
    return ReplicaId(f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}")


def this_process(details: dict[str, str]) -> ReplicaInfo:
    """The ``ReplicaInfo`` of the running process."""
    return ReplicaInfo(socket.gethostname(), os.getpid(), details)


class Heartbeat:
    """Records this replica's applied revision in the store: at once when a snapshot is
    installed (``applied``), and every ``interval`` seconds otherwise. It also tells whether
    the store answered lately (``store_problem``), which ``/ready`` reports.
    """

    __slots__ = (
        "_store",
        "replica_id",
        "_info",
        "_revision",
        "_reported",
        "_interval",
        "_last_success",
        "_failure",
        "_wake",
        "_beating",
        "_task",
    )

    def __init__(
        self,
        store: RegistryStore,
        replica_id: ReplicaId,
        info: ReplicaInfo,
        *,
        revision: int,
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._store = store
        self.replica_id = replica_id
        self._info = info
        self._revision = revision
        self._reported = -1
        self._interval = interval
        self._last_success: float | None = None
        self._failure: str | None = None
        self._wake = asyncio.Event()
        self._beating = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Heartbeat {self.replica_id} revision={self._revision}>"

    @property
    def revision(self) -> int:
        """The revision this replica has applied (its snapshot's)."""
        return self._revision

    async def describe(self, info: ReplicaInfo) -> None:
        """Say more about this replica (its listeners, once bound), in a heartbeat now."""
        self._info = info
        try:
            await self.beat()
        except DispatcherError:
            pass  # logged; the next tick carries it

    def applied(self, revision: int) -> None:
        """A snapshot of ``revision`` was installed: report it now, not at the next tick."""
        self._revision = revision
        self._wake.set()

    async def beat(self) -> None:
        """Write one heartbeat now; ``StoreError`` when the store refuses it."""
        async with self._beating:
            revision = self._revision
            try:
                await self._store.heartbeat(self.replica_id, revision, self._info)
            except DispatcherError as exc:
                self._record_failure(str(exc))
                raise
            self._record_success(revision)

    def store_problem(self) -> str | None:
        """Why the store counts as unreachable, or ``None`` when the last heartbeat succeeded
        and is recent. A heartbeat that hangs makes the last success stale."""
        if self._failure is not None:
            return self._failure
        if self._last_success is None:
            return "no heartbeat recorded yet"
        silent = time.monotonic() - self._last_success
        if silent > SILENT_BEATS * self._interval:
            return f"no heartbeat recorded for {silent:.1f} s"
        return None

    async def __aenter__(self) -> Heartbeat:
        try:
            await self.beat()
        except DispatcherError:
            pass  # logged; the loop keeps trying
        self._task = asyncio.get_running_loop().create_task(self._follow())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._retire()

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            woken = self._wake.is_set()
            self._wake.clear()
            if woken and self._reported >= self._revision:
                continue  # the Deploy API already wrote this one (Replicas.apply_here)
            try:
                await self.beat()
            except DispatcherError:
                pass  # logged once per outage by _record_failure

    async def _retire(self) -> None:
        try:
            async with asyncio.timeout(RETIRE_TIMEOUT):
                await self._store.retire(self.replica_id)
        except (DispatcherError, TimeoutError) as exc:
            logger.info("replica %s not retired (it ages out): %s", self.replica_id, exc)

    def _record_success(self, revision: int) -> None:
        if self._failure is not None:
            logger.info("replica %s: heartbeats recorded again", self.replica_id)
        self._failure = None
        self._last_success = time.monotonic()
        self._reported = max(self._reported, revision)

    def _record_failure(self, reason: str) -> None:
        if self._failure is None:
            logger.warning(
                "replica %s: heartbeat failed, serving revision %d: %s",
                self.replica_id,
                self._revision,
                reason,
            )
        self._failure = reason


@dataclass(frozen=True, slots=True)
class Convergence:
    """Whether every live replica applied ``revision``; ``pending`` names those that had not
    when the wait ran out. ``problem`` says why the replicas could not be read, if so."""

    revision: int
    replicas: tuple[Replica, ...]
    pending: tuple[ReplicaId, ...] = ()
    problem: str | None = None

    @property
    def converged(self) -> bool:
        return self.problem is None and not self.pending


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``GET /ready`` answers: ready unless ``reason`` says otherwise."""

    replica: ReplicaId
    revision: int
    store_reachable: bool
    replicas: tuple[Replica, ...]
    reason: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.reason is None


class Replicas:
    """The Deploy API's view of the replicas sharing the store.

    ``refresh`` installs the store's latest snapshot in this process (the watcher's
    ``refresh``); ``snapshot`` returns the one being served.
    """

    __slots__ = ("_store", "heartbeat", "_refresh", "_snapshot", "_live_within", "_poll")

    def __init__(
        self,
        store: RegistryStore,
        heartbeat: Heartbeat,
        refresh: Callable[[], Awaitable[bool]],
        snapshot: Callable[[], Snapshot],
        *,
        live_within: float = LIVE_WITHIN,
        poll: float = CONVERGENCE_POLL,
    ) -> None:
        self._store = store
        self.heartbeat = heartbeat
        self._refresh = refresh
        self._snapshot = snapshot
        self._live_within = live_within
        self._poll = poll

    def __repr__(self) -> str:
        return f"<Replicas seen by {self.heartbeat.replica_id}>"

    async def apply_here(self) -> None:
        """Install the store's latest snapshot in this process and report it, without
        waiting for the next tick. A failure is logged: the write it follows stands."""
        try:
            await self._refresh()
            await self.heartbeat.beat()
        except DispatcherError as exc:
            logger.warning("a write could not be applied here at once: %s", exc)

    async def converge(self, revision: int, timeout: float) -> Convergence:
        """Wait up to ``timeout`` seconds until every live replica reports ``revision`` or
        later. The store failing meanwhile ends the wait as not converged, never as an error:
        the write it follows is committed either way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        live: list[Replica] = []
        problem: str | None = None
        while True:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), self._poll)):
                    live = await self._store.replicas(self._live_within)
                problem = None
            except (DispatcherError, TimeoutError) as exc:
                problem = str(exc) or "the store did not answer in time"
            pending = tuple(replica.id for replica in live if replica.revision < revision)
            if problem is None and not pending:
                return Convergence(revision, tuple(live))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Convergence(revision, tuple(live), pending, problem)
            await asyncio.sleep(min(self._poll, remaining))

    async def readiness(self) -> Readiness:
        """Ready when the store answers and the environment's namespace exists; the snapshot
        being served is reported either way."""
        snapshot = self._snapshot()
        problem = self.heartbeat.store_problem()
        live: list[Replica] = []
        if problem is None:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    live = await self._store.replicas(self._live_within)
            except (DispatcherError, TimeoutError) as exc:
                problem = str(exc) or f"no answer within {PROBE_TIMEOUT} s"
        ready = Readiness(
            self.heartbeat.replica_id, snapshot.revision, problem is None, tuple(live)
        )
        if problem is not None:
            reason = (
                f"the registry store is unavailable ({problem}); serving the last snapshot, "
                f"revision {snapshot.revision}"
            )
            return replace(ready, reason=reason)
        if snapshot.namespace is None:
            reason = (
                f'namespace "{snapshot.namespace_name}" does not exist in the registry store; '
                "every routed request is refused"
            )
            return replace(ready, reason=reason)
        return ready
