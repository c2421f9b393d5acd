#!/usr/bin/env bash
# System packages the test suite needs beyond the venv:
# - the PostgreSQL server binaries (tests start their own throwaway cluster, see
#   tests/postgres_server.py);
# - a Redis 7 server (Debian's redis-server), which the queue tests run against beside
#   the embedded 6.2, since deployments run 7.x (see tests/system_redis.py).
#
# Idempotent, and a no-op (exit 0) where it cannot install: not root, or no apt-get.
# There those tests skip, unless pytest runs with --require-postgres / --require-redis7
# (CI does).
set -euo pipefail

say() { echo "install-system-packages: $*"; }

find_initdb() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1
}

has_redis7() {
    local binary
    binary=$(command -v redis-server || true)
    [ -n "$binary" ] && "$binary" --version | grep -Eq 'v=([7-9]|[1-9][0-9])\.'
}

missing=()
if initdb=$(find_initdb) && [ -n "$initdb" ]; then
    say "PostgreSQL server already installed ($initdb)"
else
    missing+=(postgresql)
fi
if has_redis7; then
    say "Redis 7 server already installed ($(command -v redis-server))"
else
    missing+=(redis-server)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    say "nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "${missing[*]} not found and not root: skipping (their tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "${missing[*]} not found and no apt-get: skipping (their tests will skip)"
    exit 0
fi

say "installing ${missing[*]} with apt-get"
# The packages may create and start a default PostgreSQL cluster on 5432 and a Redis on
# 6379; tests never use them (they run their own on free ports), so that is harmless.
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"

if ! { initdb=$(find_initdb) && [ -n "$initdb" ]; }; then
    say "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb appeared" >&2
    exit 1
fi
if ! has_redis7; then
    say "apt-get installed redis-server but no redis-server >= 7 is on PATH" >&2
    exit 1
fi
say "installed: PostgreSQL server ($initdb), Redis ($(redis-server --version | cut -d' ' -f3))"
