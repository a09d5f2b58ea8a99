# The commands CI runs, exactly. `make serve` and `make test` set up what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PROTO_SRC := protos/tokenwire/v1/generation.proto
# Defined before any rule names them: prerequisites expand when a rule is read.
HELM_VENV := .venv-helm
HELM_STAMP := $(HELM_VENV)/.installed
CLIENT_NODE_STAMP := clients/node/node_modules/.installed
TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
UV := $(TOOLS_VENV)/bin/uv

.PHONY: serve tiny-model test lint typecheck proto proto-check buf-lint pytest clean

# --- Locked installs -----------------------------------------------------------
# Every Python package comes from a committed lock file in requirements/, pinned
# with its hashes: dev.txt for .venv (make serve, test, bench), helm.txt for
# .venv-helm, tools.txt for the installers themselves. `make lock` writes them.
# uv, not pip-tools: it resolves the whole dev set in seconds rather than
# minutes, writes pip-compatible requirements files with hashes, and `uv pip
# sync` makes a venv exactly its lock (a package the lock dropped is removed).
# The CPU build of torch comes from the wheel our machines keep in TORCH_WHEELS
# (pip's find-links there); PyPI's torch is the CUDA build, several GB.
TORCH_WHEELS ?= /opt/wheels
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --emit-find-links \
	--custom-compile-command 'make lock'
DEV_LOCK_IN := pyproject.toml requirements/dev.in --extra dev --extra transformers

# $(call locked-venv,DIR,LOCK): DIR becomes a venv holding exactly what LOCK pins.
define locked-venv
	@test -x $(1)/bin/python || $(PYTHON) -m venv --without-pip $(1)
	$(UV) pip sync --quiet --python $(1)/bin/python --require-hashes \
		--build-constraints requirements/build.txt $(2)
endef

$(TOOLS_STAMP): requirements/tools.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --require-hashes --no-deps -r requirements/tools.txt
	@touch $@

# tokenwire itself, editable and without build isolation: its build backend is
# in the lock, so nothing unpinned is fetched to build it.
$(STAMP): requirements/dev.txt pyproject.toml $(TOOLS_STAMP)
	$(call locked-venv,$(VENV),requirements/dev.txt)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $@

# The lock files, from pyproject's ranges and requirements/*.in. `make lock`
# keeps every pin that still fits them; `make lock UPGRADE=1` takes the newest.
.PHONY: lock
lock: $(TOOLS_STAMP)
	$(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) requirements/tools.in -o requirements/tools.txt
	$(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) $(DEV_LOCK_IN) -o requirements/dev.txt
	$(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) requirements/helm.in -o requirements/helm.txt
	$(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) requirements/build.in -o requirements/build.txt

# --- Canaries: the newest and the oldest releases pyproject allows ------------
# Not part of `make test` or CI (docs/development.md says when to run them).
# Each resolves pyproject's ranges afresh into a throwaway venv (.venv-latest,
# .venv-lowest: the newest releases, or the lowest that each direct dependency
# allows) and runs the pytest suite there. torch stays the CPU build on disk.
.PHONY: test-latest test-lowest
test-latest: CANARY_RESOLUTION := highest
test-lowest: CANARY_RESOLUTION := lowest-direct
test-latest test-lowest: $(TOOLS_STAMP) $(CLIENT_NODE_STAMP)
	rm -rf .venv-$(@:test-%=%) && mkdir .venv-$(@:test-%=%)
	$(UV) pip compile $(LOCK_FLAGS) --resolution $(CANARY_RESOLUTION) $(DEV_LOCK_IN) \
		-o .venv-$(@:test-%=%)/requirements.txt
	$(call locked-venv,.venv-$(@:test-%=%),.venv-$(@:test-%=%)/requirements.txt)
	$(UV) pip install --quiet --python .venv-$(@:test-%=%)/bin/python --no-deps \
		--no-build-isolation -e .
	@grep -E '^(torch|transformers|tokenizers|grpcio|protobuf|pydantic|pytest)==' \
		.venv-$(@:test-%=%)/requirements.txt
	.venv-$(@:test-%=%)/bin/pytest -p no:cacheprovider

# npm ci installs exactly the committed lock and never rewrites it.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

serve: $(STAMP)
	$(BIN)/tokenwire-server

# A tiny random-weight model, built in code (nothing downloads), for trying
# TOKENWIRE_ENGINE=transformers TOKENWIRE_MODEL=models/tiny-llama make serve.
tiny-model: $(STAMP)
	$(BIN)/python -m tests.engines.tiny_model models/tiny-llama

test: tree-before $(STAMP) $(NODE_STAMP) proto-check lint typecheck buf-lint pytest helm-check \
	node-check buf-breaking tree-check

# `make test` must leave the tree as it found it: on a fresh clone, `git status
# --porcelain` empty. tree-before notes the state (and the diff) in .git, which
# is never part of the tree; tree-check fails when anything the run wrote
# shows up there (a rewritten lock, a stray output, an unignored build file).
TREE_STATE = { git status --porcelain --untracked-files=all; git diff HEAD --binary | sha256sum; }
.PHONY: tree-before tree-check
tree-before:
	@$(TREE_STATE) > .git/tokenwire-tree-before
