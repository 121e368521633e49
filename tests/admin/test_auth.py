"""Tokens: the tokens file, the environment token, the generated token file, ``Secret``,
constant-time authentication, the failure limiter, and the settings that refuse a
non-loopback admin listener without a token.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Final

import pytest

from dispatcher.auth import (
    BearerTokenAuth,
    Credential,
    FailureLimiter,
    Permission,
    Secret,
    digest_of,
    ensure_token_file,
    hash_token,
    load_tokens_file,
    parse_env_token,
)
from dispatcher.errors import ConfigError, TooManyFailures, Unauthorized
from dispatcher.settings import Settings
from dispatcher.types import NamespaceName

TOKEN: Final = "a-long-enough-admin-token-0001"
DIGEST: Final = hash_token(TOKEN)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_hash_token_is_what_sha256sum_prints() -> None:
    printed = subprocess.run(
        ["sha256sum"], input=TOKEN.encode(), capture_output=True, check=True
    ).stdout.decode()

    assert printed.split()[0] == DIGEST == hashlib.sha256(TOKEN.encode()).hexdigest()


def test_a_secret_never_prints() -> None:
    secret = Secret(TOKEN)

    assert (repr(secret), str(secret), f"{secret}") == (
        "Secret('**********')",
        "**********",
        "**********",
    )
    assert secret.reveal() == TOKEN
    assert secret == Secret(TOKEN) and secret != Secret(TOKEN + "x")
    assert TOKEN not in repr(Settings.load(None, {"DISPATCHER_ADMIN_TOKEN": TOKEN}).admin)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (
            ".toml",
            f'[[tokens]]\nname = "ci"\nsha256 = "{DIGEST}"\nscopes = ["deploy"]\n'
            'namespaces = ["dotdo-staging"]\n',
        ),
        (
            ".json",
            f'{{"tokens": [{{"name": "ci", "sha256": "{DIGEST}", "scopes": ["deploy"], '
            '"namespaces": ["dotdo-staging"]}]}',
        ),
    ],
)
def test_a_tokens_file_in_toml_or_json(tmp_path: Path, suffix: str, text: str) -> None:
    (credential,) = load_tokens_file(write(tmp_path / f"tokens{suffix}", text))

    assert credential == Credential(
        "ci",
        digest_of(TOKEN),
        frozenset({Permission.DEPLOY}),
        frozenset({NamespaceName("dotdo-staging")}),
    )
    assert DIGEST not in repr(credential)


ENTRY: Final = f'name = "ci"\nsha256 = "{DIGEST}"\nscopes = ["read"]\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "tokens: expected a non-empty array of token entries"),
        ("tokens = []", "tokens: expected a non-empty array of token entries"),
        ("extra = 1\n[[tokens]]\n" + ENTRY, "extra: unknown key (expected tokens)"),
        ("tokens = [1]", "tokens[0]: expected a table/object"),
        (
            "[[tokens]]\n" + ENTRY + "token = 'x'\n",
            "tokens[0].token: unknown key (expected name, sha256, scopes, namespaces)",
        ),
        (
            "[[tokens]]\n" + ENTRY.replace('"ci"', '"c i"'),
            "tokens[0].name: must be 1 to 64 characters of letters, digits and . _ @ : - "
            "(got 'c i')",
        ),
        (
            "[[tokens]]\n" + ENTRY.replace('"ci"', '"admin"'),
            "tokens[0].name: 'admin' is reserved for the admin token",
        ),
        (
            "[[tokens]]\n" + ENTRY.replace(DIGEST, DIGEST.upper()),
            "tokens[0].sha256: must be 64 lower-case hex digits, the SHA-256 of the token "
            "(printf %s TOKEN | sha256sum, or dispatcher token hash)",
        ),
        (
            "[[tokens]]\n" + ENTRY.replace('["read"]', '["admin"]'),
            "tokens[0].scopes: unknown scope 'admin' (expected read, deploy)",
        ),
        (
            "[[tokens]]\n" + ENTRY.replace('["read"]', "[]"),
            "tokens[0].scopes: expected a non-empty array of read, deploy",
        ),
        (
            "[[tokens]]\n" + ENTRY + 'namespaces = ["Prod"]\n',
            "tokens[0].namespaces: namespace name must be 1 to 63 characters",
        ),
        (
            "[[tokens]]\n" + ENTRY + "namespaces = []\n",
            "tokens[0].namespaces: expected a non-empty array of namespace names",
        ),
        (
            "[[tokens]]\n" + ENTRY + "\n[[tokens]]\n" + ENTRY,
            "tokens[1].name: 'ci' is used twice",
        ),
        (
            "[[tokens]]\n" + ENTRY + "\n[[tokens]]\n" + ENTRY.replace('"ci"', '"ci2"'),
            "tokens[1].sha256: the same token is listed twice",
        ),
        ("[[tokens]\n", "invalid TOML: "),
    ],
)
def test_a_bad_tokens_file_names_the_entry_and_key(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "tokens.toml", text)

    with pytest.raises(ConfigError) as raised:
        load_tokens_file(path)

    assert str(raised.value).startswith(f"{path}: {problem}")


def test_a_missing_tokens_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")

    with pytest.raises(ConfigError, match="cannot read the tokens file: No such file"):
        load_tokens_file(path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("short", "DISPATCHER_ADMIN_TOKEN: must be at least 16 characters (got 5; "),
        ("has a space inside it", "DISPATCHER_ADMIN_TOKEN: must be visible ASCII without spaces"),
    ],
)
def test_a_weak_environment_token_is_refused_without_echoing_it(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_env_token(value)

    assert str(raised.value).startswith(message)
    assert value not in str(raised.value)
    assert parse_env_token("") is None


def auth() -> BearerTokenAuth:
    granted = Credential("reader", digest_of("reader-token-0000000"), frozenset({Permission.READ}))
    return BearerTokenAuth.from_tokens(env_token=Secret(TOKEN), granted=[granted])


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (f"Bearer {TOKEN}".encode(), "admin"),
        (f"bearer   {TOKEN}  ".encode(), "admin"),
        (b"Bearer reader-token-0000000", "reader"),
    ],
)
def test_a_known_token_authenticates(header: bytes, name: str) -> None:
    assert auth().authenticate(header).name == name


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing bearer token: send 'Authorization: Bearer <token>'"),
        (b"Bearer nope-nope-nope-nope", "unknown bearer token"),
        (b"Token " + TOKEN.encode(), "malformed Authorization header: expected 'Bearer <token>'"),
        (b"Bearer a b", "malformed Authorization header: expected 'Bearer <token>'"),
        (b"Bearer \xff", "malformed Authorization header: expected 'Bearer <token>'"),
    ],
)
def test_an_unknown_token_is_unauthorized(header: bytes | None, message: str) -> None:
    with pytest.raises(Unauthorized) as raised:
        auth().authenticate(header)

    assert raised.value.message == message
    assert raised.value.headers[0][0] == "www-authenticate"


def test_auth_needs_a_token_and_prints_no_digest() -> None:
    with pytest.raises(ConfigError, match="the admin API needs at least one token"):
        BearerTokenAuth([])
    assert repr(auth()) == "<BearerTokenAuth 2 tokens: admin, reader>"


@pytest.mark.parametrize(
    ("scopes", "namespaces", "permission", "namespace", "allowed"),
    [
        ({"read"}, None, "read", "dotdo-production", True),
        ({"read"}, None, "deploy", "dotdo-production", False),
        ({"deploy"}, None, "read", None, True),
        ({"deploy"}, {"dotdo-staging"}, "deploy", "dotdo-staging", True),
        ({"deploy"}, {"dotdo-staging"}, "deploy", "dotdo-production", False),
        ({"deploy"}, {"dotdo-staging"}, "deploy", None, True),
    ],
)
def test_scopes_and_namespaces(
    scopes: set[str],
    namespaces: set[str] | None,
    permission: str,
    namespace: str | None,
    allowed: bool,
) -> None:
    credential = Credential(
        "t",
        b"",
        frozenset(Permission(s) for s in scopes),
        None if namespaces is None else frozenset(NamespaceName(n) for n in namespaces),
    )

    given = None if namespace is None else NamespaceName(namespace)
    assert credential.allows(Permission(permission), given) is allowed


def test_the_limiter_blocks_after_ten_failures_for_a_minute() -> None:
    now = [1000.0]
    limiter = FailureLimiter(clock=lambda: now[0])
    for _ in range(10):
        limiter.check("10.0.0.1")
        limiter.record("10.0.0.1")

    with pytest.raises(TooManyFailures) as raised:
        limiter.check("10.0.0.1")
    limiter.check("10.0.0.2")
    now[0] += 60.0
    limiter.check("10.0.0.1")

    assert raised.value.headers == (("retry-after", "61"),)


def test_a_generated_token_file_is_private_and_reused(tmp_path: Path) -> None:
    path = str(tmp_path / "admin-token")

    first = ensure_token_file(path)
    second = ensure_token_file(path)

    assert first == second
    assert len(first.reveal()) >= 43  # 256 bits, URL-safe base64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN)
    path.chmod(0o644)

    with pytest.raises(ConfigError) as raised:
        ensure_token_file(str(path))

    assert str(raised.value) == (
        f"{path}: the admin token file is accessible to other users (mode 0644); chmod 600 it"
    )


# --- settings ------------------------------------------------------------------------------


def test_admin_defaults_to_loopback_8788() -> None:
    admin = Settings.load(None, {}).admin

    assert (admin.host, admin.port, admin.token, admin.tokens, admin.is_loopback) == (
        "127.0.0.1",
        8788,
        None,
        (),
        True,
    )


def test_admin_keys_from_file_env_and_flags(tmp_path: Path) -> None:
    tokens = write(
        tmp_path / "tokens.toml",
        f'[[tokens]]\nname = "ci"\nsha256 = "{DIGEST}"\nscopes = ["read"]\n',
    )
    config = write(
        tmp_path / "dispatcher.toml",
        '[admin]\nhost = "0.0.0.0"\nport = 9001\ntokens_file = "tokens.toml"\n',
    )

    from_file = Settings.load(config, {}).admin
    from_flags = Settings.load(
        config, {"DISPATCHER_ADMIN_TOKEN": TOKEN}, admin_host="::1", admin_port=0
    ).admin

    assert (from_file.host, from_file.port, from_file.tokens_file) == ("0.0.0.0", 9001, tokens)
    assert [c.name for c in from_file.tokens] == ["ci"]
    assert (from_flags.host, from_flags.port, from_flags.token) == ("::1", 0, Secret(TOKEN))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "admin.internal"])
def test_a_non_loopback_admin_listener_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(None, {}, admin_host=host)

    assert str(raised.value) == (
        f"--admin-host: the admin API would listen on {host}, which is not a loopback "
        "address, without a token; set DISPATCHER_ADMIN_TOKEN or admin.tokens_file "
        "(or listen on 127.0.0.1)"
    )
    assert (
        Settings.load(None, {"DISPATCHER_ADMIN_TOKEN": TOKEN}, admin_host=host).admin.host == host
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[admin]\ncolour = 1\n",
            "admin.colour: unknown key (expected one of host, port, tokens_file)",
        ),
        ("[admin]\nport = 70000\n", "admin.port: must be an integer from 0 to 65535 (got 70000)"),
        ("[admin]\nhost = 'a b'\n", "admin.host: must be a host name or IP address to listen on"),
        ("[admin]\ntokens_file = ''\n", "admin.tokens_file: must not be empty"),
    ],
)
def test_bad_admin_keys_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "dispatcher.toml", text)

    with pytest.raises(ConfigError) as raised:
        Settings.load(config, {})

    assert str(raised.value).startswith(f"{config}: {message}")
