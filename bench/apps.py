"""The benchmark's worker app: the anchors' in-process service as one ASGI 3 callable.

GET (and every method without a body) answers a precomputed 94-byte JSON body, like
nginx's ``return 200``, so the figures measure the server around the app, not the app.
POST, PUT and PATCH read the request body to its end and answer ``{"received": N}``.
It speaks the lifespan protocol, so uvicorn, granian and the dispatcher treat it alike.

Example::

    uvicorn bench.apps:app --loop uvloop --http httptools        # from the repository root
"""

from __future__ import annotations

from typing import Final

from dispatcher.types import Receive, Scope, Send

GET_BODY: Final = (
    b'{"service":"db","ok":true,"items":[1,2,3],"message":"hello from in-process",'
    b'"pad":"abcdefgh"}\n'
)
_JSON: Final = (b"content-type", b"application/json")
_GET_HEADERS: Final = [_JSON, (b"content-length", b"%d" % len(GET_BODY))]
_METHODS_WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})


def received_body(size: int) -> bytes:
    """What the app answers to a request whose body had ``size`` bytes."""
    return b'{"received":%d}\n' % size


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point: http requests and the lifespan protocol."""
    if scope["type"] == "http":
        if scope["method"] in _METHODS_WITH_BODY:
            await _answer_upload(receive, send)
        else:
            # Fresh message dicts per request, as the anchors' app and real apps build them.
            await send({"type": "http.response.start", "status": 200, "headers": _GET_HEADERS})
            await send({"type": "http.response.body", "body": GET_BODY})
    elif scope["type"] == "lifespan":
        await _run_lifespan(receive, send)


async def _answer_upload(receive: Receive, send: Send) -> None:
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":
            return  # http.disconnect: nobody is left to answer
        size += len(message.get("body", b""))
        more_body = message.get("more_body", False)
    body = received_body(size)
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
