"""Build: the request hot path compiled to C with mypyc, the rest installed as Python.

``server/protocol.py`` (the client connection) and ``forwarding/upstream.py`` (the upstream
connection pool) run on every proxied request; compiled, their attribute accesses and calls
between them are C struct reads and direct calls instead of interpreter dispatch (see
``docs/benchmarks.md``). They are compiled from the same typed source that ``mypy --strict``
checks, and ``DISPATCHER_PURE_PYTHON=1`` at run time loads that source instead.

``forwarding/_hopbyhop.c`` is the one module written in C: the upstream response head's
hop-by-hop filter for the common case, where the regex filter it stands in front of cost
about 7 % of a proxied request's CPU.

``DISPATCHER_PURE_PYTHON=1`` at build time skips the compilation (no C compiler needed).
"""

import os

from setuptools import Extension, setup

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
# Modules written in C, by name: the source is loaded instead when they are absent.
C_EXTENSIONS = {
    "dispatcher.forwarding._hopbyhop": "src/dispatcher/forwarding/_hopbyhop.c",
}


def ext_modules() -> list[object]:
    if os.environ.get("DISPATCHER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    compiled = mypycify(["--config-file", "pyproject.toml", *COMPILED_SOURCES], opt_level="3")
    handwritten = [
        Extension(name, [source], extra_compile_args=["-O2"])
        for name, source in C_EXTENSIONS.items()
    ]
    return [*compiled, *handwritten]


setup(ext_modules=ext_modules())
