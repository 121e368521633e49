"""Load generators for the soak benchmarks, on asyncio streams (raw HTTP/1.1, no library).

* ``closed_loop``: ``connections`` clients, each sending its next request when the last one
  is answered (keep-alive; a new connection after ``connection: close`` or an error).
* ``open_loop``: ``rate`` requests per second spread over ``connections`` clients, each
  request starting on schedule whatever the previous one did.
* ``slowloris``: connections that dribble a request head one byte at a time and reconnect
  when the server closes them.

Every request is recorded with when it was written, whether its connection was fresh, and
how it ended (``Outcome``), so a scenario can count failures by its own definition (the
SIGTERM scenario counts those the server had accepted).

Example::

    report = await closed_loop(Target(port, "db.do", "/v1/items?id=1", expected), 8, 5.0)
    report.failed, report.p99_ms
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

import uvloop

READ_TIMEOUT: Final = 10.0
CONNECT_TIMEOUT: Final = 5.0

# How a request ended. OK is a complete 2xx with the expected body.
OK: Final = "ok"
REFUSED: Final = "connect refused"
CLOSED_BEFORE_ANSWER: Final = "closed before any byte of the answer"
TRUNCATED: Final = "answer cut short"
WRONG_BODY: Final = "unexpected body"
TIMEOUT: Final = "no answer in time"


@dataclass(frozen=True, slots=True)
class Target:
    """What every request asks for, and the body a correct answer carries."""

    port: int
    host: str
    path: str
    expected_body: bytes

    def request(self) -> bytes:
        return (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was written, on what kind of connection, and how it ended."""

    written_at: float
    fresh_connection: bool
    result: str
    status: int = 0
    latency: float = 0.0
    got_bytes: bool = False
    """Whether any byte of an answer arrived (the server read the request)."""


@dataclass(slots=True)
class LoadReport:
    """Every request's ``Outcome``, in the order they ended."""

    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.result == OK)

    @property
    def failed(self) -> int:
        return self.total - self.ok

    def failures(self, keep: Callable[[Outcome], bool] = lambda o: True) -> Counter[str]:
        return Counter(_label(o) for o in self.outcomes if o.result != OK and keep(o))

    @property
    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes if o.status)

    @property
    def p99_ms(self) -> float:
        latencies = sorted(o.latency for o in self.outcomes if o.result == OK)
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000

    @property
    def rps(self) -> float:
        return self.total / max(1e-9, self.ended - self.started)


def _label(outcome: Outcome) -> str:
    return f"status {outcome.status}" if outcome.result == "status" else outcome.result


class _Client:
    """One keep-alive connection, reopened when needed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> Outcome:
        fresh = self.writer is None
        if fresh:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.target.port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                return Outcome(time.monotonic(), True, REFUSED)
        assert self.reader is not None and self.writer is not None
        written_at = time.monotonic()
        self.writer.write(request)
        outcome = await self._read(written_at, fresh)
        if outcome.result != OK:
            await self.close()  # whatever is left on it cannot be trusted
        return outcome

    async def _read(self, written_at: float, fresh: bool) -> Outcome:
        assert self.reader is not None
        got = False
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await self.reader.readuntil(b"\r\n\r\n")
                got = True
                status, length, closes = _parse_head(head)
                body = await self.reader.readexactly(length)
        except TimeoutError:
            return Outcome(written_at, fresh, TIMEOUT, got_bytes=got)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
            partial = bool(getattr(exc, "partial", b""))
            result = TRUNCATED if got or partial else CLOSED_BEFORE_ANSWER
            return Outcome(written_at, fresh, result, got_bytes=got or partial)
        latency = time.monotonic() - written_at
        if closes:
            await self.close()
        if not 200 <= status < 300:
            return Outcome(written_at, fresh, "status", status, latency, True)
        if body != self.target.expected_body:
            return Outcome(written_at, fresh, WRONG_BODY, status, latency, True)
        return Outcome(written_at, fresh, OK, status, latency, True)

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length (0 when absent) and whether the server closes after it."""
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, closes = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and b"close" in value:
            closes = True
    return status, length, closes


