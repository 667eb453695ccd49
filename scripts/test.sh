#!/usr/bin/env bash
# README's test command. Installs what the tests need (redis-server, SecantusDB, the
# dashboard tools), builds every binary, and runs every suite. The tests start their own
# Redis and MongoDB-wire servers on free loopback ports and stop them when done; a
# missing service fails the run, it is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh
echo "== build"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== dashboards and alert rules"
bash scripts/check-dashboards.sh
