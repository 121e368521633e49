"""The compiled request path: what setup.py builds, what runs, and the pure-Python switch.

``make test`` runs the suite twice: once with ``DISPATCHER_PURE_PYTHON=1`` (the source,
measured by coverage), once on the compiled build. In the compiled run these tests fail if
a hot-path module was not compiled or its build is older than its source (an extension
module wins over the ``.py``, so a stale build would be tested instead of the code).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher._compiled import (
    COMPILED_MODULES,
    PURE_PYTHON_VARIABLE,
    compiled_modules,
    describe_build,
    is_compiled,
)

ROOT = Path(__file__).resolve().parents[1]
IS_PURE_RUN = bool(os.environ.get(PURE_PYTHON_VARIABLE))


def setup_sources() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED_SOURCES" for t in node.targets
        ):
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no COMPILED_SOURCES list")


def test_setup_compiles_exactly_the_listed_modules() -> None:
    modules = [
        path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in setup_sources()
    ]
    assert modules == list(COMPILED_MODULES)


@pytest.mark.skipif(IS_PURE_RUN, reason="the source run: nothing is compiled on purpose")
def test_the_hot_path_runs_compiled_and_up_to_date() -> None:
    for name in COMPILED_MODULES:
        module = importlib.import_module(name)
        assert is_compiled(module), f"{name} runs from its source: run `make` to build it"
        assert module.__file__ is not None
        built = Path(module.__file__)
        source = built.with_name(name.rpartition(".")[2] + ".py")
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: run `make test` (it rebuilds)"
        )
    assert describe_build() == "compiled"


@pytest.mark.skipif(IS_PURE_RUN, reason="the source run: nothing is compiled on purpose")
def test_the_compiled_run_filters_response_heads_in_c_up_to_date() -> None:
    from dispatcher.forwarding import _hopbyhop, upstream

    assert upstream._FAST_FILTER is _hopbyhop.response_block
    assert _hopbyhop.__file__ is not None
    built = Path(_hopbyhop.__file__)
    source = ROOT / "src/dispatcher/forwarding/_hopbyhop.c"
    assert built.stat().st_mtime >= source.stat().st_mtime, (
        f"{built.name} is older than {source.name}: run `make test` (it rebuilds)"
    )


def test_setup_builds_every_c_module() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "C_EXTENSIONS" for t in node.targets)
    )
    on_disk = {str(path.relative_to(ROOT)) for path in (ROOT / "src/dispatcher").rglob("*.c")}
    assert set(listed.values()) == on_disk


@pytest.mark.skipif(not IS_PURE_RUN, reason="the compiled run")
def test_the_source_run_loads_no_extension() -> None:
    from dispatcher.forwarding import upstream

    assert compiled_modules() == []
    assert describe_build() == "interpreted"
    assert upstream._FAST_FILTER is None  # the regex filter, as interpreted as the rest


@pytest.mark.parametrize("pure", [True, False])
def test_the_switch_is_read_when_dispatcher_is_first_imported(pure: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_VARIABLE}
    if pure:
        env[PURE_PYTHON_VARIABLE] = "1"
    script = (
        "import dispatcher.server.protocol as p, dispatcher._compiled as c;"
        "print(p.__file__.endswith('.py'), c.describe_build())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    is_source, build = done.stdout.split(maxsplit=1)
    if pure:
        assert (is_source, build.strip()) == ("True", "interpreted")
    elif not any(is_compiled(importlib.import_module(n)) for n in COMPILED_MODULES):
        pytest.skip("this run has no compiled build to compare with")
    else:
        assert (is_source, build.strip()) == ("False", "compiled")
