"""The modules compiled with mypyc, and ``DISPATCHER_PURE_PYTHON=1`` to run their source.

``setup.py`` compiles the request hot path (the modules below) to C extensions that sit
next to their ``.py`` files; Python's import system prefers an extension to a source file.
With ``DISPATCHER_PURE_PYTHON`` set (to anything but empty) when ``dispatcher`` is first
imported, a finder placed first on ``sys.meta_path`` loads the source of all of them
instead: the same code, interpreted, which coverage and py-spy can see line by line. It is
all or nothing, because compiled modules reach each other's classes directly in C.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Final

PURE_PYTHON_VARIABLE: Final = "DISPATCHER_PURE_PYTHON"

# Keep in step with COMPILED_SOURCES in setup.py (a test checks it).
COMPILED_MODULES: Final = (
    "dispatcher.server.protocol",
    "dispatcher.server.writes",
    "dispatcher.forwarding.upstream",
    "dispatcher.dispatch",
    "dispatcher.http",
    "dispatcher.routing",
    "dispatcher.normalize",
    "dispatcher.metrics",
    "dispatcher.access",
)


class SourceFinder:
    """A ``sys.meta_path`` finder that answers only for the compiled modules, with their
    ``.py`` file."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in COMPILED_MODULES or path is None:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            candidate = os.path.join(entry, leaf)
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def load_source_if_asked() -> None:
    """Put ``SourceFinder`` first when ``DISPATCHER_PURE_PYTHON`` asks for it (once)."""
    if os.environ.get(PURE_PYTHON_VARIABLE) and not any(
        isinstance(finder, SourceFinder) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, SourceFinder())


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension rather than its source."""
    return not (module.__file__ or "").endswith(".py")


def compiled_modules() -> list[str]:
    """The names of the hot-path modules this process runs compiled (imports them)."""
    return [name for name in COMPILED_MODULES if is_compiled(importlib.import_module(name))]


def describe_build() -> str:
    """``compiled`` or ``interpreted`` (and which, when only some are compiled), for logs."""
    compiled = compiled_modules()
    if len(compiled) == len(COMPILED_MODULES):
        return "compiled"
    if not compiled:
        return "interpreted"
    return "partly compiled: " + ", ".join(compiled)
