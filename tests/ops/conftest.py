"""Shared by the operations tests: scrape ``/metrics`` and read samples from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from dispatcher.app import RunningDispatcher
from tests.forwarding.conftest import Client, Response, pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories", "scrape", "Samples", "wait_until"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get_admin(running: RunningDispatcher, target: str) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.admin_listener.port)
    client = Client(reader, writer)
    try:
        return await client.request(target, host="127.0.0.1")
    finally:
        await client.aclose()


async def scrape(running: RunningDispatcher) -> Samples:
    """Every sample of ``GET /metrics`` on the admin listener, by name and label set."""
    response = await get_admin(running, "/metrics")
    assert response.status == 200, response.body
    samples: Samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when absent, as Prometheus would see it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


POLL: Final = 0.01


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(POLL)


def labels(**pairs: str) -> Mapping[str, str]:
    return pairs
