"""``Listener``: binds a socket, serves ``HttpProtocol`` connections, drives the coarse
clock, and drains connections gracefully on stop.

Example::

    listener = Listener(dispatcher, limits)
    await listener.start("127.0.0.1", 8787)
    ...
    await listener.stop(grace=30.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Final

from dispatcher.server.protocol import (
    TICK_SECONDS,
    ExchangeObserver,
    RequestHandler,
    ServerState,
    protocol_factory,
)
from dispatcher.settings import Limits

logger = logging.getLogger("dispatcher.server")

BACKLOG: Final = 2048


class Listener:
    """One listening socket and its connections."""

    __slots__ = ("_handler", "_limits", "_observer", "_server", "_state", "_ticker", "sockets")

    def __init__(
        self,
        handler: RequestHandler,
        limits: Limits,
        *,
        observer: ExchangeObserver | None = None,
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._observer = observer
        self._server: asyncio.Server | None = None
        self._state: ServerState | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.sockets: list[socket.socket] = []

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return self._state.in_flight if self._state is not None else 0

    @property
    def connection_count(self) -> int:
        return len(self._state.connections) if self._state is not None else 0

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(loop, self._limits, self._handler)
        state.observer = self._observer
        self._state = state
        self._server = await loop.create_server(
            protocol_factory(state),
            host,
            port,
            backlog=BACKLOG,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self.sockets = list(self._server.sockets)
        self._ticker = loop.create_task(self._tick(state))

    async def _tick(self, state: ServerState) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            state.tick()

    def _adopt_backlog(self, state: ServerState) -> list[asyncio.Future[object]]:
        assert self._server is not None
        loop = asyncio.get_running_loop()
        adopted: list[asyncio.Future[object]] = []
        for listening in self._server.sockets:
            # A duplicate of the listening socket (uvloop's own is not ours to change).
            with socket.socket(fileno=os.dup(listening.fileno())) as duplicate:
                duplicate.setblocking(False)
                while True:
                    try:
                        connection, _ = duplicate.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        logger.warning("could not accept a queued connection while stopping")
                        break
                    connection.setblocking(False)
                    adopted.append(
                        asyncio.ensure_future(
                            loop.connect_accepted_socket(protocol_factory(state), connection)
                        )
                    )
        return adopted

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let in-flight responses finish for up to ``grace`` s, then cut."""
        if self._server is None or self._state is None:
            return
        state = self._state
        state.is_closing = True
        # Connections the kernel completed but we had not accepted yet would be reset by the
        # close: accept them first, in the same step as the close, and answer them too.
        adopted = self._adopt_backlog(state)
        self._server.close()
        if adopted:
            await asyncio.gather(*adopted, return_exceptions=True)
        # Idle keep-alive connections close now; one that has sent nothing yet (just
        # accepted, or adopted above) gets a moment for its first request.
        for connection in list(state.connections):
            connection.shutdown()
        deadline = asyncio.get_running_loop().time() + grace
        while state.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(state.connections):
            connection.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._server.wait_closed()
        self._server = None
