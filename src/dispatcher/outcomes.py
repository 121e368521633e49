"""What became of a request, as the metrics and the access log name it.

An outcome is a small int on the hot path (an index into the metrics' counters) and a
label at the edges. ``ROUTED`` means the worker answered, whatever its status; every other
outcome is an answer the dispatcher gave itself, or a connection it had to cut.
"""

from __future__ import annotations

from typing import Final

ROUTED: Final = 0
SERVICE_NOT_FOUND: Final = 1
NOT_DEPLOYED: Final = 2
CONFIG_ERROR: Final = 3
BAD_GATEWAY: Final = 4
GATEWAY_TIMEOUT: Final = 5
INTERNAL_ERROR: Final = 6
BAD_REQUEST: Final = 7
CLIENT_CLOSED: Final = 8
OVERLOADED: Final = 9

NAMES: Final = (
    "routed",
    "service_not_found",
    "not_deployed",
    "config_error",
    "bad_gateway",
    "gateway_timeout",
    "internal_error",
    "bad_request",
    "client_closed",
    "overloaded",
)
"""Label of each outcome, by its int."""

CLIENT_CLOSED_STATUS: Final = 499
"""The status logged and counted for a client that left before its answer (as nginx does)."""
