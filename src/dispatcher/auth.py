"""``BearerTokenAuth``: who may call the Deploy API, checked in constant time; tokens held as
``Secret`` and stored only as SHA-256 digests.

Example::

    auth = BearerTokenAuth.from_tokens(env_token=Secret(os.environ["DISPATCHER_ADMIN_TOKEN"]))
    credential = auth.authenticate(b"Bearer " + token)      # Unauthorized when unknown
    credential.allows(Permission.DEPLOY, NamespaceName("dotdo-staging"))   # True

A tokens file (TOML or JSON) grants tokens by digest, never by value::

    [[tokens]]
    name = "ci-staging"                 # the actor recorded on each deployment
    sha256 = "9f86d08...0f00a08"        # printf %s TOKEN | sha256sum
    scopes = ["deploy"]                 # read, deploy (deploy includes read)
    namespaces = ["dotdo-staging"]      # optional: all namespaces when absent
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from dispatcher.errors import ConfigError, TooManyFailures, Unauthorized
from dispatcher.types import NamespaceName
from dispatcher.workers import validate_name

logger = logging.getLogger("dispatcher.auth")

ENV_TOKEN_ACTOR: Final = "admin"
"""The actor recorded for ``DISPATCHER_ADMIN_TOKEN`` (and a generated token): full access."""
MIN_TOKEN_LENGTH: Final = 16
GENERATED_TOKEN_BYTES: Final = 32  # 256 bits (ROBUSTNESS.md item 51)
FAILURE_LIMIT: Final = 10
FAILURE_WINDOW: Final = 60.0
_MAX_TRACKED_CLIENTS: Final = 4096
_REALM: Final = 'Bearer realm="dispatcher"'
# RFC 6750 §2.1 b64token; a token is also what we accept from people, so visible ASCII only.
_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)
_ENV_TOKEN: Final = re.compile(r"[\x21-\x7e]+", re.ASCII)
_HEX_DIGEST: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)
_ACTOR: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}", re.ASCII)
_ENTRY_KEYS: Final = frozenset({"name", "sha256", "scopes", "namespaces"})
_MASK: Final = "**********"


class Secret:
    """A string that never prints: ``repr`` and ``str`` show a mask; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(digest_of(self._value))


class Permission(StrEnum):
    """What a token may do: ``read`` the registry, or ``deploy`` (which includes read)."""

    READ = "read"
    DEPLOY = "deploy"


@dataclass(frozen=True, slots=True)
class Credential:
    """One token's grant: its name (the recorded actor), scopes and namespaces.

    ``namespaces`` is ``None`` for every namespace. The digest identifies the token and is
    compared only with ``hmac.compare_digest``.
    """

    name: str
    digest: bytes = field(repr=False)
    scopes: frozenset[Permission]
    namespaces: frozenset[NamespaceName] | None = None

    def allows(self, permission: Permission, namespace: NamespaceName | None = None) -> bool:
        """Whether this token may do ``permission`` (in ``namespace``, when one is named)."""
        has_scope = permission in self.scopes or Permission.DEPLOY in self.scopes
        return has_scope and (namespace is None or self.reaches(namespace))

    def reaches(self, namespace: NamespaceName) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def digest_of(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes: what the tokens file stores (as hex)."""
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The hex digest to write in a tokens file; same as ``printf %s TOKEN | sha256sum``."""
    return digest_of(token).hex()


def generate_token() -> str:
    """A new random token of 256 bits, URL-safe."""
    return secrets.token_urlsafe(GENERATED_TOKEN_BYTES)


class BearerTokenAuth:
    """Checks ``Authorization: Bearer <token>`` against the known digests.

    Every presented token is hashed and compared with *every* known digest (fixed-length
    ``hmac.compare_digest``), so neither the comparison nor the position of a match leaks
    through timing.
    """

    __slots__ = ("_credentials",)

    def __init__(self, credentials: Sequence[Credential]) -> None:
        if not credentials:
            raise ConfigError("the admin API needs at least one token")
        self._credentials = tuple(credentials)

    @classmethod
    def from_tokens(
        cls, *, env_token: Secret | None = None, granted: Iterable[Credential] = ()
    ) -> BearerTokenAuth:
        """``env_token`` has full access as ``admin``; ``granted`` come from a tokens file."""
        credentials = list(granted)
        if env_token is not None:
            credentials.insert(0, full_access(env_token))
        return cls(credentials)

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self._credentials)
        return f"<BearerTokenAuth {len(self._credentials)} tokens: {names}>"

    def authenticate(self, authorization: bytes | None) -> Credential:
        """The credential of the presented token; ``Unauthorized`` says what was wrong."""
        token = _bearer_token(authorization)
        presented = digest_of(token)
        found: Credential | None = None
        for credential in self._credentials:
            if hmac.compare_digest(presented, credential.digest) and found is None:
                found = credential
        if found is None:
            raise Unauthorized(
                "unknown bearer token",
                headers=(("www-authenticate", f'{_REALM}, error="invalid_token"'),),
            )
        return found


