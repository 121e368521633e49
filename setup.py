"""Build: the request hot path compiled to C with mypyc, the rest installed as Python.

``server/protocol.py`` (the client connection) and ``forwarding/upstream.py`` (the upstream
connection pool) run on every proxied request; compiled, their attribute accesses and calls
between them are C struct reads and direct calls instead of interpreter dispatch (see
``docs/benchmarks.md``). They are compiled from the same typed source that ``mypy --strict``
checks, and ``DISPATCHER_PURE_PYTHON=1`` at run time loads that source instead.

``DISPATCHER_PURE_PYTHON=1`` at build time skips the compilation (no C compiler needed).
"""

import os

from setuptools import setup

# Keep in step with dispatcher._compiled.COMPILED_MODULES (a test checks it).
COMPILED_SOURCES = [
    "src/dispatcher/server/protocol.py",
    "src/dispatcher/server/writes.py",
    "src/dispatcher/forwarding/upstream.py",
    "src/dispatcher/dispatch.py",
    "src/dispatcher/http.py",
    "src/dispatcher/routing.py",
    "src/dispatcher/normalize.py",
    "src/dispatcher/metrics.py",
    "src/dispatcher/access.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("DISPATCHER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return list(mypycify(["--config-file", "pyproject.toml", *COMPILED_SOURCES], opt_level="3"))


setup(ext_modules=ext_modules())
