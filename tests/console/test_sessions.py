"""``Sessions``: ids and CSRF tokens are random, sessions end when idle, when old, and at
logout, and the oldest gives way when the table is full."""

from __future__ import annotations

import pytest

from dispatcher.auth import Credential, Permission, digest_of
from dispatcher.console.sessions import Sessions

CREDENTIAL = Credential("ci", digest_of("some-token-0123456789"), frozenset({Permission.DEPLOY}))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_has_its_own_random_id_and_csrf_token() -> None:
    sessions = Sessions()
    one, two = sessions.open(CREDENTIAL), sessions.open(CREDENTIAL)
    assert len({one.id, two.id, one.csrf, two.csrf}) == 4
    assert len(one.id) >= 43  # 256 bits, base64url
    assert sessions.find(one.id) is one and sessions.find(two.id) is two
    assert "id=" not in repr(one) and one.id not in repr(one) and one.csrf not in repr(one)


@pytest.mark.parametrize("presented", [None, "", "x", "CSRF-but-one-character-off"])
def test_only_the_sessions_own_csrf_token_is_accepted(presented: str | None) -> None:
    session = Sessions().open(CREDENTIAL)
    assert session.accepts_csrf(session.csrf)
    wrong = session.csrf[:-1] if presented == "CSRF-but-one-character-off" else presented
    assert not session.accepts_csrf(wrong)


@pytest.mark.parametrize("value", [None, "", "unknown-session-id"])
def test_an_unknown_id_finds_nothing(value: str | None) -> None:
    assert Sessions().find(value) is None


def test_a_session_ends_after_its_idle_timeout_unless_used() -> None:
    clock = Clock()
    sessions = Sessions(idle_timeout=60, max_lifetime=3600, clock=clock)
    session = sessions.open(CREDENTIAL)
    clock.now += 59
    assert sessions.find(session.id) is session  # used: the idle timer starts again
    clock.now += 59
    assert sessions.find(session.id) is session
    clock.now += 60
    assert sessions.find(session.id) is None
    assert len(sessions) == 0


def test_a_session_ends_after_its_lifetime_however_busy() -> None:
    clock = Clock()
    sessions = Sessions(idle_timeout=60, max_lifetime=200, clock=clock)
    session = sessions.open(CREDENTIAL)
    for _ in range(3):
        clock.now += 50
        assert sessions.find(session.id) is session
    clock.now += 50
    assert sessions.find(session.id) is None


def test_logout_closes_the_session() -> None:
    sessions = Sessions()
    session = sessions.open(CREDENTIAL)
    sessions.close(session.id)
    sessions.close(session.id)  # twice is harmless
    assert sessions.find(session.id) is None


def test_a_full_table_drops_the_session_used_longest_ago() -> None:
    clock = Clock()
    sessions = Sessions(limit=2, clock=clock)
    first = sessions.open(CREDENTIAL)
    clock.now += 1
    second = sessions.open(CREDENTIAL)
    clock.now += 1
    assert sessions.find(first.id) is first  # first is now the more recent
    clock.now += 1
    third = sessions.open(CREDENTIAL)
    assert sessions.find(second.id) is None
    assert sessions.find(first.id) is first and sessions.find(third.id) is third


def test_a_notice_is_shown_once() -> None:
    session = Sessions().open(CREDENTIAL)
    session.notice = ("ok", "Deployed")
    assert session.take_notice() == ("ok", "Deployed")
    assert session.take_notice() is None
