"""Strict JSON for configuration files and the Deploy API: duplicate keys, NaN and Infinity,
which ``json`` accepts, are refused with ``JsonRejected``."""

from __future__ import annotations

import json
from typing import Any


class JsonRejected(ValueError):
    """What ``json`` accepts and we do not: duplicate keys, NaN and Infinity."""


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys and the non-standard constants."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRejected(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise JsonRejected(f"{name} is not a JSON value")
