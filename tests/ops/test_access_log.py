"""The access log's two ways out of an in-process dispatcher.

With ``configure_logging``'s set-up, lines are built straight into its batch handler (no log
record per request). When anything else listens on ``dispatcher.access`` (a filter, another
handler), real log records are made instead. Both must write the same JSON, and neither may
let a failing log stream reach the traffic."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from dispatcher.logs import ACCESS_LOGGER, configure_logging
from tests.forwarding.conftest import serve
from tests.forwarding.upstreams import RecordingUpstream, echo

REQUESTS: Final = (
    ("/one", "first-id"),
    ("/caf%C3%A9?token=secret", 'quote"back\\slash'),
    ("/hidden", "third-id"),
)
VARYING: Final = ("ts", "duration_ms")  # differ between two runs of the same traffic


@contextmanager
def logging_to(stream: Any) -> Iterator[logging.Logger]:
    """``configure_logging("info", stream=...)`` for one test, then the logging set-up as it
    was (pytest's capture handlers included)."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate)
    configure_logging("info", stream=stream)
    try:
        yield access
    finally:
        root.handlers[:], access.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        access.propagate = saved[3]
        access.filters.clear()


async def serve_traffic(tmp_path: Path, requests: Sequence[tuple[str, str]]) -> list[int]:
    tmp_path.mkdir(exist_ok=True)
    async with RecordingUpstream.start(echo()) as db, serve(tmp_path, {"db": db.url}) as gateway:
        return [
            (await gateway.request(path, headers=[("X-Request-Id", request_id)])).status
            for path, request_id in requests
        ]


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == ACCESS_LOGGER]


def without_varying(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k not in VARYING} for line in lines]


async def test_direct_lines_and_log_records_write_the_same_json(tmp_path: Path) -> None:
    direct_stream, records_stream = io.StringIO(), io.StringIO()
    with logging_to(direct_stream):
        assert await serve_traffic(tmp_path / "direct", REQUESTS) == [200, 200, 200]
    with logging_to(records_stream) as access:
        access.addFilter(lambda record: True)  # a listener: records are made
        assert await serve_traffic(tmp_path / "records", REQUESTS) == [200, 200, 200]
    direct, records = access_lines(direct_stream), access_lines(records_stream)
    assert [line["request_id"] for line in direct] == [r for _, r in REQUESTS]
    assert without_varying(direct) == without_varying(records)
    first = direct[0]
    assert first["message"] == "GET db.do/one 200"
    assert (first["method"], first["host"], first["path"]) == ("GET", "db.do", "/one")
    assert (first["status"], first["outcome"]) == (200, "routed")
    assert (first["service"], first["worker"], first["client"]) == ("db", "db", "127.0.0.1")
    assert (first["environment"], first["namespace"]) == ("development", "dotdo-development")
    assert first["ts"].endswith("Z") and first["duration_ms"] >= 0
    assert direct[1]["path"] == "/caf%C3%A9"  # the query string is never logged


async def test_a_filter_on_the_access_logger_is_honoured(tmp_path: Path) -> None:
    stream = io.StringIO()
    with logging_to(stream) as access:
        access.addFilter(lambda record: getattr(record, "path", None) != "/hidden")
        assert await serve_traffic(tmp_path, REQUESTS) == [200, 200, 200]
    assert [line["path"] for line in access_lines(stream)] == ["/one", "/caf%C3%A9"]


class BrokenStream(io.StringIO):
    """A log stream on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


async def test_a_failing_log_stream_does_not_reach_the_traffic(tmp_path: Path, capsys: Any) -> None:
    with logging_to(BrokenStream()):
        # More than one batch: the first failure must not stop the later ones being tried.
        statuses = await serve_traffic(tmp_path, [("/x", f"id-{n}") for n in range(130)])
    assert statuses == [200] * 130
    assert "access log batch lost" in capsys.readouterr().err
