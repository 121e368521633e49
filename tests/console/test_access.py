"""The console over real HTTP (no browser): who may see what, sessions, CSRF, escaping,
and the Deploy API's own paths left as they were."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import pytest

from dispatcher.app import RunningDispatcher
from dispatcher.testing import DispatcherThread
from tests.admin.conftest import CI, READER, STAGING, TOKEN, Answer, admin_environ, send
from tests.console.conftest import ConsoleClient, csrf_of

PROD: Final = "dotdo-production"
PAGES: Final = (
    "/console/",
    "/console/routes",
    "/console/routes?url=api.do/api/db",
    "/console/namespaces",
    "/console/history",
    f"/console/namespaces/{PROD}/deploy",
    f"/console/namespaces/{PROD}/workers/gateway/rollback",
    f"/console/namespaces/{PROD}/workers/gateway/undeploy",
)
WRONG: Final = "That token was not accepted."


def api(console: RunningDispatcher, method: str, path: str, body: object = None) -> Answer:
    return send(console.admin_url, method, path, body=body)


def deploy(console: RunningDispatcher, worker: str, app: str, **fields: Any) -> None:
    answer = api(console, "PUT", f"/namespaces/{PROD}/workers/{worker}", {"app": app, **fields})
    assert answer.status in (200, 201), answer.body


def worker_state(console: RunningDispatcher, worker: str) -> Any:
    return api(console, "GET", f"/namespaces/{PROD}/workers/{worker}").json


def logged_in(console: RunningDispatcher, token: str = TOKEN) -> ConsoleClient:
    client = ConsoleClient(console.admin_url)
    answer = client.login(token)
    assert answer.status == 303, answer.body
    return client


def text(answer: Answer) -> str:
    return answer.body.decode()


def shown(answer: Answer) -> str:
    """The page's text as a person reads it (entities decoded)."""
    return html.unescape(text(answer))


# --- without a session -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_redirects_to_the_login_form(
    client: ConsoleClient, path: str
) -> None:
    answer = client.get(path)
    assert answer.status == 303
    assert answer.headers["location"] == f"/console/login?next={quote(path, safe='/')}"


@pytest.mark.parametrize(("path", "location"), [("/", "/console/"), ("/console", "/console/")])
def test_the_root_leads_to_the_console(client: ConsoleClient, path: str, location: str) -> None:
    answer = client.get(path)
    assert (answer.status, answer.headers["location"]) == (303, location)


def test_live_figures_without_a_session_are_401(client: ConsoleClient) -> None:
    answer = client.get("/console/api/live")
    assert answer.status == 401
    assert answer.json == {"error": "Unauthorized", "message": "log in first"}


def test_a_change_without_a_session_changes_nothing(
    console: RunningDispatcher, client: ConsoleClient
) -> None:
    deploy(console, "schedule", "tests.workers:identity")
    deploy(console, "schedule", "tests.workers:identity_v2")
    before = worker_state(console, "schedule")
    answer = client.post(f"/console/namespaces/{PROD}/workers/schedule/rollback", {"csrf": "x"})
    assert (answer.status, answer.headers["location"]) == (303, "/console/login?next=/console/")
    assert worker_state(console, "schedule") == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/health", 200), ("GET", "/namespaces", 401), ("GET", "/metrics", 200),
     ("GET", "/consoles", 404), ("POST", "/", 303)],
)  # fmt: skip
def test_the_deploy_api_keeps_its_paths(
    console: RunningDispatcher, method: str, path: str, status: int
) -> None:
    answer = send(console.admin_url, method, path, token=None)
    assert answer.status == status
    if path != "/":
        assert not answer.headers.get("content-type", "").startswith("text/html")


def test_the_openapi_document_does_not_list_the_console(console: RunningDispatcher) -> None:
    paths = api(console, "GET", "/openapi.json").json["paths"]
    assert not [p for p in paths if p.startswith("/console")]
    assert "/metrics" in paths


# --- logging in ------------------------------------------------------------------------------


def test_login_sets_an_httponly_strict_session_cookie(client: ConsoleClient) -> None:
    form = client.get("/console/login")
    assert form.status == 200
    answer = client.post(
        "/console/login", {"csrf": csrf_of(form), "token": TOKEN, "next": "/console/history"}
    )
    assert (answer.status, answer.headers["location"]) == (303, "/console/history")
    cookie = answer.headers["set-cookie"]
    session_id = client.cookies["dispatcher_console"]
    assert len(session_id) >= 43 and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    page = client.get("/console/history")
    assert page.status == 200
    assert TOKEN not in text(page)