def full_access(token: Secret) -> Credential:
    return Credential(
        ENV_TOKEN_ACTOR,
        digest_of(token.reveal()),
        frozenset({Permission.READ, Permission.DEPLOY}),
    )


def _bearer_token(authorization: bytes | None) -> str:
    if authorization is None:
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers=(("www-authenticate", _REALM),),
        )
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    token = value.strip()
    if scheme.lower() != "bearer" or _TOKEN.fullmatch(token) is None:
        raise Unauthorized(
            "malformed Authorization header: expected 'Bearer <token>'",
            headers=(("www-authenticate", f'{_REALM}, error="invalid_request"'),),
        )
    return token


# --- where tokens come from ----------------------------------------------------------------


def parse_env_token(value: str, where: str = "DISPATCHER_ADMIN_TOKEN") -> Secret | None:
    """An admin token from the environment: ``None`` when empty, ``ConfigError`` when weak.

    The message never repeats the value.
    """
    if not value:
        return None
    if _ENV_TOKEN.fullmatch(value) is None:
        raise ConfigError(f"{where}: must be visible ASCII without spaces")
    if len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{where}: must be at least {MIN_TOKEN_LENGTH} characters "
            f"(got {len(value)}; `dispatcher token new` makes one)"
        )
    return Secret(value)


def load_tokens_file(path: str) -> tuple[Credential, ...]:
    """Read a TOML (``.toml``) or JSON tokens file; ``ConfigError`` names file, entry and key."""
    document = _read_tokens_document(path)
    unknown = sorted(set(document) - {"tokens"})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (expected tokens)")
    entries = document.get("tokens")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: tokens: expected a non-empty array of token entries")
    credentials = tuple(
        _parse_entry(entry, f"{path}: tokens[{i}]") for i, entry in enumerate(entries)
    )
    _reject_duplicates(credentials, path)
    return credentials


def _read_tokens_document(path: str) -> Mapping[str, object]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the tokens file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    try:
        document: object = (
            tomllib.loads(text) if path.lower().endswith(".toml") else json.loads(text)
        )
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        kind = "TOML" if path.lower().endswith(".toml") else "JSON"
        raise ConfigError(f"{path}: invalid {kind}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be an object with a 'tokens' array")
    return document


def _parse_entry(entry: object, where: str) -> Credential:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table/object")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key (expected name, sha256, scopes, namespaces)"
        )
    return Credential(
        name=_entry_name(entry.get("name"), where),
        digest=_entry_digest(entry.get("sha256"), where),
        scopes=_entry_scopes(entry.get("scopes"), where),
        namespaces=_entry_namespaces(entry.get("namespaces"), where),
    )


