#!/usr/bin/env bash
# README's test command. Installs what the tests need (redis-server, SecantusDB,
# Prometheus, the deploy and dashboard checkers, cargo-deny), builds every binary, and
# runs every suite. The tests start their own Redis, MongoDB-wire and Prometheus servers
# on free loopback ports and stop them when done; a missing service fails the run, it is
# never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh
echo "== dashboards and alert rules (also installs prometheus for the live test)"
bash scripts/check-dashboards.sh
echo "== deploy/ and terraform/ (offline checks)"
bash scripts/check-deploy.sh
echo "== cargo deny (licenses, bans, sources; offline)"
bash scripts/check-deny.sh
echo "== rustfmt and clippy"
for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 || { echo "cargo $tool is missing: rustup component add ${tool/fmt/rustfmt}" >&2; exit 1; }
done
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --bins --locked
echo "== the previous release's fanout and persister (for the version-skew test)"
ROOMCAST_PREVIOUS_RELEASE_BIN="$(bash scripts/build-previous-release.sh)"
export ROOMCAST_PREVIOUS_RELEASE_BIN
echo "== cargo test"
cargo test --workspace --locked
echo "== browser and socket.io-client tests"
bash scripts/test-e2e.sh
