"""The console in a real browser: headless Debian Chromium driven by Playwright, against a
real dispatcher with a real SQLite store and its real ``/metrics``.

One browser for the module, a fresh context (cookies) per test. Screenshots go to a
temporary folder, or to ``$DISPATCHER_CONSOLE_SCREENSHOTS`` (``docs/img``) when set.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from dispatcher.app import RunningDispatcher
from tests.admin.conftest import READER, TOKEN
from tests.console.conftest import CHROMIUM, screenshot_folder

pytestmark = pytest.mark.browser

WAIT_MS: Final = 20_000
"""The longest a test waits for a page to show something (a poll is every 2 s)."""
DESKTOP: Final = ViewportSize(width=1280, height=800)
PHONE: Final = ViewportSize(width=390, height=844)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_folder(tmp_path_factory)


@pytest.fixture
def page(browser: Browser, console: RunningDispatcher) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=console.admin_url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


def log_in(page: Page, token: str = TOKEN) -> None:
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


class Traffic:
    """Requests to the dispatcher's main listener, sent from a thread until stopped."""

    def __init__(self, url: str, host: str, path: str = "/") -> None:
        self._url = urlsplit(url)
        self._host = host
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # Bounded: at most 2000 requests, paced so the charts see a steady rate.
        while not self._stop.is_set() and self.sent < 2000:
            connection = http.client.HTTPConnection(self._url.hostname or "", self._url.port)
            try:
                connection.request("GET", self._path, headers={"Host": self._host})
                connection.getresponse().read()
            finally:
                connection.close()
            self.sent += 1
            self._stop.wait(0.02)


PRODUCTION: Final = "dotdo-production"


def deploy_from_the_page(
    page: Page,
    worker: str,
    app: str,
    version: str,
    metadata: str = "",
    *,
    shots: Path | None = None,
) -> None:
    """Deploy through the form, the review and the confirmation, as an operator would."""
    page.goto("/console/namespaces")
    row = page.locator(f'#ns-{PRODUCTION} tr[data-worker="{worker}"]')
    if row.count():
        row.get_by_role("link", name=f"Deploy a new version of {worker}").click()
    else:
        page.locator(f"#ns-{PRODUCTION}").get_by_role("link", name="Deploy a worker").click()
        page.locator("#worker").fill(worker)
    page.get_by_role("radio", name="In-process ASGI app").check()
    page.locator("#app").fill(app)
    page.locator("#version").fill(version)
    page.locator("#metadata").fill(metadata)
    page.get_by_role("button", name="Review").click()
    confirm = page.get_by_role("button", name=f"Deploy {worker} to production")
    expect(confirm).to_be_visible()
    expect(page.locator(".destination")).to_contain_text("production")
    if shots is not None:
        page.screenshot(path=shots / "console-confirm.png", full_page=True)
    confirm.click()
    expect(page.get_by_role("status")).to_contain_text(f"Deployed {worker} version")


def resolve(page: Page, url: str) -> None:
    page.goto("/console/routes")
    page.get_by_label("URL").fill(url)
    page.get_by_role("button", name="Resolve").click()


