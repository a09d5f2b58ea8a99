# The commands CI runs, exactly. `make serve` and `make test` set up what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PROTO_SRC := protos/tokenwire/v1/generation.proto
TORCH_VERSION ?= 2.13.0
# Defined before any rule names them: prerequisites expand when a rule is read.
HELM_VENV := .venv-helm
HELM_STAMP := $(HELM_VENV)/.installed
CLIENT_NODE_STAMP := clients/node/node_modules/.installed

.PHONY: serve tiny-model test lint typecheck proto proto-check buf-lint pytest clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU build of torch first, so that the transformers extra does not pull
	@# the newest CUDA build (several GB) for the tests' tiny model.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,transformers]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	@# npm install, not npm ci: the registry mirror carries only the linux builds of
	@# buf's optional per-platform packages, which npm ci's lock check rejects.
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

serve: $(STAMP)
	$(BIN)/tokenwire-server

# A tiny random-weight model, built in code (nothing downloads), for trying
# TOKENWIRE_ENGINE=transformers TOKENWIRE_MODEL=models/tiny-llama make serve.
tiny-model: $(STAMP)
	$(BIN)/python -m tests.engines.tiny_model models/tiny-llama

test: $(STAMP) $(NODE_STAMP) proto-check lint typecheck buf-lint pytest helm-check node-check buf-breaking

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=protos \
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

# The Node.js client is installed first, so its end-to-end test runs here.
pytest: $(STAMP) $(CLIENT_NODE_STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(HELM_VENV) node_modules clients/node/node_modules .mypy_cache .ruff_cache .pytest_cache

# --- Kubernetes and other languages ------------------------------------------
.PHONY: helm-check node-check buf-breaking

$(HELM_STAMP): helm/check-requirements.txt
	@test -x $(HELM_VENV)/bin/python || $(PYTHON) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/python -m pip install -q -r helm/check-requirements.txt
	@touch $@

# The chart: helm lint --strict, render with every value set (defaults and
# helm/tokenwire/ci/), Kubernetes 1.30 schemas, the chart's promises, checkov;
# and hadolint on the images it deploys.
helm-check: $(STAMP) $(HELM_STAMP)
	$(BIN)/mypy --python-executable $(HELM_VENV)/bin/python scripts/helm_check.py
	$(HELM_VENV)/bin/python scripts/helm_check.py
	$(HELM_VENV)/bin/hadolint --no-color Dockerfile Dockerfile.cpu

$(CLIENT_NODE_STAMP): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm install --no-audit --no-fund --loglevel=error
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

# --- Benchmark (issue 6) -----------------------------------------------------
.PHONY: bench

# Every scenario, against the bare grpc.aio and FastAPI SSE baselines in the same
# run (under 10 minutes): bench/results/<date>.{json,md,png}, docs/performance.md.
# A smoke run of every scenario at tiny sizes is part of the test suite
# (tests/bench/test_smoke.py).
bench: $(STAMP)
	$(BIN)/python -m bench
