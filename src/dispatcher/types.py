"""Type aliases shared across the package: ASGI callables and identifier `NewType`s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NewType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ServiceName = NewType("ServiceName", str)
"""The logical name routing yields: ``gateway``, ``db``, ``auth``."""

WorkerName = NewType("WorkerName", str)
"""The name a worker has in a namespace: a service name, or ``<service>-<version>``."""

EnvironmentName = NewType("EnvironmentName", str)
"""Which environment a dispatcher serves (``production``, ``staging``, ``development``)."""

NamespaceName = NewType("NamespaceName", str)
"""The store name of a dispatch namespace (``dotdo-production``)."""

Header = tuple[bytes, bytes]
"""One header line as received: raw name and raw value, case kept."""
