"""Fuzzing the Deploy API's JSON: random documents and random bytes PUT or POSTed to each
write endpoint that takes a body, over real HTTP, against one real dispatcher's admin
listener (SQLite store; the full-access token of ``tests/admin``).

Every answer is a 2xx or a 4xx, never a 5xx; a 4xx is JSON with ``error`` and ``message``;
a refused request leaves the store exactly as it was (revision, audit trail, namespaces and
every deployment, read from the store itself); an accepted deploy is what the API then
reports for that worker.

Documents are sent to the namespace ``fuzz`` (never to the one the dispatcher serves, so
no drawn ``app`` path is ever imported), to a namespace that does not exist, and to names
that are not valid names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from dispatcher import _strictjson as strictjson
from dispatcher.app import RunningDispatcher
from dispatcher.testing import run_dispatcher
from tests.admin.conftest import Answer, Api, admin_environ, send

from .conftest import LoopThread, fuzz_settings

NAMESPACE: Final = "fuzz"
WORKER: Final = "fuzzed"
UPSTREAM: Final = "http://127.0.0.1:9"
NAMESPACES: Final = (NAMESPACE, "fuzz-two", "missing", "Bad_Name", "-x", "a" * 64, "%41")
WORKERS: Final = (WORKER, "fresh", "Bad_Worker", "x-", "%2F")


class Admin:
    """The running dispatcher, its Deploy API, and the loop its store lives on."""

    # A plain class: hypothesis prints a dataclass argument field by field, settings and all.
    def __init__(self, api: Api, thread: LoopThread[RunningDispatcher]) -> None:
        self.api = api
        self.thread = thread

    def __repr__(self) -> str:
        return f"<Admin {self.api.url}>"

    def call(self, method: str, path: str, raw: bytes | None) -> Answer:
        return send(self.api.url, method, path, raw=raw)

    def state(self) -> tuple[object, ...]:
        return self.thread.call(self.api.state())


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    directory: Path = tmp_path_factory.mktemp("fuzz-admin")
    environ = admin_environ(directory)
    thread = LoopThread(lambda: run_dispatcher(environ=environ))
    with thread as running:
        admin = Admin(Api(running), thread)
        # A worker with two versions, so that a rollback can succeed.
        assert admin.call("PUT", f"/namespaces/{NAMESPACE}", b"").status == 201
        for port in (9, 10):
            body = json.dumps({"url": f"http://127.0.0.1:{port}"}).encode()
            path = f"/namespaces/{NAMESPACE}/workers/{WORKER}"
            assert admin.call("PUT", path, body).status in (200, 201)
        yield admin


# --- documents ------------------------------------------------------------------------------

# No lone surrogate here: stored as metadata it breaks every answer that shows it, a known
# bug (test_a_lone_surrogate_in_metadata_is_refused_and_stores_nothing).
ODD_STRINGS: Final = st.sampled_from(
    ["", " ", "\x00", "\u2028", "é", "a" * 300, "v2", "1.2", "-v", "V2", "x" * 32]
)
URLS: Final = st.sampled_from(
    [
        UPSTREAM,
        "https://10.0.0.5:8443",
        "http://[::1]:8080",
        "http://db.internal",
        "ftp://10.0.0.5",
        "file:///etc/passwd",
        "http://169.254.169.254/latest",
        "http://[fe80::1]:80",
        "http://user:secret@10.0.0.5",
        "http://10.0.0.5/path",
        "http://10.0.0.5?q=1",
        "http://10.0.0.5#f",
        "http+unix://%2Ftmp%2Fs.sock",
        "http://10.0.0.5:99999",
        "http://",
        "http://\x00",
        "HTTP://10.0.0.5",
        "http://10.0.0.5:0",
    ]
)
APPS: Final = st.sampled_from(
    ["dispatcher.echo:app", "no_such_module_for_fuzz:app", "a:b:c", "a", ":app", "pkg.:x", ""]
)
SCALARS: Final = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    ODD_STRINGS,
)
ANY_JSON: Final = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
DEPLOY_VALUES: Final = {
    "url": st.one_of(URLS, st.lists(URLS, max_size=3), SCALARS),
    # Never an arbitrary module path: even in a namespace nobody serves, a drawn path
    # must not be one that imports something with side effects.
    "app": st.one_of(APPS, st.none(), st.integers()),
    "version": st.one_of(ODD_STRINGS, SCALARS),
    "metadata": st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=10), ODD_STRINGS), ODD_STRINGS, max_size=3),
        st.dictionaries(st.text(max_size=4), SCALARS, max_size=3),
        st.just({f"k{n}": "v" for n in range(70)}),
        SCALARS,
    ),
    "preserve_host": st.one_of(st.booleans(), SCALARS),
    "extra": ANY_JSON,
}


@st.composite
def deploy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """An object with some of the deploy fields (and sometimes an unknown one)."""
    keys = draw(st.lists(st.sampled_from(sorted(DEPLOY_VALUES)), unique=True, max_size=4))
    return {key: draw(DEPLOY_VALUES[key]) for key in keys}


@st.composite
def valid_deploy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document the schema accepts, its strings drawn freely where the schema allows."""
    document: dict[str, Any] = {"url": draw(st.sampled_from([UPSTREAM, "https://10.0.0.5"]))}
    if draw(st.booleans()):
        document["version"] = draw(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True))
    if draw(st.booleans()):
        keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}", fullmatch=True)
        values = st.one_of(
            st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=20),
            st.sampled_from(["\u2028", "\ufeff", "é" * 1024, "\U0001f600"]),
        )
        document["metadata"] = draw(st.dictionaries(keys, values, max_size=4))
    if draw(st.booleans()):
        document["preserve_host"] = draw(st.booleans())
    return document


