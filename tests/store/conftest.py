"""Store fixtures: ``pg_url``, a fresh PostgreSQL schema for each test.

The server comes from ``DISPATCHER_TEST_PG_URL`` (a ``postgresql://`` URL, default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached the PostgreSQL tests
are skipped, unless ``CI`` is set: there they fail, so a broken service cannot pass unseen.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import sql

PG_URL_VARIABLE = "DISPATCHER_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL once it answered; skip (or, under CI, fail) when it does not."""
    url = os.environ.get(PG_URL_VARIABLE, DEFAULT_PG_URL)
    try:
        with psycopg.connect(url, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        reason = (
            f"PostgreSQL is unreachable at {_without_password(url)} ({first_line}); "
            f"start it or point {PG_URL_VARIABLE} at one"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}. CI is set, so the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL whose connections live in a new, empty schema (dropped after the test).

    The schema's name is also the connections' ``application_name``, so a test can find its
    own backends in ``pg_stat_activity``; ``PostgresStore`` names its listener ``<name>-listen``.
    """
    schema = f"dispatcher_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_parameters(
            pg_server, options=f"-c search_path={schema}", application_name=schema
        )
    finally:
        _drop_schema(pg_server, schema)


def with_parameters(url: str, **parameters: str) -> str:
    """``url`` with more query parameters (libpq decodes percent-encoding)."""
    separator = "&" if "?" in url else "?"
    return url + separator + urlencode(parameters, quote_via=quote)


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        # A backend a failed test left behind would hold locks and make DROP wait.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
            (f"{schema}%",),
        )
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _without_password(url: str) -> str:
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return "(an unparsable URL)"
    return url.replace(str(password), "****") if password else url
