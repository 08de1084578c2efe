# Two commands on a fresh machine: `make demo` (main job on stand-in data, CPU) and `make test`.
# `make lint` (ruff + the import-linter layering contracts) runs in CI before the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/smoke.yaml
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean-runs

$(STAMP): requirements-cpu.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# DeepSpeed JIT-compiles its CPU shared-memory allreduce op on first use (~80 s); build it once here
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python benchmarks/store_benchmark.py
	$(BIN)/python benchmarks/simulate_speed.py
	$(BIN)/python benchmarks/train_throughput.py

clean-runs:
	rm -rf runs/smoke
