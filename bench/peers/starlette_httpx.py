"""Peer (d2): the same naive Starlette proxy, forwarding with one shared ``httpx.AsyncClient``.

The anchors' ``py_starlette_httpx.py``, typed. The pool is sized above the benchmark's 32
connections (httpx's default keeps 20 alive), so the figure is httpx's, not pool churn.

Example::

    BENCH_UPSTREAMS='{"db": "http://127.0.0.1:9101", ...}' \\
        uvicorn bench.peers.starlette_httpx:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypedDict

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.peers.routing import HOP_BY_HOP, PeerRoutes

METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
POOL_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=100)
TIMEOUT_S: Final = 30.0


class State(TypedDict):
    client: httpx.AsyncClient
    routes: PeerRoutes


async def proxy(request: Request) -> Response:
    routes: PeerRoutes = request.state.routes
    client: httpx.AsyncClient = request.state.client
    url = routes.upstream_for(request.headers.get("host", ""), request.url.path)
    if url is None:
        return Response("no route", status_code=404)
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
    body = await request.body()
    r = await client.request(request.method, url, headers=headers, content=body)
    kept = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
    return Response(content=r.content, status_code=r.status_code, headers=kept)


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[State]:
    routes = PeerRoutes.from_environ(os.environ)
    async with httpx.AsyncClient(limits=POOL_LIMITS, timeout=TIMEOUT_S) as client:
        yield {"client": client, "routes": routes}


app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
