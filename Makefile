# The commands CI runs, exactly. `make serve` and `make test` set up what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PROTO_SRC := protos/tokenwire/v1/generation.proto
TORCH_VERSION ?= 2.13.0

.PHONY: serve test lint typecheck proto proto-check buf-lint pytest clean

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

test: $(STAMP) $(NODE_STAMP) proto-check lint typecheck buf-lint pytest

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

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