async def closed_loop(
    target: Target,
    connections: int,
    duration: float,
    *,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """``connections`` clients sending back to back for ``duration`` s (or until ``stop``)."""
    report = LoadReport(started=time.monotonic())
    deadline = report.started + duration
    request = target.request()
    halt = stop if stop is not None else asyncio.Event()

    async def run() -> None:
        client = _Client(target)
        try:
            while time.monotonic() < deadline and not halt.is_set():
                outcome = await client.exchange(request)
                report.outcomes.append(outcome)
                if outcome.result == REFUSED:
                    await asyncio.sleep(0.01)  # the listener is gone: do not spin
        finally:
            await client.close()

    await asyncio.gather(*(run() for _ in range(connections)))
    report.ended = time.monotonic()
    return report


async def open_loop(
    target: Target,
    rate: float,
    connections: int,
    duration: float,
    *,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """``rate`` requests per second for ``duration`` s (or until ``stop``), spread over
    ``connections`` clients, each on its own schedule."""
    report = LoadReport(started=time.monotonic())
    request = target.request()
    interval = connections / rate
    halt = stop if stop is not None else asyncio.Event()

    async def run(offset: float) -> None:
        client = _Client(target)
        next_at = report.started + offset
        try:
            while next_at < report.started + duration and not halt.is_set():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                report.outcomes.append(await client.exchange(request))
                next_at += interval
        finally:
            await client.close()

    await asyncio.gather(*(run(i * interval / connections) for i in range(connections)))
    report.ended = time.monotonic()
    return report


# --- slowloris --------------------------------------------------------------------------------


@dataclass(slots=True)
class SlowlorisReport:
    """What the dribbling connections saw."""

    opened: int = 0
    closed_by_server: int = 0
    answered_408: int = 0
    refused: int = 0
    longest_life: float = 0.0


SLOW_HEAD: Final = b"GET / HTTP/1.1\r\nHost: db.do\r\nX-Slow: " + b"a" * 4000


async def slowloris(
    port: int, connections: int, interval: float, duration: float, ramp: float = 1.0
) -> SlowlorisReport:
    """Keep ``connections`` connections each sending one more head byte every ``interval``
    seconds for ``duration`` seconds (opened over ``ramp`` s; reopened when closed)."""
    report = SlowlorisReport()
    deadline = time.monotonic() + duration

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < deadline:
            await _dribble(port, interval, deadline, report)

    await asyncio.gather(*(one(ramp * i / connections) for i in range(connections)))
    return report


async def _dribble(port: int, interval: float, deadline: float, report: SlowlorisReport) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        report.refused += 1
        await asyncio.sleep(interval)
        return
    report.opened += 1
    opened = time.monotonic()
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        for byte in SLOW_HEAD:
            writer.write(bytes([byte]))
            done, _ = await asyncio.wait({answer}, timeout=interval)
            if done or time.monotonic() >= deadline:
                break
    except (ConnectionError, OSError):
        pass  # the server closed while we wrote: the answer says how
    finally:
        if answer.done():
            _count_end(answer, report, time.monotonic() - opened)
        else:
            answer.cancel()  # we stopped first (the deadline): nothing to count
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass


def _count_end(answer: asyncio.Future[bytes], report: SlowlorisReport, lived: float) -> None:
    """A finished read means the server answered or closed the connection."""
    try:
        data = answer.result()
    except (ConnectionError, OSError):
        data = b""
    report.closed_by_server += 1
    report.longest_life = max(report.longest_life, lived)
    if data.startswith(b"HTTP/1.1 408"):
        report.answered_408 += 1


# --- the Deploy API -------------------------------------------------------------------------


async def admin_call(
    port: int, method: str, path: str, body: bytes, token: str
) -> tuple[int, bytes]:
    """One Deploy API call on a new connection: status and body (0 when it did not answer)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, b""
    try:
        writer.write(head.encode("latin-1") + body)
        async with asyncio.timeout(READ_TIMEOUT):
            status, length, _ = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            return status, await reader.readexactly(length)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return 0, b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass


# --- command line (the slowloris process of bench/soak.py) -----------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Slowloris connections; prints a JSON report.")
    parser.add_argument("command", choices=["slowloris"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=1.0)
    args = parser.parse_args(argv)
    report = uvloop.run(
        slowloris(args.port, args.connections, args.interval, args.duration, args.ramp)
    )
    print(json.dumps(asdict(report)))


if __name__ == "__main__":
    main()
