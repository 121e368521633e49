"""The console's HTTP pieces: ``Request`` (what a handler reads: method, path, query, form,
cookies) and ``Response`` (status, headers, body), with the security headers every console
answer carries and the session cookie's attributes.

Example::

    request = await Request.read(scope, receive)
    response = Response.redirect("/console/login?next=/console/history")
    await response.send(send)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl, quote

from dispatcher.types import Receive, Scope, Send

PREFIX: Final = "/console"
SESSION_COOKIE: Final = "dispatcher_console"
LOGIN_COOKIE: Final = "dispatcher_console_login"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = b"x-csrf-token"
MAX_FORM_BYTES: Final = 256 * 1024
# Everything the console loads comes from the dispatcher itself: no CDN, no inline script.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on POSTs.
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
)
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


class FormTooLarge(Exception):
    """A POST body over ``MAX_FORM_BYTES``."""


class ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass(frozen=True, slots=True)
class Request:
    """One console request, its query and form decoded (a repeated field keeps the last)."""

    method: str
    path: str
    query: Mapping[str, str]
    cookies: Mapping[str, str]
    headers: Mapping[bytes, bytes]
    client: str
    is_https: bool
    form: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    async def read(cls, scope: Scope, receive: Receive) -> Request:
        """Decode ``scope``; a POST's urlencoded body is read into ``form``."""
        headers = {name.lower(): value for name, value in scope["headers"]}
        query_string: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        request = cls(
            method=scope["method"],
            path=scope["path"],
            query=_decode_pairs(query_string),
            cookies=_cookies(headers.get(b"cookie", b"")),
            headers=MappingProxyType(headers),
            client=str(client[0]) if client else "unknown",
            is_https=scope.get("scheme") == "https",
        )
        if request.method != "POST":
            return request
        body = await _read_body(receive)
        return replace(request, form=_decode_pairs(body))

    @property
    def target(self) -> str:
        """The path and query, as a ``next=`` to come back to after login."""
        if not self.query:
            return self.path
        return self.path + "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in self.query.items())

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def is_same_origin(self) -> bool:
        """Whether a POST came from a page of this listener. Browsers send ``Origin`` with
        every POST; one naming another site is refused even with a valid CSRF token."""
        origin = self.header(b"origin")
        if origin is None:
            return True  # not a browser, or an old one: the CSRF token still decides
        scheme = "https" if self.is_https else "http"
        return origin == f"{scheme}://{self.header(b'host')}"


@dataclass(frozen=True, slots=True)
class Response:
    """A console answer; ``send`` adds the security headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    cache: str = "no-store"

    @classmethod
    def html(cls, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return cls(status, text.encode(), headers=tuple(headers))

    @classmethod
    def json(cls, status: int, data: object) -> Response:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        return cls(status, body, "application/json")

    @classmethod
    def redirect(cls, location: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """303 See Other: after a POST, the browser GETs ``location``."""
        return cls(303, b"", "text/plain; charset=utf-8", (("location", location), *headers))

    async def send(self, send: Send) -> None:
        headers = [
            ("content-type", self.content_type),
            ("cache-control", self.cache),
            *_SECURITY_HEADERS,
            *self.headers,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": self.body})


def cookie_header(
    name: str, value: str, *, path: str, max_age: int, secure: bool
) -> tuple[str, str]:
    """``Set-Cookie`` for a console cookie: HttpOnly (no script reads it) and SameSite=Strict
    (no other site's page sends it). ``Secure`` only over https: the admin listener speaks
    plain http on loopback, where a Secure cookie would never come back."""
    attributes = f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return ("set-cookie", attributes + ("; Secure" if secure else ""))


def is_safe_next(target: str) -> bool:
    """Only console pages are valid ``next=`` targets (no open redirect to another site)."""
    return (
        target.startswith(PREFIX + "/")
        and not target.startswith("//")
        and "\\" not in target
        and all(c.isprintable() for c in target)
    )


def _decode_pairs(raw: bytes) -> Mapping[str, str]:
    try:
        text = raw.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=200)
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError):
        return _EMPTY  # a malformed form is an empty one: every field is then missing
    return MappingProxyType(dict(pairs))


def _cookies(raw: bytes) -> Mapping[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except CookieError:
        return _EMPTY
    return MappingProxyType({name: morsel.value for name, morsel in jar.items()})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise FormTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
