# Two commands on a fresh machine: `make serve` and `make test`.
# Both bootstrap .venv from pyproject.toml on first use (and again when it changes).
# `make check` is the developer loop: lint, types and the sans-IO unit tests (about a minute).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ARGS   ?=
# What ruff checks and formats (mypy's list is `files` in pyproject.toml; tests/test_lint.py reads this line).
LINT_PATHS = server mbuf ktls bench tools tests

.PHONY: serve test check lint bench stat clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

serve: $(VENV)/.installed
	$(PY) -m server serve $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

check: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not slow" \
		tests/mbuf tests/ktls tests/server $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

stat: $(VENV)/.installed
	$(PY) -m server stat $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/.peers-venv
