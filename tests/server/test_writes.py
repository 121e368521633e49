"""``WriteBatch`` on real loopback sockets: writes wait for the end of the loop's turn, keep
their order, go at once past ``FLUSH_BYTES`` or when flushed, and skip a lost transport."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dispatcher.server.writes import FLUSH_BYTES, WriteBatch
from tests.forwarding.conftest import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]


class Peer:
    """The far end of a loopback connection, read without the event loop's help."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def received(self) -> bytes:
        """Whatever the kernel holds for us right now."""
        chunks = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    async def receive(self, size: int, timeout: float = 5.0) -> bytes:
        data = b""
        async with asyncio.timeout(timeout):
            while len(data) < size:
                data += self.received()
                if len(data) < size:
                    await asyncio.sleep(0.005)
        return data


@asynccontextmanager
async def connection() -> AsyncIterator[tuple[asyncio.Transport, Peer]]:
    """A transport of this loop, connected to a plain socket we read ourselves."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname()[:2])
        accepted, _ = await loop.sock_accept(listener)
        peer = Peer(accepted)
        try:
            yield transport, peer
        finally:
            transport.abort()
            accepted.close()
    finally:
        listener.close()


async def test_writes_wait_for_the_end_of_the_turn_and_keep_their_order() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connection() as (first, first_peer), connection() as (second, second_peer):
        batch.write(first, b"one ")
        batch.write(second, b"A ")
        batch.write(first, b"two ")
        batch.write(second, b"B")
        batch.write(first, b"three")
        assert batch.waiting == 4 + 2 + 4 + 1 + 5
        await asyncio.sleep(0)
        assert batch.waiting == 0
        assert await first_peer.receive(13) == b"one two three"
        assert await second_peer.receive(3) == b"A B"


async def test_nothing_reaches_the_socket_before_the_loop_turns() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connection() as (transport, peer):
        batch.write(transport, b"later")
        time.sleep(0.05)  # the kernel has had the time, but the loop has not turned
        assert peer.received() == b""
        assert await peer.receive(5) == b"later"


async def test_flush_writes_at_once() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connection() as (transport, peer):
        batch.write(transport, b"before the close")
        batch.flush()
        assert batch.waiting == 0
        transport.close()  # what was flushed goes before the FIN
        assert await peer.receive(16) == b"before the close"


async def test_past_flush_bytes_the_transport_gets_them_at_once() -> None:
    """A producer that never yields to the loop must still meet flow control: past
    ``FLUSH_BYTES`` the transport holds the bytes (and may pause its protocol)."""
    batch = WriteBatch(asyncio.get_running_loop())
    async with connection() as (transport, peer):
        block = b"x" * 4096
        sent = 0
        while sent <= FLUSH_BYTES:
            batch.write(transport, block)
            sent += len(block)
        assert batch.waiting == 0  # handed over without the loop turning
        assert len(await peer.receive(sent)) == sent


async def test_a_lost_transport_gets_nothing_and_the_others_still_do() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connection() as (lost, lost_peer), connection() as (kept, kept_peer):
        batch.write(lost, b"never")
        batch.write(kept, b"kept")
        lost.abort()
        await asyncio.sleep(0.05)
        assert lost_peer.received() == b""
        assert await kept_peer.receive(4) == b"kept"


class RefusingTransport:
    """A transport whose write raises: what a broken transport implementation might do."""

    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        raise RuntimeError("cannot write")

    def abort(self) -> None:
        self.aborted = True


async def test_a_transport_that_raises_is_aborted_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    broken = RefusingTransport()
    async with connection() as (kept, kept_peer):
        batch.write(broken, b"lost")  # type: ignore[arg-type]
        batch.write(kept, b"kept")
        batch.flush()
        assert await kept_peer.receive(4) == b"kept"
    assert broken.aborted
    assert "aborting it" in caplog.text
