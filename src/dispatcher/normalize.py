"""Canonical forms of the request's host and path, computed once before routing.

Policy (docs/configuration.md, "How requests are normalized"):

* Host: lower-cased, one trailing dot and the port removed; a reg-name of letters, digits,
  ``-`` and ``_`` in dot-separated labels of 1 to 63 characters, at most 253 characters, or
  a bracketed IPv6 literal. Anything else, or a port above 65535, is a 400.
* Path: must start with ``/``; controls, spaces, non-ASCII bytes, ``\\`` and ``#`` are a 400.
  Percent-escapes of unreserved characters are decoded (RFC 3986 §6.2.2.2, so ``/api/%64b``
  is ``/api/db``); ``%2F``, ``%5C``, ``%00``, a malformed escape, or escapes that do not
  decode as UTF-8 are a 400; other escapes are kept (upper-cased). Repeated slashes are
  merged, then dot segments removed (RFC 3986 §5.2.4); a path that climbs above the root is
  a 400. Routing and the worker both see the canonical path, so no spelling of a path can
  reach a service that its canonical form does not route to.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import unquote_to_bytes

from dispatcher.errors import BadRequest

MAX_HOST_LENGTH: Final = 253

_REG_NAME = re.compile(r"([a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*)\.?(?::([0-9]{0,5}))?", re.ASCII)
_IPV6 = re.compile(r"(\[[0-9a-f:.]{2,45}\])(?::([0-9]{0,5}))?", re.ASCII)
_ESCAPE = re.compile(r"%(..)?", re.DOTALL)
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_REJECTED_ESCAPES: Final = frozenset({0x00, 0x2F, 0x5C})


def normalize_host(value: str) -> str:
    """``"AbC.Example.COM.:88"`` → ``"abc.example.com"``; raises ``BadRequest`` if invalid."""
    # isascii first: str.lower() maps some non-ASCII letters (U+212A KELVIN SIGN) to ASCII.
    lowered = value.lower() if value.isascii() else ""
    match = (_IPV6 if lowered.startswith("[") else _REG_NAME).fullmatch(lowered)
    if match is None or (lowered.startswith("[") and not _is_ipv6(match.group(1)[1:-1])):
        raise BadRequest(f"invalid Host header: {_shorten(value)!r}")
    host, port = match.group(1), match.group(2)
    if port and int(port) > 65535:
        raise BadRequest(f"invalid port in Host header: {port!r}")
    if len(host) > MAX_HOST_LENGTH:
        raise BadRequest(f"Host header longer than {MAX_HOST_LENGTH} characters")
    return host


def normalize_path(path: str) -> str:
    """``"/api//db/./x/../q"`` → ``"/api/db/q"``; raises ``BadRequest`` if invalid."""
    if not path.startswith("/"):
        raise BadRequest("request target must be a path starting with '/'")
    # Fast accept first (C string methods): printable ASCII without space, '\\' or '#'.
    if not (path.isascii() and path.isprintable()) or (" " in path or "\\" in path or "#" in path):
        raise BadRequest(
            "request path contains a forbidden character (control, space, non-ASCII, '\\' or '#')"
        )
    if "%" not in path and "/." not in path and "//" not in path:
        return path
    if "%" in path:
        path = _decode_unreserved(path)
    return _remove_dot_segments(path)


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, keep the others, reject the dangerous ones."""

    def replace(match: re.Match[str]) -> str:
        hexdigits = match.group(1)
        if hexdigits is None or not _is_hex(hexdigits):
            raise BadRequest(f"malformed percent-escape in path: {match.group(0)!r}")
        byte = int(hexdigits, 16)
        if byte in _REJECTED_ESCAPES:
            raise BadRequest(f"encoded {match.group(0)!r} is not allowed in the path")
        return chr(byte) if byte in _UNRESERVED else "%" + hexdigits.upper()

    result = _ESCAPE.sub(replace, path)
    try:
        unquote_to_bytes(result).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("percent-escapes in the path are not valid UTF-8") from exc
    return result


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def _remove_dot_segments(path: str) -> str:
    """Merge slashes, then resolve ``.`` and ``..``; climbing above the root is a 400."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments[:-1]:
        _apply_segment(out, segment)
    last = segments[-1]
    trailing = last in ("", ".", "..")
    _apply_segment(out, last)
    canonical = "/" + "/".join(out)
    if trailing and out:
        canonical += "/"
    return canonical


def _apply_segment(out: list[str], segment: str) -> None:
    if segment == "" or segment == ".":
        return
    if segment == "..":
        if not out:
            raise BadRequest("path climbs above the root")
        out.pop()
        return
    out.append(segment)


def _shorten(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "..."
