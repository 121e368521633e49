# Two commands from a fresh clone: `make dev` runs the dispatcher, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint bench clean

# The request hot path that setup.py compiles with mypyc (its COMPILED_SOURCES list).
COMPILED_SOURCES := $(shell sed -n 's/^    "\(src\/dispatcher\/[a-z_/]*\.py\)",$$/\1/p' setup.py)
C_SOURCES := $(wildcard src/dispatcher/*/_*.c)

# Dependencies first, without compiling (quick); .compiled then builds the C extensions.
$(BIN)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	DISPATCHER_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# An extension module wins over its .py: rebuild whenever a compiled source changes, so
# that nothing runs a stale build.
$(BIN)/.compiled: $(BIN)/.installed $(COMPILED_SOURCES) $(C_SOURCES)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

dev: $(BIN)/.compiled
	$(BIN)/dispatcher dev

# Every test twice: on the source (DISPATCHER_PURE_PYTHON=1), which coverage measures, and
# on the compiled build that `make dev` and users run.
test: $(BIN)/.compiled
	DISPATCHER_PURE_PYTHON=1 $(BIN)/pytest --cov --cov-report=term-missing:skip-covered
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(BIN)/.compiled
	$(BIN)/python bench/route_bench.py

clean:
	find src -name '*.so' -delete
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* .hypothesis
