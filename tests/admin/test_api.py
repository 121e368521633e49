"""The Deploy API over real HTTP against a real dispatcher: every endpoint, its errors with
their whole JSON bodies, auth, and that a refused request writes nothing (SQLite and
PostgreSQL where the store is involved).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final

import pytest

from dispatcher.auth import Permission
from tests.admin.conftest import CI, DEV, PROD, READER, STAGE, STAGING, TOKEN, Answer, Api

WORKER: Final = f"/namespaces/{DEV}/workers/gateway"
UPSTREAM: Final = "http://127.0.0.1:9"
TIMESTAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
NAME_RULE: Final = "must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
URL_SHAPE: Final = "url must be a URL string or an array of 1 to 64 URL strings"
NOWHERE: Final = 'namespace "nowhere" does not exist in the registry store'
TOO_LARGE: Final = {
    "error": "Payload too large",
    "message": "request body is larger than 1048576 bytes",
    "code": "payload_too_large",
}


def error(status_title: str, code: str, message: str, field: str | None = None) -> dict[str, str]:
    body = {"error": status_title, "message": message, "code": code}
    if field is not None:
        body["field"] = field
    return body


def without_convergence(body: dict[str, Any]) -> dict[str, Any]:
    """A write's answer without "converged" and "replicas" (test_convergence.py's subject)."""
    assert body.pop("converged") is True
    assert len(body.pop("replicas")) == 1
    return body


def invalid(message: str, field: str) -> dict[str, str]:
    return error("Validation failed", "validation_failed", message, field)


def bad(message: str, field: str | None = None) -> dict[str, str]:
    return error("Bad request", "bad_request", message, field)


def record(answer: Answer) -> dict[str, Any]:
    """The body with its timestamp checked and removed, and a write's convergence fields
    (tests/admin/test_convergence.py covers those)."""
    body: dict[str, Any] = answer.json
    assert TIMESTAMP.fullmatch(body.pop("deployed_at"))
    if "converged" in body:
        assert body.pop("converged") is True
        assert len(body.pop("replicas")) == 1
    return body


# --- health and the OpenAPI document -------------------------------------------------------


async def test_health_needs_no_token(admin: Api) -> None:
    answer = await admin("GET", "/health", token=None)

    assert (answer.status, answer.json) == (200, {"status": "ok"})
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"


async def test_openapi_document_is_generated_from_the_route_table(admin: Api) -> None:
    answer = await admin("GET", "/openapi.json", token=None)
    document = answer.json

    assert answer.status == 200
    assert document["openapi"] == "3.1.0"
    operations = {
        (path, method.upper()): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert sorted(operations) == sorted(
        [
            ("/health", "GET"),
            ("/ready", "GET"),
            ("/metrics", "GET"),
            ("/reload", "POST"),
            ("/openapi.json", "GET"),
            ("/namespaces", "GET"),
            ("/namespaces/{namespace}", "PUT"),
            ("/namespaces/{namespace}", "DELETE"),
            ("/namespaces/{namespace}/workers", "GET"),
            ("/namespaces/{namespace}/workers/{worker}", "GET"),
            ("/namespaces/{namespace}/workers/{worker}", "PUT"),
            ("/namespaces/{namespace}/workers/{worker}", "DELETE"),
            ("/namespaces/{namespace}/workers/{worker}/rollback", "POST"),
            ("/deployments", "GET"),
        ]
    )
    ids = [operation["operationId"] for operation in operations.values()]
    assert len(set(ids)) == len(ids)
    for (path, _), operation in operations.items():
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path))
        if operation["security"]:
            assert {"401", "403"} <= set(operation["responses"])
    references = re.findall(r'"\$ref":"#/components/schemas/(\w+)"', answer.body.decode())
    assert references and set(references) <= set(document["components"]["schemas"])
    deploy = operations[("/namespaces/{namespace}/workers/{worker}", "PUT")]
    assert deploy["x-scope"] == Permission.DEPLOY
    assert deploy["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeployRequest"
    }


# --- namespaces ----------------------------------------------------------------------------


async def test_namespaces_say_which_environment_they_serve(admin: Api) -> None:
    answer = await admin("GET", "/namespaces")

    assert (answer.status, answer.json) == (
        200,
        {
            "namespaces": [
                {"name": DEV, "environment": "development", "serving": True},
                {"name": PROD, "environment": "production", "serving": False},
                {"name": STAGE, "environment": "staging", "serving": False},
            ]
        },
    )


async def test_a_namespace_is_created_once_and_deleted(admin_any: Api) -> None:
    created = await admin_any("PUT", "/namespaces/team-a")
    again = await admin_any("PUT", "/namespaces/team-a", body={})
    deleted = await admin_any("DELETE", "/namespaces/team-a")
    missing = await admin_any("DELETE", "/namespaces/team-a")

    team = {"name": "team-a", "environment": None, "serving": False}
    assert (created.status, without_convergence(created.json)) == (201, team)
    assert (again.status, without_convergence(again.json)) == (200, team)
    assert (deleted.status, deleted.body) == (204, b"")
    assert (missing.status, missing.json) == (
        404,
        error(
            "Not found",
            "not_found",
            'namespace "team-a" does not exist in the registry store',
            "namespace",
        ),
    )


async def test_a_namespace_holding_workers_is_deleted_only_with_force(admin_any: Api) -> None:
    await admin_any("PUT", "/namespaces/team-a")
    await admin_any("PUT", "/namespaces/team-a/workers/api", body={"url": UPSTREAM})

    refused = await admin_any("DELETE", "/namespaces/team-a")
    forced = await admin_any("DELETE", "/namespaces/team-a?force=true")

    assert (refused.status, refused.json) == (
        409,
        error(
            "Conflict",
            "conflict",
            'namespace "team-a" still holds 1 worker(s): api; undeploy them first or delete '
            "with force",
            "namespace",
        ),
    )
    assert forced.status == 204
    assert [n["name"] for n in (await admin_any("GET", "/namespaces")).json["namespaces"]] == [
        DEV,
        PROD,
        STAGE,
    ]


async def test_a_bound_namespace_cannot_be_deleted(admin: Api) -> None:
    answer = await admin("DELETE", f"/namespaces/{PROD}?force=true")

    assert (answer.status, answer.json) == (
        409,
        error(
            "Conflict",
            "conflict",
            f'namespace "{PROD}" is bound to the production environment in this dispatcher\'s '
            "configuration; unbind it there first",
            "namespace",
        ),
    )


# --- workers -------------------------------------------------------------------------------


async def test_first_deploy_is_201_and_the_next_200(admin_any: Api) -> None:
    first = await admin_any(
        "PUT", WORKER, body={"url": UPSTREAM, "metadata": {"commit": "3f2a9c1", "branch": "main"}}
    )
    second = await admin_any("PUT", WORKER, body={"app": "dispatcher.echo:app"}, token=CI)

    assert first.status == 201
    assert first.headers["location"] == WORKER
    assert record(first) == {
        "namespace": DEV,
        "worker": "gateway",
        "version": 1,
        "version_label": None,
        "previous_version": None,
        "target": {"url": UPSTREAM},
        "actor": "admin",
        "metadata": {"commit": "3f2a9c1", "branch": "main"},
        "revision": 2,
    }
    assert second.status == 200
    assert "location" not in second.headers
    assert record(second) == {
        "namespace": DEV,
        "worker": "gateway",
        "version": 2,
        "version_label": None,
        "previous_version": 1,
        "target": {"app": "dispatcher.echo:app"},
        "actor": "ci",
        "metadata": {},
        "revision": 3,
    }


async def test_several_urls_and_preserve_host_are_kept(admin: Api) -> None:
    urls = ["http://127.0.0.1:9", "https://10.0.0.5:8443"]

    answer = await admin("PUT", WORKER, body={"url": urls, "preserve_host": False})

    assert answer.json["target"] == {"url": urls, "preserve_host": False}


async def test_a_labelled_deploy_pins_the_version_as_its_own_worker(admin_any: Api) -> None:
    answer = await admin_any("PUT", WORKER, body={"url": UPSTREAM, "version": "v2"})
    later = await admin_any("PUT", WORKER, body={"url": "http://127.0.0.1:10"})
    listing = await admin_any("GET", f"/namespaces/{DEV}/workers")

    assert (answer.status, answer.json["pinned_worker"], answer.json["version_label"]) == (
        201,
        "gateway-v2",
        "v2",
    )
    assert later.json["version_label"] is None
    assert [
        (w["worker"], w["version"], w["version_label"], w["target"])
        for w in listing.json["workers"]
    ] == [
        ("gateway", 2, None, {"url": "http://127.0.0.1:10"}),
        ("gateway-v2", 1, "v2", {"url": UPSTREAM}),
    ]


async def test_a_dotted_label_pins_with_dashes(admin: Api) -> None:
    answer = await admin("PUT", WORKER, body={"url": UPSTREAM, "version": "1.2.0"})

    assert answer.json["pinned_worker"] == "gateway-1-2-0"


async def test_get_shows_the_current_version_and_who_deployed_it(admin: Api) -> None:
    await admin("PUT", WORKER, body={"url": UPSTREAM}, token=CI)

    answer = await admin("GET", WORKER, token=READER)

    assert answer.status == 200
    assert record(answer) == {
        "namespace": DEV,
        "worker": "gateway",
        "version": 1,
        "version_label": None,
        "previous_version": None,
        "target": {"url": UPSTREAM},
        "actor": "ci",
        "metadata": {},
        "revision": 2,
    }


async def test_undeploy_removes_the_worker(admin_any: Api) -> None:
    await admin_any("PUT", WORKER, body={"url": UPSTREAM})

    removed = await admin_any("DELETE", WORKER)
    gone = await admin_any("GET", WORKER)
    again = await admin_any("DELETE", WORKER)

    not_deployed = error(
        "Not found", "not_found", f'worker "gateway" is not deployed in namespace "{DEV}"', "worker"
    )
    assert (removed.status, removed.body) == (204, b"")
    assert (gone.status, gone.json) == (404, not_deployed)
    assert (again.status, again.json) == (404, not_deployed)
    assert (await admin_any("GET", f"/namespaces/{DEV}/workers")).json == {
        "namespace": DEV,
        "workers": [],
    }


async def test_workers_of_a_missing_namespace_is_404(admin: Api) -> None:
    answer = await admin("GET", "/namespaces/nowhere/workers")

    assert (answer.status, answer.json) == (
        404,
        error(
            "Not found",
            "not_found",
            'namespace "nowhere" does not exist in the registry store',
            "namespace",
        ),
    )


# --- rollback ------------------------------------------------------------------------------


async def test_rollback_redeploys_the_previous_target(admin_any: Api) -> None:
    await admin_any("PUT", WORKER, body={"url": UPSTREAM, "version": "v1"})
    await admin_any("PUT", WORKER, body={"url": "http://127.0.0.1:10", "version": "v2"})

    answer = await admin_any("POST", WORKER + "/rollback", token=CI)
    trail = await admin_any("GET", "/deployments?limit=1")

    assert answer.status == 200
    assert record(answer) == {
        "namespace": DEV,
        "worker": "gateway",
        "version": 3,
        "version_label": "v1",
        "previous_version": None,
        "target": {"url": UPSTREAM},
        "actor": "ci",
        "metadata": {},
        "revision": 4,
        "restored_version": 1,
    }
    (entry,) = trail.json["deployments"]
    assert (entry["action"], entry["version"], entry["restored_version"], entry["actor"]) == (
        "rollback",
        3,
        1,
        "ci",
    )


@pytest.mark.parametrize(
    ("deploys", "status", "body"),
    [
        (
            1,
            409,
            error(
                "Conflict",
                "conflict",
                f'worker "gateway" in namespace "{DEV}" has no version before its current '
                "version 1 to roll back to",
                "worker",
            ),
        ),
        (
            0,
            404,
            error(
                "Not found",
                "not_found",
                f'worker "gateway" is not deployed in namespace "{DEV}"',
                "worker",
            ),
        ),
    ],
    ids=["no-previous-version", "not-deployed"],
)
async def test_a_refused_rollback_writes_nothing(
    admin_any: Api, deploys: int, status: int, body: dict[str, str]
) -> None:
    for _ in range(deploys):
        await admin_any("PUT", WORKER, body={"url": UPSTREAM})
    before = await admin_any.state()

    answer = await admin_any("POST", WORKER + "/rollback")

    assert (answer.status, answer.json) == (status, body)
    assert await admin_any.state() == before


# --- the audit trail -----------------------------------------------------------------------


async def test_deployments_are_newest_first_with_filters(admin: Api) -> None:
    await admin("PUT", WORKER, body={"url": UPSTREAM})
    await admin("PUT", f"/namespaces/{STAGE}/workers/db", body={"url": UPSTREAM}, token=STAGING)
    await admin("PUT", WORKER, body={"url": "http://127.0.0.1:10"})
    await admin("DELETE", WORKER)

    every = await admin("GET", "/deployments")
    gateway = await admin("GET", f"/deployments?namespace={DEV}&worker=gateway&limit=2")
    staging_view = await admin("GET", "/deployments", token=STAGING)

    def rows(answer: Answer) -> list[tuple[Any, ...]]:
        return [
            (e["revision"], e["action"], e["namespace"], e["worker"], e["version"], e["actor"])
            for e in answer.json["deployments"]
        ]

    assert rows(every) == [
        (5, "undeploy", DEV, "gateway", 2, "admin"),
        (4, "deploy", DEV, "gateway", 2, "admin"),
        (3, "deploy", STAGE, "db", 1, "staging-deployer"),
        (2, "deploy", DEV, "gateway", 1, "admin"),
    ]
    assert rows(gateway) == rows(every)[:2]
    assert rows(staging_view) == [(3, "deploy", STAGE, "db", 1, "staging-deployer")]
    (undeploy, *_) = every.json["deployments"]
    assert undeploy["target"] is None and TIMESTAMP.fullmatch(undeploy["at"])


# --- bad input: the right 4xx, the field named, nothing written ----------------------------

BAD_INPUT: Final[list[Any]] = [
    pytest.param(
        "PUT", f"/namespaces/{DEV}/workers/Gateway", {"url": UPSTREAM}, None, 400,
        bad(f"worker name {NAME_RULE} (got 'Gateway')", "worker"), id="worker-name-case",
    ),
    pytest.param(
        "PUT", f"/namespaces/{DEV}/workers/{'a' * 64}", {"url": UPSTREAM}, None, 400,
        bad(f"worker name {NAME_RULE} (got '{'a' * 64}')", "worker"), id="worker-name-64",
    ),
    pytest.param(
        "PUT", "/namespaces/dotdo_dev/workers/gateway", {"url": UPSTREAM}, None, 400,
        bad(f"namespace name {NAME_RULE} (got 'dotdo_dev')", "namespace"), id="namespace-name",
    ),
    pytest.param(
        "PUT", f"/namespaces/{DEV}/workers/a%2Fb", {"url": UPSTREAM}, None, 400,
        bad("encoded '%2F' is not allowed in the path"), id="encoded-slash",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "ftp://127.0.0.1:9"}, None, 422,
        invalid("url must be an http:// or https:// URL (got 'ftp://127.0.0.1:9')", "url"),
        id="url-ftp",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "http+unix://%2Frun%2Fa.sock"}, None, 422,
        invalid(
            "url must be an http:// or https:// URL (got 'http+unix://%2Frun%2Fa.sock')", "url"
        ),
        id="url-unix-socket",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "not a url"}, None, 422,
        invalid("url must be an http:// or https:// URL (got 'not a url')", "url"),
        id="url-not-a-url",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "http://user:pw@127.0.0.1:9"}, None, 422,
        invalid(
            "url: credentials in an upstream URL are not allowed (http://***@127.0.0.1:9)", "url"
        ),
        id="url-credentials",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "http://127.0.0.1:99999"}, None, 422,
        invalid("url: invalid port in 'http://127.0.0.1:99999'", "url"), id="url-port",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "http://127.0.0.1:9/path"}, None, 422,
        invalid(
            "url: an upstream URL has no path, query or fragment "
            "(got 'http://127.0.0.1:9/path')", "url",
        ),
        id="url-path",
    ),
    pytest.param(
        "PUT", WORKER, {"url": "http://169.254.169.254"}, None, 422,
        invalid("url: link-local addresses are not allowed (got 169.254.169.254)", "url"),
        id="url-metadata-service",
    ),
    pytest.param(
        "PUT", WORKER, {"url": ["http://a:1", "http://a:1"]}, None, 422,
        invalid("url lists the same upstream twice", "url"), id="url-twice",
    ),
    pytest.param(
        "PUT", WORKER, {"url": ["http://a:1", 5]}, None, 422,
        invalid("url[1] must be a URL string (got a number (5))", "url[1]"), id="url-item-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": []}, None, 422,
        invalid(f"{URL_SHAPE} (got an array)", "url"),
        id="url-empty-list",
    ),
    pytest.param(
        "PUT", WORKER, {"url": 5}, None, 422,
        invalid(f"{URL_SHAPE} (got a number (5))", "url"),
        id="url-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "colour": "red"}, None, 422,
        invalid(
            "unknown field 'colour' (expected app, metadata, preserve_host, url, version)",
            "colour",
        ),
        id="unknown-field",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "preserve_host": "yes"}, None, 422,
        invalid("preserve_host must be true or false (got a string ('yes'))", "preserve_host"),
        id="preserve-host-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "version": "V2"}, None, 422,
        invalid(
            "version must be 1 to 31 characters of a-z, 0-9, '.' and '-', starting with a "
            "letter or digit, such as 'v2' (got a string ('V2'))", "version",
        ),
        id="version-case",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "version": 2}, None, 422,
        invalid(
            "version must be 1 to 31 characters of a-z, 0-9, '.' and '-', starting with a "
            "letter or digit, such as 'v2' (got a number (2))", "version",
        ),
        id="version-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "version": "v2-"}, None, 422,
        invalid(
            "version 'v2-' would pin the worker as 'gateway-v2-', which is not a valid worker "
            "name (1 to 63 characters of a-z, 0-9 and '-', not ending with '-')", "version",
        ),
        id="version-pins-a-bad-name",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "metadata": ["a"]}, None, 422,
        invalid("metadata must be an object of strings (got an array)", "metadata"),
        id="metadata-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "metadata": {"commit": 1}}, None, 422,
        invalid("metadata.commit must be a string (got a number (1))", "metadata.commit"),
        id="metadata-value-type",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "metadata": {"bad key": "x"}}, None, 422,
        invalid(
            "metadata key 'bad key' must be 1 to 64 characters of letters, digits and "
            "_ . : / -, starting with a letter or digit", "metadata",
        ),
        id="metadata-key",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "metadata": {"note": "a\nb"}}, None, 422,
        invalid(
            "metadata.note must be at most 1024 characters without control characters",
            "metadata.note",
        ),
        id="metadata-control-character",
    ),
    pytest.param(
        "PUT", WORKER, {"url": UPSTREAM, "metadata": {f"k{i}": "v" for i in range(65)}}, None,
        422, invalid("metadata has 65 entries; at most 64 are allowed", "metadata"),
        id="metadata-too-many",
    ),
    pytest.param(
        "PUT", WORKER, {"app": "nope"}, None, 422,
        invalid("app must look like 'package.module:attribute' (got 'nope')", "app"),
        id="app-path",
    ),
    pytest.param(
        "PUT", WORKER, {"app": 7}, None, 422,
        invalid("app must be a string (got a number (7))", "app"), id="app-type",
    ),
    pytest.param(
        "PUT", WORKER, {"app": "a:b", "url": UPSTREAM}, None, 422,
        invalid("give either url or app, not both", "app"), id="url-and-app",
    ),
    pytest.param(
        "PUT", WORKER, {"app": "a:b", "preserve_host": True}, None, 422,
        invalid("preserve_host applies to url workers only", "preserve_host"),
        id="app-preserve-host",
    ),
    pytest.param(
        "PUT", WORKER, {}, None, 422,
        invalid(
            "required: url (an upstream such as 'http://10.0.0.5:8080') or app (an in-process "
            "ASGI app as 'module:attribute')", "url",
        ),
        id="no-target",
    ),
    pytest.param(
        "PUT", WORKER, [1], None, 422,
        invalid("the body must be a JSON object (got an array)", "body"), id="body-array",
    ),
    pytest.param(
        "PUT", WORKER, None, b"{not json", 400,
        bad(
            "the request body is not valid JSON: Expecting property name enclosed in double "
            "quotes at line 1, column 2", "body",
        ),
        id="body-not-json",
    ),
    pytest.param(
        "PUT", WORKER, None, b"", 400,
        bad("the request body is empty; expected a JSON object", "body"), id="body-empty",
    ),
    pytest.param(
        "PUT", WORKER, None, b'{"url":"http://a:1","url":"http://b:1"}', 400,
        bad("the request body is not valid JSON: duplicate key 'url'", "body"),
        id="body-duplicate-key",
    ),
    pytest.param(
        "PUT", WORKER, None, b'{"url":NaN}', 400,
        bad("the request body is not valid JSON: NaN is not a JSON value", "body"), id="body-nan",
    ),
    pytest.param(
        "PUT", WORKER, None, b"\xff\xfe{", 400,
        bad("the request body is not valid UTF-8 JSON", "body"), id="body-not-utf8",
    ),
    pytest.param(
        "PUT", WORKER, None, b'{"url": "http://a:1", "metadata": {"x": "' + b"a" * 1048576 + b'"}}',
        413,
        TOO_LARGE,
        id="body-over-1-mib",
    ),
    pytest.param(
        "PUT", "/namespaces/nowhere/workers/gateway", {"url": UPSTREAM}, None, 404,
        error("Not found", "not_found", NOWHERE, "namespace"),
        id="namespace-missing",
    ),
    pytest.param(
        "POST", WORKER + "/rollback", {"to": 1}, None, 422,
        invalid("unknown field 'to' (this endpoint takes none)", "to"), id="rollback-field",
    ),
    pytest.param(
        "PUT", "/namespaces/team-a", {"x": 1}, None, 422,
        invalid("unknown field 'x' (this endpoint takes none)", "x"), id="namespace-field",
    ),
    pytest.param(
        "DELETE", "/namespaces/team-a?force=yes", None, None, 400,
        bad("force must be true or false (got 'yes')", "force"), id="force-value",
    ),
    pytest.param(
        "GET", "/deployments?limit=0", None, None, 400,
        bad("limit must be an integer from 1 to 1000 (got '0')", "limit"), id="limit-zero",
    ),
    pytest.param(
        "GET", "/deployments?limit=abc", None, None, 400,
        bad("limit must be an integer from 1 to 1000 (got 'abc')", "limit"), id="limit-text",
    ),
    pytest.param(
        "GET", "/deployments?colour=red", None, None, 400,
        bad("unknown query parameter 'colour' (accepted: limit, namespace, worker)", "colour"),
        id="unknown-query",
    ),
    pytest.param(
        "GET", "/deployments?worker=a&worker=b", None, None, 400,
        bad("query parameter 'worker' is given twice", "worker"), id="query-twice",
    ),
    pytest.param(
        "GET", "/deployments?namespace=BAD", None, None, 400,
        bad(f"namespace name {NAME_RULE} (got 'BAD')", "namespace"), id="query-name",
    ),
    pytest.param(
        "GET", WORKER + "/", None, None, 404,
        error("Not found", "not_found", f"no such endpoint: GET {WORKER}/"), id="trailing-slash",
    ),
    pytest.param(
        "GET", "/admin", None, None, 404,
        error("Not found", "not_found", "no such endpoint: GET /admin"), id="unknown-route",
    ),
    pytest.param(
        "PATCH", WORKER, None, None, 405,
        error(
            "Method not allowed", "method_not_allowed",
            "PATCH is not allowed here (allowed: DELETE, GET, PUT)",
        ),
        id="wrong-method",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "raw", "status", "expected"), BAD_INPUT)
async def test_bad_input_is_refused_and_writes_nothing(
    admin_any: Api,
    method: str,
    path: str,
    body: object,
    raw: bytes | None,
    status: int,
    expected: dict[str, str],
) -> None:
    await admin_any("PUT", WORKER, body={"url": UPSTREAM})
    before = await admin_any.state()

    answer = await admin_any(method, path, body=body, raw=raw)

    assert (answer.status, answer.json) == (status, expected)
    assert await admin_any.state() == before


async def test_wrong_method_names_the_allowed_ones(admin: Api) -> None:
    answer = await admin("DELETE", "/health")

    assert (answer.status, answer.headers["allow"]) == (405, "GET")


async def test_a_chunked_body_over_1_mib_is_413(admin: Api) -> None:
    before = await admin.state()

    answer = await asyncio.to_thread(chunked_put, admin.url, 48 * 65536)

    assert answer == (
        413,
        error(
            "Payload too large", "payload_too_large", "request body is larger than 1048576 bytes"
        ),
    )
    assert await admin.state() == before


def chunked_put(url: str, size: int) -> tuple[int, Any]:
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    chunks = (b"x" * 65536 for _ in range(size // 65536))
    try:
        connection.request(
            "PUT",
            WORKER,
            body=chunks,
            headers={"Authorization": f"Bearer {TOKEN}"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# --- auth ----------------------------------------------------------------------------------

UNAUTHORIZED: Final = "Unauthorized"


@pytest.mark.parametrize(
    ("headers", "message", "challenge"),
    [
        (
            {},
            "missing bearer token: send 'Authorization: Bearer <token>'",
            'Bearer realm="dispatcher"',
        ),
        (
            {"Authorization": "Bearer not-the-right-token-at-all"},
            "unknown bearer token",
            'Bearer realm="dispatcher", error="invalid_token"',
        ),
        (
            {"Authorization": f"Basic {TOKEN}"},
            "malformed Authorization header: expected 'Bearer <token>'",
            'Bearer realm="dispatcher", error="invalid_request"',
        ),
        (
            {"Authorization": "Bearer "},
            "malformed Authorization header: expected 'Bearer <token>'",
            'Bearer realm="dispatcher", error="invalid_request"',
        ),
    ],
    ids=["missing", "wrong", "basic", "empty"],
)
async def test_a_missing_or_wrong_token_is_401(
    admin: Api, headers: dict[str, str], message: str, challenge: str
) -> None:
    before = await admin.state()

    answer = await admin("PUT", WORKER, body={"url": UPSTREAM}, token=None, headers=headers)

    assert (answer.status, answer.json) == (401, error(UNAUTHORIZED, "unauthorized", message))
    assert answer.headers["www-authenticate"] == challenge
    assert await admin.state() == before


@pytest.mark.parametrize(
    ("token", "method", "path", "message", "field"),
    [
        (READER, "PUT", WORKER, 'token "reader" lacks the deploy scope', None),
        (READER, "POST", WORKER + "/rollback", 'token "reader" lacks the deploy scope', None),
        (READER, "DELETE", "/namespaces/team-a", 'token "reader" lacks the deploy scope', None),
        (
            STAGING,
            "PUT",
            f"/namespaces/{PROD}/workers/gateway",
            f'token "staging-deployer" may not access namespace "{PROD}"',
            "namespace",
        ),
        (
            STAGING,
            "GET",
            f"/namespaces/{PROD}/workers",
            f'token "staging-deployer" may not access namespace "{PROD}"',
            "namespace",
        ),
        (
            STAGING,
            "GET",
            f"/deployments?namespace={PROD}",
            f'token "staging-deployer" may not access namespace "{PROD}"',
            "namespace",
        ),
    ],
    ids=[
        "reader-deploys",
        "reader-rolls-back",
        "reader-deletes",
        "staging-deploys-production",
        "staging-lists-production",
        "staging-reads-production-trail",
    ],
)
async def test_a_token_without_the_scope_or_namespace_is_403(
    admin_any: Api, token: str, method: str, path: str, message: str, field: str | None
) -> None:
    body = {"url": UPSTREAM} if method == "PUT" else None
    await admin_any("PUT", WORKER, body={"url": UPSTREAM})
    before = await admin_any.state()

    answer = await admin_any(method, path, body=body, token=token)

    assert (answer.status, answer.json) == (403, error("Forbidden", "forbidden", message, field))
    assert await admin_any.state() == before


async def test_a_restricted_token_sees_and_deploys_only_its_namespaces(admin: Api) -> None:
    deployed = await admin(
        "PUT", f"/namespaces/{STAGE}/workers/db", body={"url": UPSTREAM}, token=STAGING
    )
    visible = await admin("GET", "/namespaces", token=STAGING)

    assert (deployed.status, deployed.json["actor"]) == (201, "staging-deployer")
    assert visible.json == {
        "namespaces": [{"name": STAGE, "environment": "staging", "serving": False}]
    }


async def test_too_many_failures_from_one_address_are_429(admin: Api) -> None:
    wrong = {"Authorization": "Bearer wrong-token-number-0000000"}
    failures = [await admin("GET", "/namespaces", token=None, headers=wrong) for _ in range(10)]

    blocked = await admin("GET", "/namespaces")
    health = await admin("GET", "/health", token=None)

    assert [a.status for a in failures] == [401] * 10
    assert blocked.status == 429
    assert blocked.json["code"] == "too_many_failures"
    assert 1 <= int(blocked.headers["retry-after"]) <= 61
    assert health.status == 200


async def test_no_token_value_reaches_a_log_line_or_an_error_body(
    admin: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    near_miss = TOKEN[:-1] + "X"
    answers = [
        await admin("PUT", WORKER, body={"url": UPSTREAM}),
        await admin("PUT", WORKER, body={"url": "ftp://x"}, token=CI),
        await admin("PUT", WORKER, body={"url": UPSTREAM}, token=READER),
        await admin(
            "PUT", f"/namespaces/{PROD}/workers/gateway", body={"url": UPSTREAM}, token=STAGING
        ),
        await admin("PUT", WORKER, body={"url": UPSTREAM}, token=near_miss),
        await admin("GET", "/namespaces", token=None, headers={"Authorization": f"Basic {TOKEN}"}),
        await admin("POST", WORKER + "/rollback"),
    ]

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "admin: admin deployed" in logged and "refused: unknown bearer token" in logged
    for secret in (TOKEN, CI, READER, STAGING, near_miss):
        assert secret not in logged
        assert all(secret.encode() not in answer.body for answer in answers)
        assert all(secret not in str(answer.headers) for answer in answers)


# --- concurrency ---------------------------------------------------------------------------


async def test_twenty_concurrent_deploys_are_serialized(admin_any: Api) -> None:
    answers = await asyncio.gather(
        *(
            admin_any("PUT", WORKER, body={"url": f"http://127.0.0.1:{9000 + i}"}, token=CI)
            for i in range(20)
        )
    )

    assert sorted(a.status for a in answers) == [200] * 19 + [201]
    versions = sorted(a.json["version"] for a in answers)
    assert versions == list(range(1, 21))
    trail = (await admin_any("GET", "/deployments?worker=gateway&limit=100")).json["deployments"]
    assert sorted((e["version"], e["target"]["url"]) for e in trail) == sorted(
        (a.json["version"], a.json["target"]["url"]) for a in answers
    )
    current = (await admin_any("GET", WORKER)).json
    assert current["version"] == 20
