# `make demo` and `make test` each set up .venv from pyproject.toml by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# re-install whenever pyproject.toml changes
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/python -m core_jax.demo
	$(BIN)/python -m recsys_jax.demo
	$(BIN)/python -m canvas_jax.demo

test: $(VENV)/.installed-test
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
