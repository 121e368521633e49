"""The echo worker of ``dispatcher dev``: answers what it received, as JSON.

Its body is ``{"service", "environment", "method", "path", "query", "headers",
"body_bytes"}``; the dispatcher tells it its service and environment through the
``extensions["dispatcher"]`` entry of the ASGI scope.
"""

from __future__ import annotations

import json

from dispatcher.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI app: read the whole body, count it, describe the request."""
    if scope["type"] != "http":
        return
    body_bytes = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body_bytes += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    info = scope.get("extensions", {}).get("dispatcher", {})
    answer = {
        "service": info.get("service"),
        "environment": info.get("environment"),
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "headers": _combined(scope["headers"]),
        "body_bytes": body_bytes,
    }
    body = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _combined(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header lines as a dict; repeated names joined with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