def encode(document: object) -> bytes:
    """JSON as a client might send it: NaN and Infinity allowed, lone surrogates escaped."""
    return json.dumps(document, allow_nan=True).encode()


RAW_BODIES: Final = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 50_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"{}",
            b"{} {}",
            b"\xef\xbb\xbf{}",
            b'{"url": "http://127.0.0.1:9", "url": "http://127.0.0.1:10"}',
            b'{"url": NaN}',
            b'{"url": Infinity}',
            b"1" * 5000,
            b'{"url": "\xff"}',
            b'{"url": "\\ud800"}',
            b"null",
            b"[]",
            b'"{}"',
        ]
    ),
)
# Picked by a drawn integer: one_of does not weigh its branches evenly when they differ in
# size, and four in ten bodies should get past the schema.
BODIES: Final = st.integers(0, 9).flatmap(
    lambda n: (
        valid_deploy_documents().map(encode)
        if n < 4
        else deploy_documents().map(encode)
        if n < 7
        else ANY_JSON.map(encode)
        if n < 8
        else RAW_BODIES
    )
)


@st.composite
def writes(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """A write endpoint that takes a body, its path parameters, and the body."""
    # Mostly valid names, so that most bodies get as far as the schema.
    namespace = NAMESPACE if draw(st.integers(0, 9)) < 8 else draw(st.sampled_from(NAMESPACES))
    worker = WORKER if draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(WORKERS))
    method, path = draw(
        st.sampled_from(
            [
                ("PUT", f"/namespaces/{namespace}"),
                ("PUT", f"/namespaces/{namespace}/workers/{worker}"),
                ("PUT", f"/namespaces/{namespace}/workers/{worker}"),
                ("POST", f"/namespaces/{namespace}/workers/{worker}/rollback"),
            ]
        )
    )
    takes_no_fields = "/workers/" not in path or path.endswith("/rollback")
    if takes_no_fields and draw(st.integers(0, 9)) < 3:
        return method, path, draw(st.sampled_from([b"", b"{}", b" { } ", b"\n"]))
    return method, path, draw(BODIES)


# --- the target -----------------------------------------------------------------------------


@fuzz_settings(ci_examples=250)
@given(write=writes())
def test_a_write_answers_2xx_or_a_json_4xx_and_a_refusal_writes_nothing(
    admin: Admin, write: tuple[str, str, bytes]
) -> None:
    method, path, body = write
    before = admin.state()
    answer = admin.call(method, path, body)
    context = f"{method} {path} {body[:300]!r} -> {answer.status} {answer.body[:500]!r}"
    event(f"{method} {path.count('/')} -> {answer.status}")
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, context
    assert b"Traceback" not in answer.body, context
    if answer.body:
        # Strict JSON (no NaN, no repeated key), whatever the request held.
        strictjson.loads(answer.body)
    if answer.status >= 400:
        fields = answer.json
        assert isinstance(fields["error"], str) and isinstance(fields["message"], str), context
        assert admin.state() == before, context
    elif method == "PUT" and "/workers/" in path:
        check_deployed(admin, path, answer, context)


def check_deployed(admin: Admin, path: str, answer: Answer, context: str) -> None:
    """An accepted deploy is the worker's current deployment, as the API reports it."""
    deployed = answer.json
    current = admin.call("GET", path, None)
    assert current.status == 200, context
    for key in ("version", "target", "metadata", "version_label", "revision"):
        assert current.json[key] == deployed[key], (key, context)


def test_a_lone_surrogate_in_metadata_is_refused_and_stores_nothing(admin: Admin) -> None:
    assert admin.call("PUT", "/namespaces/poison", b"").status in (200, 201)
    before = admin.state()
    body = b'{"url": "http://127.0.0.1:9", "metadata": {"note": "\\ud800"}}'
    answer = admin.call("PUT", "/namespaces/poison/workers/w", body)
    # Refused as a body that is not text: it never reaches validation, nor the store.
    assert answer.status == 400, answer
    assert "lone surrogate" in answer.json["message"]
    assert admin.state() == before
