"""The forwarding seam: a ``Forwarder`` sends one request to a worker's target.

Example::

    await worker.forwarder.forward(worker, head, body, response)
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from dispatcher.http import BodyStream, RequestHead, ResponseWriter

if TYPE_CHECKING:
    from dispatcher.namespaces import Worker


class Forwarder(Protocol):
    """Reaches the target of a worker: an in-process ASGI app, or (later) an upstream."""

    def forward(
        self, worker: Worker, head: RequestHead, body: BodyStream, response: ResponseWriter
    ) -> Coroutine[Any, Any, None] | None:
        """Hand the request to the worker, which answers through ``response``.

        Returns the coroutine the server runs as a task, or ``None`` when the forwarder
        proceeds by callbacks alone (a pooled upstream connection and no body to stream).
        """
        ...
