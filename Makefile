# One entry point for set-up, tests, benchmarks and the demo; every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lint test test-fast bench clean

# Service targets (protos, archives, demo, stop) live beside the code they build.
-include mk/*.mk

install: $(STAMP)

# Reinstall when the dependency list changes; the constraint keeps torch on the CPU wheel.
# The gRPC client is a distribution of its own (clients/python): installed editable beside the library, it
# reads the faceedit.v1 stubs that `make protos` generates into its folder.
$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,align,serve,clip,portraits]' -e ./clients/python
	@touch $@

# Lint and import order (ruff, configured in pyproject.toml); `make test` runs it first.
lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow or integration, on two processes (pytest-xdist):
# 30-47 s on this project's 2-core machine, ~65 s on one. `make test` runs all of them, serially: its
# integration tests start real servers whose start-up times are sized for a machine not shared with more tests.
test-fast: install protos
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not integration" $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/generator.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache clients/python/build clients/python/*.egg-info \
		$(PROTO_OUT_ALL)
