"""Console fixtures: a real dispatcher (production environment, SQLite store) serving the
console on its admin listener, a cookie-keeping HTTP client of it, and for the browser
tests one headless Debian Chromium per module, driven by Playwright.

Tokens are the admin tests' (``tests/admin/conftest.py``): ``TOKEN`` (full access, actor
``admin``), ``READER`` (read), ``CI`` (deploy) and ``STAGING`` (deploy, dotdo-staging only).
"""

from __future__ import annotations

import http.client
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit

import pytest

from dispatcher.app import RunningDispatcher
from dispatcher.testing import DispatcherThread
from tests.admin.conftest import Answer, admin_environ

CHROMIUM: Final = "/usr/bin/chromium"
SCREENSHOTS_VARIABLE: Final = "DISPATCHER_CONSOLE_SCREENSHOTS"
"""Set to a folder (docs/img) to keep the screenshots the browser tests take there."""
_CSRF: Final = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDispatcher]:
    """One dispatcher per module, serving production, with the console on its admin port."""
    directory = tmp_path_factory.mktemp("console")
    with DispatcherThread(environment="production", environ=admin_environ(directory)) as running:
        yield running


@dataclass
class ConsoleClient:
    """A browser without a browser: real HTTP to the admin listener, keeping cookies."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        parts = urlsplit(self.base)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            self._keep(response.headers.get_all("set-cookie") or [])
            headers_seen = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, headers_seen, response.read())
        finally:
            connection.close()

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: Mapping[str, str], **headers: str) -> Answer:
        return self.request("POST", path, form, headers)

    def login(self, token: str, next_target: str = "") -> Answer:
        form_page = self.get("/console/login")
        nonce = csrf_of(form_page)
        return self.post("/console/login", {"csrf": nonce, "token": token, "next": next_target})

    def csrf(self) -> str:
        """The session's CSRF token, as the pages carry it."""
        return csrf_of(self.get("/console/namespaces"))

    def _keep(self, set_cookies: list[str]) -> None:
        for line in set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value


def csrf_of(answer: Answer) -> str:
    found = _CSRF.search(answer.body.decode())
    assert found is not None, f"no CSRF field in the page (status {answer.status})"
    return found.group(1)


@pytest.fixture
def client(console: RunningDispatcher) -> ConsoleClient:
    return ConsoleClient(console.admin_url)


def screenshot_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests keep their screenshots: ``$DISPATCHER_CONSOLE_SCREENSHOTS``
    (the docs refresh theirs this way), else a temporary folder."""
    chosen = os.environ.get(SCREENSHOTS_VARIABLE)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")