tree-check:
	@$(TREE_STATE) > .git/tokenwire-tree-after
	@if ! cmp -s .git/tokenwire-tree-before .git/tokenwire-tree-after; then \
		echo "make test changed the tree (before, then after; git status --porcelain):"; \
		diff .git/tokenwire-tree-before .git/tokenwire-tree-after; exit 1; \
	fi
	@echo "tree-check: make test left the tree as it found it"

# generation.binpb: the same descriptors with their comments (source info), which
# the generated Python code drops; server reflection serves it, so that
# `grpcurl describe` shows the documentation.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=protos \
		--include_source_info --descriptor_set_out=$(PROTO_SRC:.proto=.binpb) \
		$(PROTO_SRC)

# Regenerates the code and fails when it differs from what is committed.
proto-check: proto
	@git diff --exit-code -- protos || (echo "generated code is out of date: run 'make proto' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- protos)" || (git status --porcelain -- protos; echo "untracked generated files: run 'make proto' and commit"; exit 1)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

buf-lint: $(NODE_STAMP)
	npx --no-install buf lint

# The Node.js client is installed first, so its end-to-end test runs here; and
# the real programs the HTTP tests drive: curl, and Debian's chromium for the
# playground page (Playwright cannot download a browser here).
pytest: $(STAMP) $(CLIENT_NODE_STAMP) system-tools
	$(BIN)/pytest

# Debian packages the tests use, PACKAGE or PACKAGE:COMMAND where the command it
# gives has another name. haproxy, iproute2 and iptables: tests/hardening (a real
# proxy; network namespaces and dropped packets).
SYSTEM_TOOLS := chromium curl haproxy iproute2:ip iptables
.PHONY: system-tools
system-tools:
	@missing=$$(for t in $(SYSTEM_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $${t##*:} >/dev/null || echo $${t%%:*}; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing $$missing (Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "system-tools: $$missing missing, and no root apt-get to install them:" \
				"the tests that need them are skipped"; \
		fi; \
	fi

clean:
	rm -rf $(VENV) $(HELM_VENV) $(TOOLS_VENV) .venv-latest .venv-lowest node_modules clients/node/node_modules .mypy_cache .ruff_cache .pytest_cache

# --- Kubernetes and other languages ------------------------------------------
.PHONY: helm-check node-check buf-breaking

$(HELM_STAMP): requirements/helm.txt $(TOOLS_STAMP)
	$(call locked-venv,$(HELM_VENV),requirements/helm.txt)
	@touch $@

# The chart: helm lint --strict, render with every value set (defaults and
# helm/tokenwire/ci/), Kubernetes 1.30 schemas, the chart's promises, checkov;
# and hadolint on the images it deploys.
helm-check: $(STAMP) $(HELM_STAMP)
	$(BIN)/mypy --python-executable $(HELM_VENV)/bin/python scripts/helm_check.py
	$(HELM_VENV)/bin/python scripts/helm_check.py
	$(HELM_VENV)/bin/hadolint --no-color Dockerfile Dockerfile.cpu

$(CLIENT_NODE_STAMP): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The Node.js client's JSDoc types (tsc, strict); tests/e2e/test_node_client.py
# runs it against a real server in the pytest run.
node-check: $(CLIENT_NODE_STAMP)
	cd clients/node && npm run -s check

# Breaking changes to the contract, against the previous commit: main moves one
# reviewed commit at a time, so HEAD~1 is the contract clients last built
# against (a branch name would compare a branch with itself once merged). A
# clone with a single commit (or a depth-1 CI checkout) has nothing to compare.
buf-breaking: $(NODE_STAMP)
	@if git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null; then \
		npx --no-install buf breaking --against '.git#ref=HEAD~1'; \
	else \
		echo "buf-breaking: no previous commit to compare with: skipped"; \
	fi

# --- Benchmark ---------------------------------------------------------------
# The long hardening runs (docs/operations.md, Hardening): SOAK_SECONDS (default
# 600) of mixed traffic on both doors with the server sampled for growth
# (bench/soak.py; the summary in bench/results/soak-<date>.json), then the long
# fuzzing of both doors (FUZZ_EXAMPLES cases per property; make test runs few).
SOAK_SECONDS ?= 600
FUZZ_EXAMPLES ?= 2000
.PHONY: soak
soak: $(STAMP) system-tools
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) --out bench/results/soak-$$(date +%F).json
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider tests/hardening -k fuzz --timeout 3600

.PHONY: bench

# Every scenario, against the bare grpc.aio and FastAPI SSE baselines in the same
# run (under 10 minutes): bench/results/<date>.{json,md,png}, docs/performance.md.
# SCENARIOS="saturation latency" runs only those (throughput, saturation, latency,
# cancel, memory; and constraints, which runs by name only): bench/results/
# <date>-saturation-latency.*, docs untouched.
# A smoke run of every scenario at tiny sizes is part of the test suite
# (tests/bench/test_smoke.py).
SCENARIOS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(SCENARIOS)