def test_every_console_answer_carries_the_security_headers(client: ConsoleClient) -> None:
    headers = client.get("/console/login").headers
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "token",
    ["", "   ", "not-a-token-of-this-dispatcher", TOKEN[:-1], TOKEN + "0", "two words", "é" * 20,
     "<b>bold</b>"],
)  # fmt: skip
def test_a_wrong_token_gets_one_answer(client: ConsoleClient, token: str) -> None:
    answer = client.login(token)
    assert answer.status == 401
    assert WRONG in text(answer)
    assert not re.search(r"unknown|malformed|missing|bearer", text(answer), re.IGNORECASE)
    assert "dispatcher_console" not in client.cookies
    assert "<b>bold</b>" not in text(answer)


def test_login_needs_the_form_it_was_given(client: ConsoleClient) -> None:
    answer = client.post("/console/login", {"csrf": "made-up", "token": TOKEN})
    assert answer.status == 400
    assert "The login form expired" in text(answer)
    assert "dispatcher_console" not in client.cookies


def test_login_from_another_origin_is_refused(client: ConsoleClient) -> None:
    nonce = csrf_of(client.get("/console/login"))
    answer = client.post(
        "/console/login", {"csrf": nonce, "token": TOKEN}, Origin="http://evil.example"
    )
    assert answer.status == 403
    assert "dispatcher_console" not in client.cookies


@pytest.mark.parametrize(
    ("next_target", "location"),
    [("/console/history?worker=db", "/console/history?worker=db"), ("", "/console/"),
     ("//evil.example/console/", "/console/"), ("https://evil.example/", "/console/"),
     ("/namespaces", "/console/"), ("/console/\\evil", "/console/")],
)  # fmt: skip
def test_login_returns_only_to_console_pages(
    client: ConsoleClient, next_target: str, location: str
) -> None:
    answer = client.login(TOKEN, next_target)
    assert (answer.status, answer.headers["location"]) == (303, location)


def test_failed_logins_are_limited_per_address(tmp_path: Path) -> None:
    with DispatcherThread(environ=admin_environ(tmp_path)) as running:
        client = ConsoleClient(running.admin_url)
        statuses = [client.login(f"wrong-token-number-{n:02d}").status for n in range(10)]
        assert statuses == [401] * 10
        refused = client.login(TOKEN)
        assert refused.status == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many failed authentications" in text(refused)


def test_logout_ends_the_session_on_the_server(console: RunningDispatcher) -> None:
    client = logged_in(console)
    session_id = client.cookies["dispatcher_console"]
    answer = client.post("/console/logout", {"csrf": client.csrf()})
    assert (answer.status, answer.headers["location"]) == (303, "/console/login?logged_out")
    assert "dispatcher_console" not in client.cookies
    assert "You have logged out." in text(client.get("/console/login?logged_out"))
    client.cookies["dispatcher_console"] = session_id  # the old cookie, replayed
    assert client.get("/console/").status == 303


# --- changes need the session's CSRF token ---------------------------------------------------


@pytest.mark.parametrize(
    ("form", "headers"),
    [({}, {}), ({"csrf": "forged"}, {}), ({"csrf": ""}, {}),
     ({"csrf": "RIGHT"}, {"Origin": "http://evil.example"}),
     ({"csrf": "RIGHT"}, {"Origin": "null"})],
)  # fmt: skip
def test_a_change_without_a_genuine_form_is_refused(
    console: RunningDispatcher, form: dict[str, str], headers: dict[str, str]
) -> None:
    deploy(console, "auth", "tests.workers:identity")
    deploy(console, "auth", "tests.workers:identity_v2")
    before = worker_state(console, "auth")
    client = logged_in(console)
    csrf = client.csrf()
    sent = {k: csrf if v == "RIGHT" else v for k, v in form.items()}
    path = f"/console/namespaces/{PROD}/workers/auth/rollback"
    answer = client.request("POST", path, sent, headers)
    assert answer.status == 403
    assert "did not come from this console" in text(answer)
    assert worker_state(console, "auth") == before


