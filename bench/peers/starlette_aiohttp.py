"""Peer (d1): a naive Starlette proxy forwarding with one shared ``aiohttp.ClientSession``.

The anchors' ``py_starlette_aiohttp.py``, typed: a catch-all route, the request body read
whole, the response read whole and re-wrapped, hop-by-hop headers dropped both ways. The
session is pooled (``TCPConnector(limit=100)``, above the benchmark's 32 connections).

Example::

    BENCH_UPSTREAMS='{"db": "http://127.0.0.1:9101", ...}' \\
        uvicorn bench.peers.starlette_aiohttp:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypedDict

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.peers.routing import HOP_BY_HOP, PeerRoutes

METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
POOL_LIMIT: Final = 100


class State(TypedDict):
    session: aiohttp.ClientSession
    routes: PeerRoutes


async def proxy(request: Request) -> Response:
    routes: PeerRoutes = request.state.routes
    session: aiohttp.ClientSession = request.state.session
    url = routes.upstream_for(request.headers.get("host", ""), request.url.path)
    if url is None:
        return Response("no route", status_code=404)
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
    body = await request.body()
    async with session.request(request.method, url, headers=headers, data=body or None) as r:
        content = await r.read()
        kept = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(content=content, status_code=r.status, headers=kept)


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[State]:
    routes = PeerRoutes.from_environ(os.environ)
    connector = aiohttp.TCPConnector(limit=POOL_LIMIT)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield {"session": session, "routes": routes}


app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
