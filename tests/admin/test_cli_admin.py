"""``dispatcher deploy|workers|rollback|undeploy|history|token`` through click's runner
against a real dispatcher in a thread: exact output and exit codes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner, Result

from dispatcher.app import RunningDispatcher
from dispatcher.auth import hash_token
from dispatcher.cli import main
from dispatcher.store import ReplicaId, ReplicaInfo, open_store
from dispatcher.testing import DispatcherThread
from tests.admin.conftest import DEV, READER, STAGE, TOKEN, admin_environ, send

UPSTREAM: Final = "http://127.0.0.1:9"
OTHER: Final = "http://127.0.0.1:10"


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[RunningDispatcher]:
    with DispatcherThread(environ=admin_environ(tmp_path)) as running:
        yield running


def cli(
    running: RunningDispatcher | None,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    stdin: str | None = None,
) -> Result:
    environment: dict[str, str | None] = {
        "DISPATCHER_ADMIN_URL": running.admin_url if running is not None else None,
        "DISPATCHER_ADMIN_TOKEN": TOKEN,
        "ENVIRONMENT": None,
    }
    environment.update(env or {})
    return CliRunner().invoke(
        main, list(args), env=environment, input=stdin, prog_name="dispatcher"
    )


def api(running: RunningDispatcher, path: str) -> Any:
    return send(running.admin_url, "GET", path).json


def short(timestamp: str) -> str:
    return timestamp[:10] + " " + timestamp[11:19] + "Z"


# --- deploy --------------------------------------------------------------------------------


def test_deploy_prints_one_line_and_the_pinned_worker(dispatcher: RunningDispatcher) -> None:
    result = cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM, "--version", "v2")

    assert (result.exit_code, result.output) == (
        0,
        f"deployed gateway version 1 (v2) to {DEV}: upstream {UPSTREAM}\n"
        "pinned: gateway-v2 serves v2\n",
    )


def test_deploy_json_with_env_and_metadata(dispatcher: RunningDispatcher) -> None:
    result = cli(
        dispatcher, "deploy", "db", "--url", UPSTREAM, "--url", OTHER, "--env", "staging",
        "--meta", "commit=3f2a9c1", "--meta", "branch=main", "--no-preserve-host", "--json",
    )  # fmt: skip

    assert result.exit_code == 0
    printed = json.loads(result.output)
    # The deploy's answer adds how the replicas converged (docs/deploy-api.md).
    assert printed.pop("converged") is True
    assert [r["id"] for r in printed.pop("replicas")] == [dispatcher.replica_id]
    assert printed == api(dispatcher, f"/namespaces/{STAGE}/workers/db")
    assert (printed["target"], printed["metadata"], printed["actor"]) == (
        {"url": [UPSTREAM, OTHER], "preserve_host": False},
        {"commit": "3f2a9c1", "branch": "main"},
        "admin",
    )


def test_deploy_an_app_by_namespace_name(dispatcher: RunningDispatcher) -> None:
    result = cli(dispatcher, "deploy", "auth", "--app", "dispatcher.echo:app", "--env", STAGE)

    assert (result.exit_code, result.output) == (
        0,
        f"deployed auth version 1 to {STAGE}: app dispatcher.echo:app\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("deploy", "gateway"), "Error: give --url (one or more) or --app, not both\n"),
        (
            ("deploy", "gateway", "--url", UPSTREAM, "--app", "a:b"),
            "Error: give --url (one or more) or --app, not both\n",
        ),
        (
            ("deploy", "gateway", "--url", UPSTREAM, "--meta", "nokey"),
            "Error: Invalid value for --meta: expected KEY=VALUE, got 'nokey'\n",
        ),
    ],
)
def test_deploy_usage_errors_exit_2(
    dispatcher: RunningDispatcher, args: tuple[str, ...], message: str
) -> None:
    result = cli(dispatcher, *args)

    assert result.exit_code == 2
    assert result.output.endswith(message)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("deploy", "gateway", "--url", "ftp://x"),
            {},
            "Error: url must be an http:// or https:// URL (got 'ftp://x') (422 Validation "
            "failed)\n",
        ),
        (
            ("deploy", "gateway", "--url", UPSTREAM),
            {"DISPATCHER_ADMIN_TOKEN": READER},
            'Error: token "reader" lacks the deploy scope (403 Forbidden)\n',
        ),
        (
            ("workers",),
            {"DISPATCHER_ADMIN_TOKEN": "not-a-token-we-know-000"},
            "Error: unknown bearer token (set DISPATCHER_ADMIN_TOKEN) (401 Unauthorized)\n",
        ),
        (
            ("workers", "--env", "qa"),
            {},
            "Error: no environment or namespace 'qa' at {url} (known: development "
            "(dotdo-development), production (dotdo-production), staging (dotdo-staging))\n",
        ),
        (
            ("rollback", "gateway"),
            {},
            f'Error: worker "gateway" is not deployed in namespace "{DEV}" (404 Not found)\n',
        ),
        (
            ("undeploy", "gateway"),
            {},
            f'Error: worker "gateway" is not deployed in namespace "{DEV}" (404 Not found)\n',
        ),
    ],
    ids=["invalid-url", "read-only-token", "unknown-token", "unknown-env", "rollback", "undeploy"],
)
def test_failures_exit_1_with_the_servers_message(
    dispatcher: RunningDispatcher, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = cli(dispatcher, *args, env=env)

    assert (result.exit_code, result.output) == (1, message.format(url=dispatcher.admin_url))


def test_an_unreachable_admin_api_exits_1() -> None:
    result = cli(None, "workers", env={"DISPATCHER_ADMIN_URL": "http://127.0.0.1:1"})

    assert (result.exit_code, result.output) == (
        1,
        "Error: cannot reach the admin API at http://127.0.0.1:1: Connection refused\n",
    )


def test_a_bad_admin_url_exits_2() -> None:
    result = cli(None, "workers", env={"DISPATCHER_ADMIN_URL": "ftp://127.0.0.1"})

    assert (result.exit_code, result.output) == (
        2,
        "Error: DISPATCHER_ADMIN_URL: expected http://host:port or https://host:port "
        "(got 'ftp://127.0.0.1')\n",
    )


# --- workers, rollback, undeploy, history --------------------------------------------------


def test_workers_prints_a_table(dispatcher: RunningDispatcher) -> None:
    cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM, "--version", "v2")
    cli(dispatcher, "deploy", "db", "--app", "dispatcher.echo:app")
    deployed = {w["worker"]: w for w in api(dispatcher, f"/namespaces/{DEV}/workers")["workers"]}

    result = cli(dispatcher, "workers")

    db, gateway, pinned = (
        short(deployed[n]["deployed_at"]) for n in ("db", "gateway", "gateway-v2")
    )
    assert (result.exit_code, result.output) == (
        0,
        "WORKER      VERSION  LABEL  TARGET                       DEPLOYED              BY\n"
        f"db          1        -      app dispatcher.echo:app      {db}  admin\n"
        f"gateway     1        v2     upstream http://127.0.0.1:9  {gateway}  admin\n"
        f"gateway-v2  1        v2     upstream http://127.0.0.1:9  {pinned}  admin\n",
    )


def test_workers_of_an_empty_namespace_and_json(dispatcher: RunningDispatcher) -> None:
    empty = cli(dispatcher, "workers", "--env", "production")
    as_json = cli(dispatcher, "workers", "--env", "production", "--json")

    assert (empty.exit_code, empty.output) == (0, "no workers deployed in dotdo-production\n")
    assert json.loads(as_json.output) == {"namespace": "dotdo-production", "workers": []}


def test_rollback_names_the_restored_version(dispatcher: RunningDispatcher) -> None:
    cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM)
    cli(dispatcher, "deploy", "gateway", "--url", OTHER)

    rolled = cli(dispatcher, "rollback", "gateway")
    refused = cli(dispatcher, "rollback", "gateway")

    assert (rolled.exit_code, rolled.output) == (
        0,
        f"rolled back gateway in {DEV} to version 1: now version 3, upstream {UPSTREAM}\n",
    )
    assert (refused.exit_code, refused.output) == (
        1,
        f'Error: worker "gateway" in namespace "{DEV}" has no version before its current '
        "version 3 to roll back to (409 Conflict)\n",
    )


def test_undeploy(dispatcher: RunningDispatcher) -> None:
    cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM)

    result = cli(dispatcher, "undeploy", "gateway")

    assert (result.exit_code, result.output) == (0, f"undeployed gateway from {DEV}\n")
    assert api(dispatcher, f"/namespaces/{DEV}/workers")["workers"] == []


def test_history_prints_the_trail_newest_first(dispatcher: RunningDispatcher) -> None:
    cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM, "--version", "v1")
    cli(dispatcher, "deploy", "db", "--url", OTHER, "--env", "staging")
    cli(dispatcher, "undeploy", "gateway")
    trail = api(dispatcher, "/deployments")["deployments"]
    at = [short(e["at"]) for e in trail]

    every = cli(dispatcher, "history")
    staging = cli(dispatcher, "history", "--env", "staging", "--json")
    limited = cli(dispatcher, "history", "--worker", "gateway", "--limit", "1")

    assert (every.exit_code, every.output) == (
        0,
        "REV  ACTION    NAMESPACE          WORKER      VERSION  LABEL  TARGET                "
        "        AT                    BY\n"
        f"4    undeploy  dotdo-development  gateway     1        -      -                     "
        f"        {at[0]}  admin\n"
        f"3    deploy    dotdo-staging      db          1        -      upstream http://127.0."
        f"0.1:10  {at[1]}  admin\n"
        f"2    deploy    dotdo-development  gateway     1        v1     upstream http://127.0."
        f"0.1:9   {at[2]}  admin\n"
        f"2    deploy    dotdo-development  gateway-v1  1        v1     upstream http://127.0."
        f"0.1:9   {at[3]}  admin\n",
    )
    assert json.loads(staging.output) == {"deployments": [trail[1]]}
    assert limited.output.splitlines()[1].startswith("4    undeploy  dotdo-development  gateway")
    assert len(limited.output.splitlines()) == 2


def test_history_when_nothing_was_deployed(dispatcher: RunningDispatcher) -> None:
    result = cli(dispatcher, "history")

    assert (result.exit_code, result.output) == (0, "no deployments recorded\n")


# --- tokens --------------------------------------------------------------------------------


def test_token_hash_reads_stdin() -> None:
    result = cli(None, "token", "hash", stdin="my-secret-token-0000\n")

    assert (result.exit_code, result.output) == (0, hash_token("my-secret-token-0000") + "\n")


def test_token_new_prints_a_token_and_its_hash() -> None:
    result = cli(None, "token", "new")

    token_line, hash_line = result.output.splitlines()
    token = token_line.removeprefix("token:  ")
    assert result.exit_code == 0
    assert len(token) >= 43
    assert hash_line == f"sha256: {hash_token(token)}"


def test_the_cli_uses_a_generated_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / ".dispatcher" / "registry.db"
    with DispatcherThread(store=store, environ={}) as running:
        result = cli(running, "workers", env={"DISPATCHER_ADMIN_TOKEN": None})

    assert (tmp_path / ".dispatcher" / "admin-token").is_file()
    assert (result.exit_code, result.output) == (0, f"no workers deployed in {DEV}\n")


def test_deploy_warns_when_a_replica_did_not_converge(dispatcher: RunningDispatcher) -> None:
    """A 202 (committed, not served everywhere yet) is a success with a warning naming the
    replicas that lag."""
    ghost = ReplicaId("elsewhere:1:00000000")

    async def register_a_lagging_replica() -> None:
        async with open_store(dispatcher.settings.store_url) as store:
            await store.heartbeat(ghost, 0, ReplicaInfo("elsewhere", 1, {}))

    asyncio.run(register_a_lagging_replica())
    result = cli(dispatcher, "deploy", "gateway", "--url", UPSTREAM)

    assert result.exit_code == 0
    assert result.output.startswith(f"deployed gateway version 1 to {DEV}: upstream {UPSTREAM}\n")
    assert f"did not serve it within the wait: {ghost}\n" in result.output
