# Two commands on a fresh machine: `make serve` and `make test`.
# Both bootstrap .venv from pyproject.toml on first use (and again when it changes).
# `make check` is the developer loop: lint, types and the sans-IO unit tests (about a minute).
# The kernel packages are compiled with mypyc (setup.py); $(CORE) compiles them again
# when a source changed since the last build (mbuf/_core.py compares the stamp).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ARGS   ?=
# What ruff checks and formats (mypy's list is `files` in pyproject.toml; tests/test_lint.py reads this line).
LINT_PATHS = server mbuf ktls bpf netmap userland bench tools tests setup.py

# The packages of CORE_PACKAGES in mbuf/_core.py (tests/test_core.py holds them equal).
CORE_SOURCES = $(wildcard mbuf/*.py ktls/*.py bpf/*.py netmap/*.py)
CORE = $(VENV)/.core
PURE_TESTS = tests/mbuf tests/ktls tests/bpf tests/netmap tests/server/http

.PHONY: serve test check lint bench stat clean core

# pip compiles the core too; the core line says which one the install got.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	@$(PY) -P mbuf/_core.py --say
	touch $@

# Compile again only if the sources differ from the last build's (by content):
# a stale extension never runs (mbuf/_core.py falls back to pure), and make
# rebuilds it before the next serve/test/check/bench.
$(CORE): $(VENV)/.installed $(CORE_SOURCES) setup.py
	@$(PY) -P mbuf/_core.py || $(PY) setup.py -q build_ext --inplace
	@$(PY) -P mbuf/_core.py --say
	touch $@

core: $(CORE)

serve: $(CORE)
	$(PY) -m server serve $(ARGS)

# The whole suite on the compiled core, then the sans-IO unit tests on the pure one.
test: $(CORE)
	$(PY) -m pytest -q $(ARGS)
	NOMAPD_PURE=1 $(PY) -m pytest -q -p no:cacheprovider -m "not integration" $(PURE_TESTS)

check: $(CORE)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not slow" \
		tests/mbuf tests/ktls tests/bpf tests/netmap tests/userland tests/server $(ARGS)

lint: $(CORE)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

stat: $(CORE)
	$(PY) -m server stat $(ARGS)

bench: $(CORE)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/.peers-venv build
	rm -f mbuf/_build_stamp.json nomapd_core__mypyc*.so $(addsuffix /*.so,mbuf ktls bpf netmap)
