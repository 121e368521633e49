"""``dispatcher serve --processes N``: N serving processes on one port, one supervisor.

The supervisor (the process the operator started) reserves the port, starts N copies of
``dispatcher serve`` with ``--serving-only``, and keeps the admin listener: the Deploy API,
``/ready`` and a ``/metrics`` that sums every process. Each serving process binds the same
port with ``SO_REUSEPORT`` (the kernel spreads new connections across them), follows the
registry like any replica, and publishes its metrics to a shared directory twice a second.

A serving process that dies is started again (with a growing pause if it keeps dying at
once); its counters are kept, so the group's totals never go backwards. SIGTERM and SIGINT
are passed on and waited for (each process drains its connections); SIGHUP is passed on
after the supervisor checked that the new configuration is valid.

Example::

    group = ProcessGroup(command, count=4, metrics_dir=directory)
    async with group:
        ...  # the admin listener's /metrics renders group.samples()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from dispatcher.metrics import ProcessSample

logger = logging.getLogger("dispatcher.group")

PUBLISH_SECONDS: Final = 0.5
RESTART_PAUSE: Final = 0.5
RESTART_PAUSE_MAX: Final = 10.0
READY_WITHIN: Final = 60.0
"""How long a reload waits for a process still starting before giving up on it."""
QUICK_DEATH: Final = 2.0
"""A process that dies sooner than this after its start doubles the pause before the next."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a ``SO_REUSEPORT`` socket: it fixes the port (port 0 picks
    one) and keeps it ours between restarts; only the serving processes accept on it."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class ProcessGroup:
    """Starts ``count`` serving processes running ``command`` and keeps them running."""

    def __init__(self, command: Sequence[str], *, count: int, metrics_dir: str) -> None:
        self._command = list(command)
        self._count = count
        self._directory = Path(metrics_dir)
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._is_stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def __aenter__(self) -> ProcessGroup:
        loop = asyncio.get_running_loop()
        for slot in range(self._count):
            await self._spawn(slot)
            self._watchers.append(loop.create_task(self._keep_running(slot)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every process, wait up to ``grace`` s for their drains, then SIGKILL."""
        self._is_stopping = True
        for task in (*self._watchers, *self._pending):
            task.cancel()
        self.signal(signal.SIGTERM)
        running = [p for p in self._processes.values() if p.returncode is None]
        if running:
            _, late = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in running], timeout=grace + 5
            )
            for process in running:
                if process.returncode is None:
                    logger.error("process %d did not stop in time; killing it", process.pid)
                    process.kill()
                    await process.wait()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def signal(self, sig: signal.Signals) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    def reload(self) -> None:
        """Pass a reload on. A process still starting may not handle SIGHUP yet (its default
        action ends it): it gets the signal once it has published its first metrics, which
        it does only after its handler is installed."""
        loop = asyncio.get_running_loop()
        for process in self._processes.values():
            if process.returncode is not None:
                continue
            if self._is_ready(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)
            else:
                task = loop.create_task(self._reload_when_ready(process))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    def _is_ready(self, pid: int) -> bool:
        return (self._directory / f"{pid}.json").exists()

    async def _reload_when_ready(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while process.returncode is None and time.monotonic() < deadline:
            if self._is_ready(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)
                return
            await asyncio.sleep(0.05)

    def samples(self) -> list[ProcessSample]:
        """The last published metrics of every process, the dead ones' counters included."""
        samples: list[ProcessSample] = []
        for path in sorted(self._directory.glob("*.json")):
            try:
                sample: ProcessSample = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # being replaced right now: the next scrape has it
            if path.name.startswith("dead-"):
                sample.pop("gauges", None)  # its counters count; its gauges are gone
            samples.append(sample)
        return samples

    async def _spawn(self, slot: int) -> None:
        process = await asyncio.create_subprocess_exec(*self._command)
        self._processes[slot] = process
        logger.info("serving process %d started (slot %d)", process.pid, slot)

    async def _keep_running(self, slot: int) -> None:
        pause = RESTART_PAUSE
        while True:
            process = self._processes[slot]
            started = time.monotonic()
            code = await process.wait()
            if self._is_stopping:
                return
            self._retire(process.pid)
            logger.error(
                "serving process %d exited (%s); starting another", process.pid, _exit(code)
            )
            pause = pause * 2 if time.monotonic() - started < QUICK_DEATH else RESTART_PAUSE
            pause = min(pause, RESTART_PAUSE_MAX)
            await asyncio.sleep(pause)
            if self._is_stopping:
                return
            await self._spawn(slot)

    def _retire(self, pid: int) -> None:
        live = self._directory / f"{pid}.json"
        with contextlib.suppress(FileNotFoundError):
            live.rename(self._directory / f"dead-{pid}.json")


PR_SET_PDEATHSIG: Final = 1


def die_with_supervisor() -> None:
    """A member is told SIGTERM (and drains) when its supervisor dies, even by SIGKILL:
    no orphan keeps the port. Linux's ``prctl(PR_SET_PDEATHSIG)``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning(
            "cannot ask to be stopped with the supervisor: %s", os.strerror(ctypes.get_errno())
        )
    if os.getppid() == 1:  # the supervisor died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def _exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


async def publish_samples(sample: Callable[[], ProcessSample], directory: str) -> None:
    """A serving process's side: write its metrics where the supervisor reads them, until
    cancelled (then once more, so the last requests are counted)."""
    path = Path(directory) / f"{os.getpid()}.json"
    try:
        while True:
            _write_atomically(path, sample())
            await asyncio.sleep(PUBLISH_SECONDS)
    finally:
        _write_atomically(path, sample())


def _write_atomically(path: Path, sample: ProcessSample) -> None:
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(sample))
    os.replace(scratch, path)  # a reader sees the old file or the new one, never half