def test_the_csrf_token_may_come_in_a_header(console: RunningDispatcher) -> None:
    deploy(console, "email", "tests.workers:identity")
    deploy(console, "email", "tests.workers:identity_v2")
    client = logged_in(console)
    path = f"/console/namespaces/{PROD}/workers/email/rollback"
    answer = client.request("POST", path, {}, {"X-CSRF-Token": client.csrf()})
    assert answer.status == 303
    state = worker_state(console, "email")
    assert (state["target"], state["actor"]) == ({"app": "tests.workers:identity"}, "admin")


# --- what each token may do ------------------------------------------------------------------


def test_a_read_token_may_look_but_not_change(console: RunningDispatcher) -> None:
    deploy(console, "mcp", "tests.workers:identity")
    client = logged_in(console, READER)
    assert client.get("/console/namespaces").status == 200
    assert "Deploy a worker" not in text(client.get("/console/namespaces"))
    assert client.get(f"/console/namespaces/{PROD}/deploy").status == 403
    form = {"csrf": client.csrf(), "step": "confirm", "worker": "mcp", "kind": "app",
            "app": "tests.workers:identity_v2"}  # fmt: skip
    answer = client.post(f"/console/namespaces/{PROD}/deploy", form)
    assert answer.status == 403
    assert 'token "reader" may not deploy to namespace "dotdo-production"' in shown(answer)
    assert worker_state(console, "mcp")["target"] == {"app": "tests.workers:identity"}


def test_a_namespace_limited_token_sees_only_its_namespaces(console: RunningDispatcher) -> None:
    client = logged_in(console, STAGING)
    page = text(client.get("/console/namespaces"))
    assert 'id="ns-dotdo-staging"' in page and f'id="ns-{PROD}"' not in page
    history = text(client.get(f"/console/history?namespace={PROD}"))
    assert f'no namespace "{PROD}" that your token may read' in html.unescape(history)
    assert client.get(f"/console/namespaces/{PROD}/deploy").status == 403
    resolved = text(client.get("/console/routes?url=gateway.do/&environment=production"))
    assert f'your token may not read namespace "{PROD}"' in html.unescape(resolved)
    assert client.get("/console/api/live").json["workers"] == {}


# --- writes through the console --------------------------------------------------------------


def test_deploy_is_reviewed_then_confirmed_and_recorded_as_its_token(
    console: RunningDispatcher,
) -> None:
    client = logged_in(console, CI)
    form = {"csrf": client.csrf(), "worker": "queue", "kind": "url",
            "urls": "http://127.0.0.1:9\r\nhttp://127.0.0.2:9", "preserve_host": "on",
            "version": "v7", "metadata": "ticket=OPS-7\r\ncommit = abc123"}  # fmt: skip
    review = client.post(f"/console/namespaces/{PROD}/deploy", {**form, "step": "review"})
    assert review.status == 200
    assert "Deploy queue to production" in text(review)
    assert api(console, "GET", f"/namespaces/{PROD}/workers/queue").status == 404
    done = client.post(f"/console/namespaces/{PROD}/deploy", {**form, "step": "confirm"})
    assert (done.status, done.headers["location"]) == (303, f"/console/namespaces#ns-{PROD}")
    state = worker_state(console, "queue")
    assert state["target"] == {"url": ["http://127.0.0.1:9", "http://127.0.0.2:9"]}
    assert (state["actor"], state["version_label"]) == ("ci", "v7")
    assert state["metadata"] == {"ticket": "OPS-7", "commit": "abc123"}
    notice = text(client.get("/console/namespaces"))
    assert "Deployed queue version 1 to production (dotdo-production)." in notice


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"worker": "Bad_Name"}, "worker name must be 1 to 63 characters"),
     ({"urls": "ftp://example.com"}, "url must be an http:// or https:// URL"),
     ({"urls": ""}, "url must be a URL string or an array of 1 to 64 URL strings"),
     ({"kind": "app", "app": "not an import path"}, "app must look like"),
     ({"version": "V 2"}, "version must be 1 to 31 characters"),
     ({"metadata": "no equals sign"}, "metadata line 1 is not key=value"),
     ({"metadata": "bad key!=1"}, "metadata key 'bad key!' must be")],
)  # fmt: skip
def test_an_invalid_deploy_form_names_the_problem(
    console: RunningDispatcher, fields: dict[str, str], message: str
) -> None:
    client = logged_in(console)
    form = {"csrf": client.csrf(), "worker": "gateway", "kind": "url",
            "urls": "http://127.0.0.1:9", "step": "confirm", **fields}  # fmt: skip
    answer = client.post(f"/console/namespaces/{PROD}/deploy", form)
    assert answer.status == 422
    assert message in shown(answer)
    assert 'aria-invalid="true"' in text(answer)


