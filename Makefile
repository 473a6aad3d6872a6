# One entry point for set-up, build and tests. Every target creates what it needs itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv build shim fakes protos demo test test-all bench scorecard clean

all: build

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

## build: the shim, the fake driver libraries the tests use, the gRPC stubs
build: shim fakes protos

shim:
	@if [ -f shim/Makefile ]; then $(MAKE) --no-print-directory -C shim; fi

fakes:
	@if [ -f tests/fakes/Makefile ]; then $(MAKE) --no-print-directory -C tests/fakes; fi

protos: $(STAMP)
	@if [ -f kubeletplugin/protos.mk ]; then $(MAKE) --no-print-directory -f kubeletplugin/protos.mk PY=$(abspath $(PY)); fi

## demo: plan the example workloads on the built-in RTX 3080 inventory
demo: $(STAMP) build
	$(VENV)/bin/vgpu-dra plan

## test: the whole suite (unit, shim, plugin, controller; e2e and gpu tiers skip themselves)
test: $(STAMP) build
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP) build
	$(PY) -m pytest -q tests

bench: $(STAMP) build
	$(PY) bench/allocator.py

## scorecard: the GPU scorecard (bench/gpu_scorecard.py, docs/benchmarks.md); ARGS=--fake: on the fakes
# Uses the venv when there is one, else python3 (a GPU machine whose python3 has PyTorch).
SCORECARD_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
scorecard:
	$(SCORECARD_PY) bench/gpu_scorecard.py $(ARGS)

clean:
	@if [ -f shim/Makefile ]; then $(MAKE) -C shim clean; fi
	@if [ -f tests/fakes/Makefile ]; then $(MAKE) -C tests/fakes clean; fi
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
