"""The forwarding seam: a ``Forwarder`` sends one request to a worker's target.

Example::

    await worker.forwarder.forward(worker, head, body, response)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dispatcher.http import BodyStream, RequestHead, ResponseWriter

if TYPE_CHECKING:
    from dispatcher.namespaces import Worker


class Forwarder(Protocol):
    """Reaches the target of a worker: an in-process ASGI app, or (later) an upstream."""

    async def forward(
        self, worker: Worker, head: RequestHead, body: BodyStream, response: ResponseWriter
    ) -> None:
        """Hand the request to the worker and write its answer through ``response``."""
        ...
