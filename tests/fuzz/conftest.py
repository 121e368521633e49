"""The fuzz suite's harness: hypothesis profiles with a bounded budget, and ``LoopThread``,
which runs one real dispatcher (and its recording upstreams) per test module on a uvloop in
a background thread, so that every hypothesis example reuses it.

Profiles (``DISPATCHER_FUZZ=<name>``; the default is ``ci``):

* ``ci``: the normal test run. A few seconds per target (``max_examples`` sized on the
  measured cost of one example), no deadline (one example is a socket round trip to a real
  server, whose time says nothing about correctness).
* ``long``: the same targets with fifty times the examples, for a run by hand::

      DISPATCHER_FUZZ=long .venv/bin/pytest tests/fuzz -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import uvloop
from hypothesis import HealthCheck, settings

_T = TypeVar("_T")
_R = TypeVar("_R")

PROFILE_VARIABLE: Final = "DISPATCHER_FUZZ"
START_TIMEOUT: Final = 30.0
CALL_TIMEOUT: Final = 30.0

settings.register_profile(
    "fuzz-ci",
    max_examples=100,
    deadline=None,
    # The dispatcher is shared by every example on purpose (one per module): the fixture is
    # module-scoped, and a slow example is the server's time, not the data's.
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("fuzz-long", settings.get_profile("fuzz-ci"), max_examples=5000)


def fuzz_settings(ci_examples: int) -> settings:
    """The settings of one fuzz target: ``ci_examples`` under the ``ci`` profile (sized to a
    few seconds), fifty times that under ``long``."""
    profile = os.environ.get(PROFILE_VARIABLE, "ci")
    if profile not in ("ci", "long"):
        raise ValueError(f"{PROFILE_VARIABLE} must be ci or long (got {profile!r})")
    examples = ci_examples if profile == "ci" else ci_examples * 50
    return settings(settings.get_profile(f"fuzz-{profile}"), max_examples=examples)


class LoopThread(Generic[_T]):
    """``async with factory() as value`` held open on its own uvloop in a daemon thread.

    ``with LoopThread(factory) as value:`` gives ``value`` to synchronous code (a hypothesis
    test); ``call(coroutine)`` runs a coroutine on that loop and returns its result.
    """

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[_T]]) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-loop", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._value: _T | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> _T:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"the fuzz stack did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=CALL_TIMEOUT)
        if self._error is not None:
            raise self._error

    def call(self, coroutine: Coroutine[Any, Any, _R], timeout: float = CALL_TIMEOUT) -> _R:
        assert self._loop is not None, "LoopThread is not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _run(self) -> None:
        try:
            uvloop.run(self._serve())
        except BaseException as exc:  # handed to the test thread by __enter__ / __exit__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self._factory() as value:
            self._value = value
            self._ready.set()
            await self._stop.wait()
