"""Strict JSON for configuration files and the Deploy API: duplicate keys, NaN and Infinity,
and escaped lone surrogates (``"\\ud800"``: not text, so it could never be encoded again),
which ``json`` accepts, are refused with ``JsonRejected``."""

from __future__ import annotations

import json
from typing import Any


class JsonRejected(ValueError):
    """What ``json`` accepts and we do not: duplicate keys, NaN and Infinity."""


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys, the non-standard constants and strings
    that are not Unicode text."""
    value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    # Only an escape can make a lone surrogate: most documents need no second look.
    has_escape = b"\\u" in text if isinstance(text, bytes) else "\\u" in text
    if has_escape:
        _check_text(value)
    return value


def _check_text(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRejected("a string holds a lone surrogate (an escape like \\ud800)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRejected(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise JsonRejected(f"{name} is not a JSON value")
