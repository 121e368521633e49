"""``BrokenForwarder``: stands for a worker whose target could not be loaded.

Every request to it gets the seed's 500 with the reason, so a bad deploy is visible to the
client and in the log instead of looking like "not deployed".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.errors import InternalError
from dispatcher.http import BodyStream, RequestHead, ResponseWriter

if TYPE_CHECKING:
    from dispatcher.namespaces import Worker


class BrokenForwarder:
    """Answers 500 naming why the worker cannot run."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def forward(
        self, worker: Worker, head: RequestHead, body: BodyStream, response: ResponseWriter
    ) -> None:
        error = InternalError(f'Worker "{worker.name}" cannot be served: {self.reason}')
        response.fail(error)