def served_app(console: RunningDispatcher, host: str) -> str:
    """Which test app answers ``host`` on the dispatcher's main listener now."""
    parts = urlsplit(console.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": host})
        answer: dict[str, str] = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return answer["app"]


def test_the_operator_story(page: Page, console: RunningDispatcher, shots: Path) -> None:
    """Log in, resolve a URL, deploy a worker twice, see its traffic, roll it back, and
    find the rollback in the history; HTML in the metadata shows as text, never runs."""
    log_in(page)
    resolve(page, "https://webhooks.do/hooks")
    expect(page.locator("[data-outcome]")).to_have_attribute("data-outcome", "not_deployed")

    script = "<script>window.__pwned = 1</script><b>bold</b>"
    deploy_from_the_page(page, "webhooks", "tests.workers:identity", "v1", f"ticket={script}")
    deploy_from_the_page(
        page, "webhooks", "tests.workers:identity_v2", "v2", "ticket=OPS-2", shots=shots
    )
    expect(page.locator('tr[data-worker="webhooks"]')).to_contain_text("v2")

    resolve(page, "https://webhooks.do/hooks?x=1")
    expect(page.locator("[data-outcome]")).to_have_attribute("data-outcome", "routed")
    expect(page.locator('[data-field="worker"]')).to_have_text("webhooks")
    expect(page.locator('[data-field="namespace"]')).to_have_text(PRODUCTION)
    expect(page.locator('[data-field="version"]')).to_contain_text("v2")
    expect(page.locator('[data-field="target"]')).to_have_text("app tests.workers:identity_v2")
    page.screenshot(path=shots / "console-routes.png", full_page=False)

    with Traffic(console.url, "webhooks.do") as traffic, Traffic(console.url, "nowhere.do"):
        page.goto("/console/namespaces")
        rate = page.locator('[data-worker-rate="webhooks"]')
        expect(rate).to_have_text(re.compile(r"^(?!0\.00 )\d+(\.\d+)? /s$"))
        expect(page.locator('[data-worker-errors="webhooks"]')).to_have_text("0.00 %")
        page.screenshot(path=shots / "console-namespaces.png", full_page=True)
        page.goto("/console/")
        expect(page.locator('[data-chart="rate"] [data-live="rate"]')).to_have_text(
            re.compile(r"^(?!0\.00 )\d")
        )
        expect(page.locator('[data-line="rate"]')).to_have_attribute("d", re.compile("L"))
        page.screenshot(path=shots / "console-overview.png", full_page=True)
        assert traffic.sent > 0

    page.goto("/console/namespaces")
    page.get_by_role("link", name="Roll back webhooks").click()
    expect(page.locator(".destination")).to_contain_text("production")
    expect(page.get_by_text("app tests.workers:identity", exact=True)).to_be_visible()
    page.get_by_role("button", name="Roll back webhooks in production").click()
    expect(page.get_by_role("status")).to_contain_text(
        "Rolled back webhooks in production (dotdo-production): now version 3 "
        "(the target of version 1)."
    )
    assert served_app(console, "webhooks.do") == "identity"

    page.goto("/console/history")
    page.get_by_label("Worker").fill("webhooks")
    page.get_by_label("Actor").fill("admin")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("rollback")
    expect(rows.first).to_contain_text("(target of v1)")
    expect(rows.last).to_contain_text(script)  # shown as text, escaped
    page.screenshot(path=shots / "console-history.png", full_page=True)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("table.history b").count() == 0


def test_a_page_without_a_session_goes_to_the_login_form_and_back(page: Page, shots: Path) -> None:
    page.goto("/console/history?worker=gateway")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/history"))
    page.screenshot(path=shots / "console-login.png")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    expect(page.get_by_label("Worker")).to_have_value("gateway")


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token-of-this-dispatcher",  # well-formed, unknown
        TOKEN + "x",  # one character off
        "two words",  # malformed
        "<script>alert(1)</script>",
    ],
)
def test_a_wrong_token_shows_one_error_that_says_nothing_more(page: Page, token: str) -> None:
    page.goto("/console/login")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That token was not accepted.")
    expect(page.get_by_label("Token")).to_have_value("")
    assert "dispatcher_console" not in {cookie["name"] for cookie in page.context.cookies()}


def test_a_change_without_the_session_csrf_token_is_refused(
    page: Page, console: RunningDispatcher
) -> None:
    deploy_by_api(console, "mcp", "tests.workers:identity")
    deploy_by_api(console, "mcp", "tests.workers:identity_v2")
    log_in(page)
    page.goto(f"/console/namespaces/{PRODUCTION}/workers/mcp/rollback")
    page.locator('main input[name="csrf"]').evaluate("field => field.value = 'forged'")
    page.get_by_role("button", name="Roll back mcp in production").click()
    expect(page.get_by_role("heading", name="Error 403")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("did not come from this console")
    assert served_app(console, "mcp.do") == "identity_v2"
    page.goto(f"/console/namespaces/{PRODUCTION}/workers/mcp/rollback")
    page.locator('main input[name="csrf"]').evaluate("field => field.remove()")
    page.get_by_role("button", name="Roll back mcp in production").click()
    expect(page.get_by_role("heading", name="Error 403")).to_be_visible()
    assert served_app(console, "mcp.do") == "identity_v2"


def test_a_read_token_sees_everything_and_changes_nothing(
    page: Page, console: RunningDispatcher
) -> None:
    deploy_by_api(console, "queue", "tests.workers:identity")
    log_in(page, READER)
    page.goto("/console/namespaces")
    expect(page.locator('tr[data-worker="queue"]')).to_be_visible()
    expect(page.get_by_role("link", name="Deploy a worker")).to_have_count(0)
    expect(page.get_by_role("link", name="Undeploy queue")).to_have_count(0)
    expect(page.locator(".who .tag")).to_have_text("read only")
    page.goto(f"/console/namespaces/{PRODUCTION}/workers/queue/undeploy")
    expect(page.get_by_role("heading", name="Error 403")).to_be_visible()
    assert served_app(console, "queue.do") == "identity"


def test_every_page_is_reachable_by_keyboard(page: Page) -> None:
    log_in(page)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.goto("/console/")
    for _ in range(4):  # skip link, brand, Overview, Routes
        page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Routes")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Routes")).to_be_visible()
    page.get_by_label("URL").focus()
    page.keyboard.type("https://api.do/api/auth/login")
    page.keyboard.press("Enter")
    expect(page.locator('[data-field="worker"]')).to_have_text("auth")


