# Every target does its own set-up: `install` is idempotent and the others depend on it.
SHELL := /bin/bash
PYTHON ?= python3.11
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# Python 3.11 gets everything. Other Pythons (3.12, 3.13) get the router, the evaluation and the
# tools, and their tests: the model servers' tests stay on 3.11 here, where torch lies on disk
# (for 3.13 it would be gigabytes of download). `make install EXTRAS=...` chooses otherwise.
ifeq ($(PY_VERSION),3.11)
VENV ?= .venv
EXTRAS ?= router,compare,modelserver,reference,dev
else
VENV ?= .venv-$(PY_VERSION)
EXTRAS ?= router,compare,dev
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MODELSERVING := $(findstring modelserver,$(EXTRAS))
PROTO_SRC := $(shell find protos -name '*.proto' | sort)
MODELS ?= models
DATASET ?= data/demo
PYTEST_ARGS ?=

.PHONY: install tools node-client protos lint format test bench rehearsal gpu-check models dataset demo up down lock clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@case "$(PY_VERSION)" in 3.11|3.12|3.13) ;; *) echo "need Python 3.11 to 3.13; $(PYTHON) is $(PY_VERSION)"; exit 1;; esac
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt --config-settings editable_mode=compat -e '.[$(EXTRAS)]'
	@# gbstats 0.8.0, GrowthBook's engine and the CUPED tests' reference, pins numpy<2 and
	@# pandas<2, which this project's numpy 2 and pandas 3 exclude; the modules the tests
	@# import need only numpy, scipy and pydantic, so it comes without its dependencies.
	$(if $(findstring dev,$(EXTRAS)),$(BIN)/pip install -q --no-deps gbstats==0.8.0)
	touch $@

install: $(STAMP)

# System tools some tests use (each test skips, naming the tool, when it is missing). As root
# with apt-get, the missing ones are installed; otherwise this only says what is missing.
# TOOLS= (empty) skips it, e.g. to run the suite as a machine without them would.
TOOLS ?= espeak-ng prometheus prometheus-alertmanager kubectl postgresql chromium
tools:
	@missing=(); for pkg in $(TOOLS); do \
		case $$pkg in prometheus-alertmanager) bin=alertmanager;; postgresql) bin=initdb;; *) bin=$$pkg;; esac; \
		command -v $$bin >/dev/null 2>&1 || command -v prometheus-$$bin >/dev/null 2>&1 \
			|| ls /usr/lib/postgresql/*/bin/$$bin >/dev/null 2>&1 || missing+=($$pkg); \
	done; \
	if [ $${#missing[@]} -eq 0 ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "tools: not root with apt-get; tests needing $${missing[*]} will skip"; exit 0; fi; \
	echo "tools: installing $${missing[*]}"; \
	apt-get update -qq || true; \
	for pkg in "$${missing[@]}"; do \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null 2>&1 \
			|| echo "tools: $$pkg is not installable here; tests needing it will skip"; \
	done

# Stubs are committed; tests/test_protos.py fails when they are stale.
protos: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO_SRC)
	find gamaserving -type d -exec touch {}/__init__.py \;

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(MODELS)/wav2vec2/model.yaml: | install
	$(BIN)/modelserver make-tiny --family wav2vec2 --out $(MODELS)/wav2vec2

# GAMA goes the way a downloaded release does: the released layout, then the converter
# (answers capped at 32 tokens for the tiny model; the release's default is 400).
$(MODELS)/gama/model.yaml: | install
	$(BIN)/modelserver make-tiny --family gama --out $(MODELS)/gama-release
	$(BIN)/modelserver export --family gama --out $(MODELS)/gama --version tiny-1 \
		--checkpoint $(MODELS)/gama-release/checkpoint-2500 \
		--base-model $(MODELS)/gama-release/Llama-2-7b-chat-hf-qformer \
		--labels $(MODELS)/gama-release/labels.txt --max-new-tokens 32

models: install $(MODELS)/wav2vec2/model.yaml $(MODELS)/gama/model.yaml

$(DATASET)/manifest.jsonl: | install
	$(BIN)/evaluation make-dataset --out $(DATASET)

dataset: install $(DATASET)/manifest.jsonl

# The whole story on the tiny models: start, compare, A/B with a ramp, failover, reports.
demo: install models dataset
	$(BIN)/python -m demo --models $(MODELS) --dataset $(DATASET)/manifest.jsonl --out out/demo

# The stack in the foreground for your own client: config/router.yaml as it stands (router on
# 127.0.0.1:50051, model servers on 50061 and 50062, the rollout controller), until Ctrl-C or
# `make down`.
UP_CONFIG ?= config/router.yaml
UP_OUT ?= out/up
up: install models dataset
	$(BIN)/python -m demo up --config $(UP_CONFIG) --models $(MODELS) --out $(UP_OUT)

down:
	@if [ -f $(UP_OUT)/up.pid ]; then kill -TERM "$$(cat $(UP_OUT)/up.pid)" && echo "stopping the stack"; \
	else echo "no stack running ($(UP_OUT)/up.pid is absent)"; fi

# A client in another language (Node.js) for the router's streaming API; its test skips,
# naming what is missing, without node and npm.
NODE_CLIENT := tests/clients/node
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund --silent \
			|| echo "tools: npm ci failed; the Node.js client test will skip"; \
	else echo "tools: no npm; the Node.js client test will skip"; fi

node-client: $(NODE_CLIENT)/node_modules/.package-lock.json

test: install tools node-client $(if $(MODELSERVING),models)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install models
	$(BIN)/python -m benchmarks.modelserver --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.gama --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.generation --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.router --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.overload --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.results --models $(MODELS) --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.decisions --out docs/benchmarks.md

# GAMA (and wav2vec2-base) at full size with random weights: write, convert, plan, serve, ask,
# report memory and times. About 30 GB of disk under REHEARSAL_WORK, deleted at the end; about
# fifteen minutes for 7b on two cores. Not part of `make test` (its tiny size is).
REHEARSAL_SIZE ?= 7b
REHEARSAL_WORK ?= /var/tmp/gama-rehearsal
REHEARSAL_OUT ?= docs/benchmarks.md
REHEARSAL_ARGS ?=
rehearsal: install
	$(BIN)/python -m benchmarks.rehearsal --size $(REHEARSAL_SIZE) --work $(REHEARSAL_WORK) \
		--json $(REHEARSAL_WORK).json --out $(REHEARSAL_OUT) $(REHEARSAL_ARGS)

# The day a GPU is lent: ONNX Runtime on CUDA, the rehearsal GAMA served in bfloat16 on the GPU,
# tokens/s and time to first token continuous against static, NVML metrics (benchmarks/gpu_check.py).
# Refuses at once (exit 3) without CUDA. GPU_CHECK_SIZE=1b fits a short budget.
GPU_CHECK_SIZE ?= 7b
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check --size $(GPU_CHECK_SIZE) --json gpu-check.json

# Re-resolve pins after editing dependencies in pyproject.toml: one universal resolution (uv)
# for every platform and Python from 3.11 on, with environment markers; every cap lives in
# pyproject.toml. tests/test_install.py checks that the extras resolve on each platform.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q uv
	( head -n 3 constraints.txt; .venv-lock/bin/uv pip compile -q --universal --python-version 3.11 \
		pyproject.toml --all-extras --no-header --no-annotate ) > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf .venv .venv-3.* $(MODELS) $(DATASET) .pytest_cache .mypy_cache .ruff_cache
