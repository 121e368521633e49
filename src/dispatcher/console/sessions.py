"""``Sessions``: who is logged in to the console. A session is a random id in an HttpOnly
cookie; the token itself never leaves the login request, and the server keeps only the
credential it proved, a CSRF token, and when the session ends.

Example::

    sessions = Sessions()
    session = sessions.open(credential)          # after auth.authenticate() succeeded
    cookie_value = session.id                    # Set-Cookie: ...; HttpOnly; SameSite=Strict
    sessions.find(cookie_value)                  # the Session, or None once expired
    session.accepts_csrf(form["csrf"])           # constant time
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dispatcher.auth import Credential

IDLE_TIMEOUT: Final = 30 * 60.0
"""Seconds without a request after which a session ends."""
MAX_LIFETIME: Final = 12 * 3600.0
"""Seconds after login after which a session ends, however busy."""
MAX_SESSIONS: Final = 1024
"""Sessions kept at once; the one used longest ago is dropped to make room."""
_ID_BYTES: Final = 32  # 256 bits, as the generated admin token


@dataclass(slots=True)
class Session:
    """One logged-in browser: the credential it proved, its CSRF token, a one-shot notice."""

    id: str = field(repr=False)
    credential: Credential
    csrf: str = field(repr=False)
    opened_at: float
    seen_at: float
    notice: tuple[str, str] | None = None
    """(kind, text) shown once on the next page, after a redirect: ("ok", "Deployed ...")."""

    def accepts_csrf(self, presented: str | None) -> bool:
        """Whether ``presented`` is this session's CSRF token (compared in constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf.encode())

    def take_notice(self) -> tuple[str, str] | None:
        notice, self.notice = self.notice, None
        return notice


class Sessions:
    """The console's sessions, in this process's memory.

    Sessions are per dispatcher process: a restart logs everyone out, and each node of a
    cluster has its own (an operator uses one node's admin listener at a time). They are
    indexed by the SHA-256 of the id, so a lookup never compares a secret byte by byte.
    """

    __slots__ = ("_by_digest", "_idle", "_lifetime", "_limit", "_clock")

    def __init__(
        self,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_lifetime: float = MAX_LIFETIME,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_digest: dict[bytes, Session] = {}
        self._idle = idle_timeout
        self._lifetime = max_lifetime
        self._limit = limit
        self._clock = clock

    def __repr__(self) -> str:
        return f"<Sessions {len(self._by_digest)} open>"

    def __len__(self) -> int:
        return len(self._by_digest)

    def open(self, credential: Credential) -> Session:
        """A new session (new id and CSRF token: a login never reuses an older id)."""
        self._drop_expired()
        while len(self._by_digest) >= self._limit:
            oldest = min(self._by_digest.values(), key=lambda s: s.seen_at)
            self.close(oldest.id)
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(_ID_BYTES),
            credential=credential,
            csrf=secrets.token_urlsafe(_ID_BYTES),
            opened_at=now,
            seen_at=now,
        )
        self._by_digest[_digest(session.id)] = session
        return session

    def find(self, session_id: str | None) -> Session | None:
        """The live session of that id, marked as seen now; ``None`` if unknown or expired."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._by_digest.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._has_expired(session, now):
            del self._by_digest[key]
            return None
        session.seen_at = now
        return session

    def close(self, session_id: str) -> None:
        """End a session (logout); unknown ids are ignored."""
        self._by_digest.pop(_digest(session_id), None)

    def _has_expired(self, session: Session, now: float) -> bool:
        return now - session.seen_at >= self._idle or now - session.opened_at >= self._lifetime

    def _drop_expired(self) -> None:
        now = self._clock()
        for key, session in list(self._by_digest.items()):
            if self._has_expired(session, now):
                del self._by_digest[key]


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()