def _entry_name(value: object, where: str) -> str:
    if not isinstance(value, str) or _ACTOR.fullmatch(value) is None:
        raise ConfigError(
            f"{where}.name: must be 1 to 64 characters of letters, digits and . _ @ : - "
            f"(got {value!r})"
        )
    if value == ENV_TOKEN_ACTOR:
        raise ConfigError(f"{where}.name: {ENV_TOKEN_ACTOR!r} is reserved for the admin token")
    return value


def _entry_digest(value: object, where: str) -> bytes:
    if not isinstance(value, str) or _HEX_DIGEST.fullmatch(value) is None:
        raise ConfigError(
            f"{where}.sha256: must be 64 lower-case hex digits, the SHA-256 of the token "
            "(printf %s TOKEN | sha256sum, or dispatcher token hash)"
        )
    return bytes.fromhex(value)


def _entry_scopes(value: object, where: str) -> frozenset[Permission]:
    known = ", ".join(p.value for p in Permission)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.scopes: expected a non-empty array of {known}")
    scopes: set[Permission] = set()
    for item in value:
        if item not in {p.value for p in Permission}:
            raise ConfigError(f"{where}.scopes: unknown scope {item!r} (expected {known})")
        scopes.add(Permission(item))
    return frozenset(scopes)


def _entry_namespaces(value: object, where: str) -> frozenset[NamespaceName] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.namespaces: expected a non-empty array of namespace names")
    try:
        return frozenset(NamespaceName(validate_name(v, "namespace name")) for v in value)
    except ConfigError as exc:
        raise ConfigError(f"{where}.namespaces: {exc}") from exc


def _reject_duplicates(credentials: Sequence[Credential], path: str) -> None:
    names: set[str] = set()
    digests: set[bytes] = set()
    for index, credential in enumerate(credentials):
        if credential.name in names:
            raise ConfigError(f"{path}: tokens[{index}].name: {credential.name!r} is used twice")
        if credential.digest in digests:
            raise ConfigError(f"{path}: tokens[{index}].sha256: the same token is listed twice")
        names.add(credential.name)
        digests.add(credential.digest)


def ensure_token_file(path: str) -> Secret:
    """The token kept in ``path``, generated (256 bits, mode 0600) on the first start.

    ``ConfigError`` when the file is readable by others or does not hold a usable token.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the admin token file: {exc.strerror}") from exc
    token = generate_token()
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    logger.warning("admin API token generated in %s (mode 0600)", path)
    return Secret(token)


def _read_token_file(path: str) -> Secret:
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the admin token file: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: the admin token file is accessible to other users "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    token = parse_env_token(text, where=path)
    if token is None:
        raise ConfigError(f"{path}: the admin token file is empty")
    return token


# --- failed attempts -----------------------------------------------------------------------


class FailureLimiter:
    """Counts failed logins per client address; past ``limit`` in ``window`` seconds the
    address gets 429 until its oldest failure is ``window`` seconds old."""

    __slots__ = ("_limit", "_window", "_clock", "_failures")

    def __init__(
        self,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def check(self, client: str) -> None:
        """``TooManyFailures`` (with Retry-After) when ``client`` is over the limit."""
        failures = self._recent(client)
        if failures is not None and len(failures) >= self._limit:
            retry = max(1, int(failures[0] + self._window - self._clock()) + 1)
            raise TooManyFailures(
                f"too many failed authentications from this address; retry in {retry} s",
                headers=(("retry-after", str(retry)),),
            )

    def record(self, client: str) -> None:
        failures = self._recent(client)
        if failures is None:
            if len(self._failures) >= _MAX_TRACKED_CLIENTS:
                # Forget the client tracked longest ago; an attacker rotating addresses past
                # this bound only loses their own history.
                del self._failures[next(iter(self._failures))]
            failures = self._failures[client] = deque()
        failures.append(self._clock())

    def _recent(self, client: str) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        horizon = self._clock() - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures
