"""Worker specs: where a worker runs (its ``Target``), parsed and validated at the edge.

Example::

    parse_target({"app": "dispatcher.echo:app"})   # AppTarget(import_path='dispatcher.echo:app')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from dispatcher.errors import ConfigError
from dispatcher.types import NamespaceName, WorkerName

NAME_PATTERN: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|[a-z0-9]", re.ASCII)
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class AppTarget:
    """An in-process ASGI app, named ``package.module:attribute``."""

    import_path: str

    def to_json(self) -> dict[str, Any]:
        return {"app": self.import_path}

    def describe(self) -> str:
        return f"app {self.import_path}"


Target = AppTarget
"""Where a worker runs. The upstream-HTTP issue adds ``UpstreamTarget`` to this union."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployed version of a worker in a namespace, as the store records it."""

    namespace: NamespaceName
    worker: WorkerName
    version: int
    target: Target
    deployed_at: str
    actor: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def validate_name(value: object, what: str) -> str:
    """Worker and namespace names are ``[a-z0-9-]{1,63}``, not starting or ending with ``-``."""
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
        raise ConfigError(
            f"{what} must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending "
            f"with '-' (got {value!r})"
        )
    return value


def parse_target(spec: object, where: str = "worker") -> Target:
    """Turn a JSON/TOML worker spec into a ``Target``; ``ConfigError`` names the problem."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a worker spec must be a table/object, got {spec!r}")
    unknown = set(spec) - {"app"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected 'app'")
    app = spec.get("app")
    if app is None:
        raise ConfigError(f"{where}: a worker needs 'app' (an ASGI app as 'module:attribute')")
    if not isinstance(app, str) or _IMPORT_PATH.fullmatch(app) is None:
        raise ConfigError(f"{where}.app must look like 'package.module:attribute' (got {app!r})")
    return AppTarget(app)


def target_from_json(data: Mapping[str, Any]) -> Target:
    """Read back a target the store wrote with ``to_json``."""
    return parse_target(data, "stored worker")
