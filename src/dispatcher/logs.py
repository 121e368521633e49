"""JSON-lines logging on stderr: the logging set-up every process makes at start.

Every record goes through the standard ``logging`` module and comes out as one JSON object
per line (``JsonFormatter``). Fields given in ``extra=`` become top-level keys. The access
log (``dispatcher.access``) has its own handler, which writes its lines in batches
(``BatchHandler``); the lines themselves, and the error log of requests, are made in
``access.py``.

Example::

    configure_logging("info")
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any, Final

LEVELS: Final = ("debug", "info", "warning", "error")
ACCESS_LOGGER: Final = "dispatcher.access"
# LogRecord attributes that are not ``extra=`` fields.
_RECORD_FIELDS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the ``extra``
    fields, and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = getattr(record, "json_line", None)
        if line is not None:
            return line  # built whole by access.AccessLog, in the same shape
        fields: dict[str, Any] = {
            "ts": iso_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:
                fields[key] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)


def iso_timestamp(created: float) -> str:
    """``2026-11-27T17:14:11.123Z``: the ``ts`` of every line."""
    return _iso_milliseconds(int(created * 1000))


@functools.lru_cache(maxsize=8)
def _iso_milliseconds(milliseconds: int) -> str:
    seconds, fraction = divmod(milliseconds, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{fraction:03d}Z"


class BatchHandler(logging.Handler):
    """Keeps formatted lines until ``flush``, then writes them in one call: a batch of
    access lines is one write to stderr, not one (and one flush) per request."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def add_lines(self, lines: list[str]) -> None:
        """Lines already formatted (``AccessLog``'s): written with the next ``flush``."""
        self._lines.extend(lines)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self.acquire()
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except Exception:
                # Like a failed emit: said on stderr once per batch, never raised into the
                # event loop (a full disk must not stop the traffic).
                self.handleError(logging.makeLogRecord({"msg": "access log batch lost"}))
            finally:
                self.release()


def configure_logging(level: str, *, stream: Any = None) -> None:
    """JSON lines on stderr (or ``stream``) at ``level``; replaces any earlier handler."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
    batched = BatchHandler(out)
    batched.setFormatter(JsonFormatter())
    access.addHandler(batched)
    access.propagate = False  # one line, written by its own handler in batches