@pytest.mark.parametrize(
    "path", ["/console/", "/console/routes?url=api.do/x", "/console/namespaces", "/console/history"]
)
def test_pages_fit_a_phone_width(browser: Browser, console: RunningDispatcher, path: str) -> None:
    context = browser.new_context(viewport=PHONE, base_url=console.admin_url)
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        log_in(page)
        page.goto(path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0, f"{path} is {overflow} px wider than a phone"
    finally:
        context.close()


def test_live_numbers_update_without_moving_the_layout(
    page: Page, console: RunningDispatcher
) -> None:
    log_in(page)
    page.evaluate(
        """() => {
            window.__shift = 0;
            new PerformanceObserver((list) => {
                for (const entry of list.getEntries()) window.__shift += entry.value;
            }).observe({ type: "layout-shift", buffered: true });
        }"""
    )
    rate = page.locator('[data-chart="rate"] [data-live="rate"]')
    line = page.locator('[data-line="rate"]')
    with Traffic(console.url, "email.do"):
        expect(rate).to_have_text(re.compile(r"^(?!0\.00 )\d"))
        drawn = line.get_attribute("d") or ""
        expect(line).not_to_have_attribute("d", drawn)  # a later poll redrew the chart
    assert page.evaluate("window.__shift") == 0


def deploy_by_api(console: RunningDispatcher, worker: str, app: str) -> None:
    parts = urlsplit(console.admin_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(
            "PUT",
            f"/namespaces/{PRODUCTION}/workers/{worker}",
            body=json.dumps({"app": app}),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status in (200, 201)


def test_the_chart_script_formats_and_draws(page: Page) -> None:
    page.goto("/console/login")  # no chart here: importing the module starts no polling
    results = page.evaluate(
        """async () => {
            const m = await import("/console/static/console.js");
            const points = [{ago: 4, rate: 1}, {ago: 2, rate: null}, {ago: 0, rate: 2}];
            return {
                formats: [m.formatValue("req/s", 123.456), m.formatValue("req/s", 0.5),
                          m.formatValue("%", 0.95), m.formatValue("ms", 0.00025),
                          m.formatValue("ms", 0.0125), m.formatValue("ms", null)],
                nice: [m.niceMax(0), m.niceMax(0.3), m.niceMax(3), m.niceMax(7.1), m.niceMax(40)],
                path: m.pathOf(points, "rate", 2, 10, 2),
                gap: m.pathOf([{ago: 60, rate: 1}, {ago: 0, rate: 1}], "rate", 2, 60, 2),
                span: [m.spanOf({points: [], interval: 2, window: 300}),
                       m.spanOf({points: [{ago: 100}], interval: 2, window: 300}),
                       m.spanOf({points: [{ago: 400}], interval: 2, window: 300})],
            };
        }"""
    )
    assert results == {
        "formats": ["123 /s", "0.50 /s", "95.00 %", "250 µs", "12.50 ms", "—"],
        "nice": [1, 0.5, 5, 10, 50],
        "path": "M180.0,50.0M300.0,0.0",  # the missing value breaks the line
        "gap": "M0.0,50.0M300.0,50.0",  # readings a minute apart are not joined
        "span": [60, 102, 300],
    }