def test_rollback_and_undeploy_answer_with_a_notice(console: RunningDispatcher) -> None:
    deploy(console, "db", "tests.workers:identity")
    client = logged_in(console)
    path = f"/console/namespaces/{PROD}/workers/db"
    refused = client.post(path + "/rollback", {"csrf": client.csrf()})
    assert refused.status == 303
    assert "db was not rolled back: " in text(client.get("/console/namespaces"))
    confirm = text(client.get(path + "/undeploy"))
    assert "Undeploy db in production" in confirm
    assert 'requests for <span class="mono">db</span> get 404' in confirm
    done = client.post(path + "/undeploy", {"csrf": client.csrf()})
    assert done.status == 303
    assert "Undeployed db from production (dotdo-production)." in text(
        client.get("/console/namespaces")
    )
    assert api(console, "GET", f"/namespaces/{PROD}/workers/db").status == 404


# --- escaping --------------------------------------------------------------------------------


def test_html_in_metadata_is_escaped_everywhere(console: RunningDispatcher) -> None:
    script = "<script>alert('pwned')</script>"
    deploy(console, "webhooks", "tests.workers:identity", metadata={"note": script}, version="x1")
    client = logged_in(console)
    for path in ("/console/namespaces", "/console/history",
                 f"/console/history?worker=webhooks&actor={quote(script)}",
                 f"/console/routes?url={quote('webhooks.do/' + script)}",
                 f"/console/namespaces/{PROD}/deploy?worker=webhooks"):  # fmt: skip
        page = text(client.get(path))
        assert "<script>alert" not in page, path
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in text(
        client.get("/console/history?worker=webhooks")
    )


def test_a_console_page_names_no_token_and_no_cdn(console: RunningDispatcher) -> None:
    client = logged_in(console)
    for path in PAGES[:5]:
        page = text(client.get(path))
        assert TOKEN not in page
        sources = re.findall(r'(?:src|href)="([^"#]+)"', page)
        assert sources and all(s.startswith("/") or s == "data:," for s in sources), sources


# --- assets, pages, figures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("console.css", "text/css; charset=utf-8"), ("console.js", "text/javascript; charset=utf-8")],
)
def test_assets_are_served_by_the_dispatcher(
    client: ConsoleClient, name: str, content_type: str
) -> None:
    answer = client.get(f"/console/static/{name}")
    assert (answer.status, answer.headers["content-type"]) == (200, content_type)
    assert len(answer.body) > 1000


@pytest.mark.parametrize("path", ["/console/static/app.py", "/console/static/x/../sessions.py",
                                  "/console/nothing-here"])  # fmt: skip
def test_unknown_console_paths_are_404(client: ConsoleClient, path: str) -> None:
    assert client.get(path).status == 404


def test_a_wrong_method_is_405(console: RunningDispatcher) -> None:
    client = logged_in(console)
    assert client.request("DELETE", "/console/history").status == 405


def test_the_overview_names_the_revision_and_the_replicas(console: RunningDispatcher) -> None:
    client = logged_in(console)
    page = text(client.get("/console/"))
    revision = api(console, "GET", "/ready").json["revision"]
    assert f'<span class="fact-value num">{revision}</span>' in page
    assert console.replica_id in page
    assert "1 of 1" in page


def test_the_live_figures_count_real_traffic(console: RunningDispatcher) -> None:
    deploy(console, "gateway", "tests.workers:identity")
    client = logged_in(console)
    host, port = urlsplit(console.url).hostname, urlsplit(console.url).port
    figures: dict[str, Any] = {}
    for _ in range(60):  # a reading every 2 s: wait for the one after this traffic
        for _ in range(20):
            send(f"http://{host}:{port}", "GET", "/", token=None, headers={"Host": "gateway.do"})
        send(f"http://{host}:{port}", "GET", "/", token=None, headers={"Host": "nowhere.do"})
        figures = client.get("/console/api/live").json
        if figures["workers"].get("gateway", {}).get("rate"):
            break
        time.sleep(0.5)
    assert figures["available"] is True
    assert figures["workers"]["gateway"]["rate"] > 0
    assert figures["workers"]["gateway"]["errors"] == 0
    current = figures["current"]
    assert current["rate"] > 0 and 0 < current["success"] < 1 and current["not_found"] > 0
    assert json.dumps(figures)  # plain JSON: no NaN or infinity
