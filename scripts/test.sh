#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests on SQLite (the e2e tests spawn the
# penwarden and pensim binaries, so they are built first), then the store suite and the
# end-to-end tests again with the record on PostgreSQL (PENWARDEN_TEST_STORE: each test
# creates a database with a random name and drops it after).
#
# PostgreSQL: the server PENWARDEN_TEST_STORE names (a postgres:// URL of a user who may create
# databases), else the one at 127.0.0.1:5432 (user postgres, trust auth), else a private
# server this script starts (initdb in a temporary directory, a free port) and stops at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
PENWARDEN_TEST_STORE=sqlite cargo test --workspace

postgres="${PENWARDEN_TEST_STORE:-}"
if [[ "$postgres" != postgres://* && "$postgres" != postgresql://* ]]; then
  if pg_isready -q -h 127.0.0.1 -p 5432 && psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    postgres="postgres://postgres@127.0.0.1:5432/postgres"
  else
    bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
    data="$(mktemp -d)"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # initdb and the server refuse to run as root; they run as the nobody-like postgres user
    # when this script is root.
    run_as=()
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres "$data"
      run_as=(runuser -u postgres --)
    fi
    "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
    "${run_as[@]}" "$bin/pg_ctl" -D "$data" -o "-h 127.0.0.1 -p $port -k $data" -l "$data/server.log" -w start >/dev/null
    trap '"${run_as[@]}" "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null; rm -rf "$data"' EXIT
    postgres="postgres://postgres@127.0.0.1:$port/postgres"
  fi
fi
echo "tests on PostgreSQL: $postgres"
PENWARDEN_TEST_STORE="$postgres" cargo test -p penwarden-store
PENWARDEN_TEST_STORE="$postgres" cargo test -p penwarden-tests --test e2e
