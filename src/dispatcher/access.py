"""Request logs: the access log (one JSON line per request, formatted in batches off the
request's path) and the error log of the requests the dispatcher answered itself.

A finished exchange appends what the line needs (``AccessLog.record``); the lines are built
in batches, on a timer or when many are waiting, so the formatting cost is paid outside the
request and the request's latency does not include it. Each line is built straight from the
exchange with the C string escaper (``access_line``) and handed to ``configure_logging``'s
batch handler; when anything else listens on ``dispatcher.access`` (a filter, another
handler), real log records are made instead, with the same JSON. Nothing secret is logged:
no header, and not the query string (which may carry credentials).

Compiled with the request path (``setup.py``): formatting a line is most of its cost.

Example::

    configure_logging("info")
    access = AccessLog(environment="production", namespace="dotdo-production")
    metrics = RequestMetrics("production", access_log=access, error_log=ErrorLog(...))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from dispatcher import outcomes
from dispatcher.logs import ACCESS_LOGGER, BatchHandler, iso_timestamp

if TYPE_CHECKING:
    from dispatcher.server.protocol import Exchange

FLUSH_SECONDS: Final = 0.25
FLUSH_BATCH: Final = 64
"""Lines formatted at once at most: about 1 ms of the event loop, not a latency spike."""
_quote = json.encoder.encode_basestring  # the C escaper: str -> JSON string literal


def request_fields(exchange: Exchange, finished: float) -> dict[str, Any]:
    """What every log line about a request carries."""
    head = exchange.head
    route = head.route if head is not None else None
    fields: dict[str, Any] = {
        "request_id": head.request_id.decode("ascii") if head is not None else None,
        "method": head.method if head is not None else None,
        "host": head.host if head is not None else None,
        "path": head.path if head is not None else None,
        "status": exchange.status,
        "outcome": outcomes.NAMES[exchange.outcome],
        "service": route.service if route is not None else None,
        "worker": route.worker if route is not None else None,
        "duration_ms": round((finished - exchange.started) * 1000, 3),
        "client": head.client[0] if head is not None and head.client is not None else None,
    }
    if exchange.failure is not None:
        fields["reason"] = exchange.failure
    return fields


def access_line(exchange: Exchange, finished: float, timestamp: str, context: str) -> str:
    """The access line as ``JsonFormatter`` would write ``request_fields`` and ``context``
    (the closing fields), built directly from the exchange: no dict, no ``json.dumps``, the C
    string escaper per value. About a sixth of the cost of a log record."""
    head = exchange.head
    reason = exchange.failure
    tail = f', "reason": {_quote(reason)}{context}' if reason is not None else context
    prefix = f'{{"ts": "{timestamp}", "level": "info", "logger": "{ACCESS_LOGGER}", '
    status = exchange.status
    outcome = outcomes.NAMES[exchange.outcome]
    duration = round((finished - exchange.started) * 1000, 3)
    if head is None:  # refused before a request line was read: nothing else is known
        return (
            f'{prefix}"message": "- {status}", "request_id": null, "method": null, '
            f'"host": null, "path": null, "status": {status}, "outcome": "{outcome}", '
            f'"service": null, "worker": null, "duration_ms": {duration}, "client": null{tail}'
        )
    route = head.route
    client = head.client
    method, host, path = head.method, head.host, head.path
    return (
        f'{prefix}"message": {_quote(f"{method} {host}{path} {status}")}, '
        f'"request_id": {_quote(head.request_id.decode("ascii"))}, "method": {_quote(method)}, '
        f'"host": {_quote(host)}, "path": {_quote(path)}, "status": {status}, '
        f'"outcome": "{outcome}", '
        f'"service": {_quote(route.service) if route is not None else "null"}, '
        f'"worker": {_quote(route.worker) if route is not None else "null"}, '
        f'"duration_ms": {duration}, '
        f'"client": {_quote(client[0]) if client is not None else "null"}{tail}'
    )


def _direct_handler(logger: logging.Logger) -> BatchHandler | None:
    """The access logger's one ``BatchHandler`` when ``configure_logging`` set it up and
    nothing was added since: its lines can skip log records (two thirds of their cost).
    Any other set-up (a filter, another handler, a test's capture) gets real records."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.propagate or logger.filters:
        return None
    handler = handlers[0]
    if type(handler) is not BatchHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler


def access_message(exchange: Exchange) -> str:
    head = exchange.head
    if head is None:
        return f"- {exchange.status}"
    return f"{head.method} {head.host}{head.path} {exchange.status}"


class ErrorLog:
    """Logs, at once, every request the dispatcher answered with an error of its own.

    A client's mistake (404, 400, a client that left) is already a full line of the access
    log, reason included: with the access log on, only the dispatcher's own failures (5xx)
    get a line here too."""

    __slots__ = ("_context", "_logger", "_client_errors")

    # The dispatcher's own failures (5xx) are warnings; a client's mistakes are info.
    _LEVELS: Final = {
        outcomes.CONFIG_ERROR: logging.ERROR,
        outcomes.INTERNAL_ERROR: logging.ERROR,
        outcomes.BAD_GATEWAY: logging.WARNING,
        outcomes.GATEWAY_TIMEOUT: logging.WARNING,
        outcomes.OVERLOADED: logging.WARNING,
    }

    def __init__(self, *, environment: str, namespace: str, client_errors: bool = True) -> None:
        self._context = {"environment": environment, "namespace": namespace}
        self._logger = logging.getLogger("dispatcher.request")
        self._client_errors = client_errors

    def error(self, exchange: Exchange, finished: float) -> None:
        level = self._LEVELS.get(exchange.outcome)
        if level is None:
            if not self._client_errors:
                return
            level = logging.INFO
        if not self._logger.isEnabledFor(level):
            return
        fields = request_fields(exchange, finished)
        fields.update(self._context)
        self._logger.log(
            level,
            "%s %s%s -> %d %s",
            fields["method"],
            fields["host"],
            fields["path"],
            exchange.status,
            fields["outcome"],
            extra=fields,
        )


class AccessLog:
    """One line per request on the ``dispatcher.access`` logger, formatted in batches."""

    __slots__ = ("_context_json", "_logger", "_pending", "_task", "_millisecond", "_timestamp")

    def __init__(self, *, environment: str, namespace: str) -> None:
        self._context_json = (
            f', "environment": {_quote(environment)}, "namespace": {_quote(namespace)}}}'
        )
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._pending: list[tuple[Exchange, float, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._millisecond = -1  # the last line's, and its ``ts`` (many lines share one)
        self._timestamp = ""

    def record(self, exchange: Exchange, finished: float, wall: float) -> None:
        pending = self._pending
        pending.append((exchange, finished, wall))
        if len(pending) >= FLUSH_BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        logger = self._logger
        if not pending or not logger.isEnabledFor(logging.INFO):
            return
        context = self._context_json
        direct = _direct_handler(logger)
        if direct is not None:
            direct.add_lines(
                [
                    access_line(exchange, finished, self._ts(wall), context)
                    for exchange, finished, wall in pending
                ]
            )
            direct.flush()
            return
        for exchange, finished, wall in pending:
            record = logging.LogRecord(
                logger.name, logging.INFO, "", 0, access_message(exchange), None, None
            )
            record.created = wall
            record.__dict__.update(request_fields(exchange, finished))  # for any handler
            record.json_line = access_line(exchange, finished, self._ts(wall), context)
            logger.handle(record)
        for handler in logger.handlers:
            handler.flush()

    def _ts(self, wall: float) -> str:
        millisecond = int(wall * 1000)
        if millisecond != self._millisecond:
            self._millisecond = millisecond
            self._timestamp = iso_timestamp(wall)
        return self._timestamp

    async def __aenter__(self) -> AccessLog:
        self._task = asyncio.get_running_loop().create_task(self._flush_regularly())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

    async def _flush_regularly(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()
