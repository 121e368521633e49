"""A small HTTP/1.1 upstream for the soak benchmarks: one fixed answer on several ports.

It answers every request with ``200`` and the same ~94 B JSON body as the proxy benchmark's
nginx upstream (``bench/proxy.py``, ``upstream_body``), optionally after a delay, keeps
connections alive, and discards request bodies (``Content-Length`` only; the soak load
sends none). Unlike nginx it can be slow on purpose: ``--delay 0.05`` keeps requests in
flight long enough for a SIGTERM to find some.

Example::

    .venv/bin/python -m bench._upstream --ports 9001,9002 --service db --delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable, Sequence
from typing import Final, cast

import uvloop

from bench.proxy import upstream_body

HEAD_END: Final = b"\r\n\r\n"


def response_bytes(service: str) -> bytes:
    body = upstream_body(service)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


class UpstreamProtocol(asyncio.Protocol):
    """One connection: answer each complete request head in order, after ``delay``."""

    def __init__(self, answer: bytes, delay: float, served: list[int]) -> None:
        self._answer = answer
        self._delay = delay
        self._served = served  # one cell: the requests answered on this port
        self._buffer = b""
        self._skip = 0  # request body bytes still to discard
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        self._buffer += data
        while (end := self._buffer.find(HEAD_END)) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + len(HEAD_END) :]
            length = _content_length(head)
            taken = min(length, len(self._buffer))
            self._buffer = self._buffer[taken:]
            self._skip = length - taken
            self._respond()

    def _respond(self) -> None:
        self._served[0] += 1
        if self._delay:
            self._loop.call_later(self._delay, self._write)
        else:
            self._write()

    def _write(self) -> None:
        if self._transport is not None:
            self._transport.write(self._answer)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def serve(ports: Sequence[int], service: str, delay: float) -> None:
    """Serve until SIGTERM or SIGINT, then print the requests answered per port (JSON)."""
    loop = asyncio.get_running_loop()
    answer = response_bytes(service)
    served = {port: [0] for port in ports}

    def protocols(cell: list[int]) -> Callable[[], UpstreamProtocol]:
        return lambda: UpstreamProtocol(answer, delay, cell)

    servers = [
        await loop.create_server(protocols(served[port]), "127.0.0.1", port, backlog=4096)
        for port in ports
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    counts = {str(port): cell[0] for port, cell in served.items()}
    print(json.dumps({"requests_per_port": counts}), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", required=True, help="comma-separated ports on 127.0.0.1")
    parser.add_argument("--service", default="db", help="the service the body names")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    uvloop.run(serve(ports, args.service, args.delay))


if __name__ == "__main__":
    main()
