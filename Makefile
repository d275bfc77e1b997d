# One entry point for set-up, tests, benchmarks and the demo; every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test bench clean

# Service targets (protos, archives, demo, stop) live beside the code they build.
-include mk/*.mk

install: $(STAMP)

# Reinstall when the dependency list changes; the constraint keeps torch on the CPU wheel.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,align,serve,clip]'
	@touch $@

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/generator.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
