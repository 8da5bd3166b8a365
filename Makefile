# ringd: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: help venv run test test-py lint proto check-proto lint-proto wasm check-wasm bench bench-engine bench-slowloris bench-smoke demo test-node test-go image clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml plugins/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Build .venv and install ringd with its dev tools

run: $(STAMP) ## Serve ringd (built-in default pipeline unless CONFIG=path) on 127.0.0.1:50051
	$(BIN)/ringd serve $(if $(CONFIG),--config $(CONFIG),)

test: $(STAMP) lint check-proto check-wasm ## Everything CI runs: lint, proto and WASM drift checks, pytest, Node and Go suites, bench smoke
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-node
	$(MAKE) --no-print-directory test-go
	$(MAKE) --no-print-directory bench-smoke

test-py: $(STAMP) ## The pytest suite alone
	$(BIN)/pytest -q

lint: $(STAMP) lint-proto ## ruff and mypy (strict) on the Python code, buf lint on the contract
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/typecheck-tree.sh
	$(BIN)/mypy

lint-proto: $(STAMP) ## buf lint on proto/
	cd proto && ../$(BIN)/buf lint

proto: $(STAMP) ## Regenerate the committed stubs from proto/ (Python, .pyi, Go)
	scripts/gen-proto.sh

check-proto: $(STAMP) ## Fail when `make proto` would change the committed stubs
	scripts/gen-proto.sh --check

wasm: ## Rebuild the WASM plugin modules (wasm/modules/*.wasm) from wasm/src/*.ts (AssemblyScript)
	scripts/build-wasm.sh

check-wasm: ## Fail when `make wasm` would change the committed WASM modules
	scripts/build-wasm.sh --check

bench-engine: $(STAMP) ## In-process cost of a ring, and of each built-in plugin on a 2 KB body (microseconds)
	$(BIN)/python bench/engine_bench.py
	$(BIN)/python bench/plugins_bench.py

bench: $(STAMP) ## h2load: ringd vs a bare grpc.aio echo server, where a call's CPU goes inside ringd; StreamRing vs a bidirectional echo
	$(BIN)/python bench/grpc_bench.py
	$(BIN)/python bench/inside.py
	$(BIN)/python bench/stream_bench.py

bench-slowloris: $(STAMP) ## Server RSS under many connections x never-finished streams (issue 15)
	$(BIN)/python bench/slowloris.py

bench-smoke: $(STAMP) ## The benchmarks in a seconds-long smoke mode (so they cannot rot)
	$(BIN)/python bench/engine_bench.py --smoke
	$(BIN)/python bench/plugins_bench.py --smoke
	$(BIN)/python bench/grpc_bench.py --smoke
	$(BIN)/python bench/inside.py --smoke
	$(BIN)/python bench/stream_bench.py --smoke
	$(BIN)/python bench/slowloris.py --rounds 1 --connections 5 --streams 5

demo: $(STAMP) ## Start a server and send requests through all five rings
	$(BIN)/python scripts/demo.py

test-node: ## Node client and example gateway suite
	scripts/test-node.sh

test-go: ## Go client and example gateway suite
	scripts/test-go.sh

IMAGE ?= ringd:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

image: ## Build the container image (needs Docker; not possible on the CI machine): IMAGE=ringd:VERSION
	@command -v docker >/dev/null || { echo "make image needs docker on PATH" >&2; exit 1; }
	docker build -t $(IMAGE) .

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info plugins/*.so
