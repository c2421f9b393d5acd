#!/usr/bin/env bash
# System packages the test suite needs beyond the venv: the PostgreSQL server binaries
# (tests start their own throwaway cluster, see tests/postgres_server.py).
#
# Idempotent, and a no-op (exit 0) where it cannot install: not root, or no apt-get.
# There the PostgreSQL tests skip, unless pytest runs with --require-postgres (CI does).
set -euo pipefail

say() { echo "install-system-packages: $*"; }

find_initdb() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1
}

if initdb=$(find_initdb) && [ -n "$initdb" ]; then
    say "PostgreSQL server already installed ($initdb); nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL server not found and not root: skipping (PostgreSQL tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "PostgreSQL server not found and no apt-get: skipping (PostgreSQL tests will skip)"
    exit 0
fi

say "installing postgresql with apt-get"
# The package may create and start a default cluster on port 5432; tests never use it
# (they run their own on a free port), so that is harmless.
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

if initdb=$(find_initdb) && [ -n "$initdb" ]; then
    say "installed PostgreSQL server ($initdb)"
else
    say "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb appeared" >&2
    exit 1
fi
