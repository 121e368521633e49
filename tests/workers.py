"""ASGI apps the tests deploy as workers, importable as ``tests.workers:<name>``.

Each answers JSON naming itself in ``app``, so a test can tell which deployment served it:

* ``identity``: who served the request (the dispatcher's scope extension: service, worker,
  environment, namespace) and the path it saw;
* ``identity_v2``: the same, as a second version of a service;
* ``header_lines``: every header line as received, in order, repeats kept;
* ``digest``: the sha256 and length of the request body, read chunk by chunk;
* ``process``: the pid of the process that served it, after ``?sleep=S`` seconds;
* ``raising``: raises before answering, as a broken worker does.

They return at once on a ``lifespan`` scope, which the dispatcher reads as "no lifespan".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any
from urllib.parse import parse_qsl

from dispatcher.types import Receive, Scope, Send


async def identity(scope: Scope, receive: Receive, send: Send) -> None:
    """Names the deployment that served the request."""
    if scope["type"] == "http":
        await _read_body(receive)
        await _send_json(send, {"app": "identity", **_served_by(scope)})


async def identity_v2(scope: Scope, receive: Receive, send: Send) -> None:
    """``identity`` under another name: a new version of the same service."""
    if scope["type"] == "http":
        await _read_body(receive)
        await _send_json(send, {"app": "identity_v2", **_served_by(scope)})


async def header_lines(scope: Scope, receive: Receive, send: Send) -> None:
    """Every header line the worker received, in order, as ``[name, value]`` pairs."""
    if scope["type"] == "http":
        await _read_body(receive)
        lines = [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]
        ]
        await _send_json(send, {"app": "header_lines", "headers": lines})


async def digest(scope: Scope, receive: Receive, send: Send) -> None:
    """The sha256 and length of the body, so a test can check it arrived byte for byte."""
    if scope["type"] == "http":
        body = await _read_body(receive)
        await _send_json(
            send,
            {"app": "digest", "sha256": hashlib.sha256(body).hexdigest(), "length": len(body)},
        )


async def process(scope: Scope, receive: Receive, send: Send) -> None:
    """Names the process that served the request; ``?sleep=S`` answers after S seconds (a
    request still in flight when the process is told to stop)."""
    if scope["type"] == "http":
        await _read_body(receive)
        query = dict(parse_qsl(scope["query_string"].decode()))
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        await _send_json(send, {"app": "process", "pid": os.getpid()})


async def raising(scope: Scope, receive: Receive, send: Send) -> None:
    """Fails before sending anything: the dispatcher must answer the seed's 500."""
    if scope["type"] == "http":
        raise RuntimeError("worker exploded")


def _served_by(scope: Scope) -> dict[str, Any]:
    info: dict[str, Any] = scope.get("extensions", {}).get("dispatcher", {})
    return {
        "service": info.get("service"),
        "worker": info.get("worker"),
        "environment": info.get("environment"),
        "namespace": info.get("namespace"),
        "path": scope["path"],
    }


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send: Send, answer: dict[str, Any]) -> None:
    body = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
