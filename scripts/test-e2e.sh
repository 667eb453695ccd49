#!/usr/bin/env bash
# End-to-end tests against the real binaries, run by node's built-in test runner: the web
# client (web/index.html) in headless Chromium (e2e/tests/browser-*.test.js), and
# socket.io-client against two gateways (e2e/tests/socketio.test.js).
#
# Needs: target/debug/{roomcast,gateway,fanout,persister} (`cargo build --workspace --bins`;
# this script never builds Rust), redis-server and SecantusDB (scripts/setup-test-deps.sh),
# Node.js >= 20 with npm. Installs Debian's chromium if it is missing, and the e2e/ Node
# packages from e2e/package-lock.json (npm ci). Screenshots, WebSocket frame logs and
# process logs go to test-output/e2e/ and test-output/logs/. Exits non-zero on failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)

fail() { echo "test-e2e: $*" >&2; exit 1; }

bin_dir=${ROOMCAST_BIN_DIR:-$root/target/debug}
for b in roomcast gateway fanout persister; do
  [[ -x "$bin_dir/$b" ]] || fail "$bin_dir/$b is missing: build the binaries first with \`cargo build --workspace --bins\` (this script does not build Rust)"
done
command -v redis-server >/dev/null 2>&1 || fail "redis-server is missing: run scripts/setup-test-deps.sh"
secantusd=${ROOMCAST_SECANTUSD:-$root/.tools/venv-secantus/bin/secantusd-py}
[[ -x "$secantusd" ]] || fail "$secantusd is missing: run scripts/setup-test-deps.sh"

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || fail "node and npm are needed (Node.js >= 20)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || fail "Node.js >= 20 is needed; this is $(node --version)"

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x "$chromium" ]]; then
  [[ "$chromium" == /usr/bin/chromium ]] || fail "CHROMIUM=$chromium is not executable"
  [[ $(id -u) -eq 0 ]] || fail "$chromium is missing; install it as root: apt-get install -y chromium"
  echo "test-e2e: installing chromium (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  [[ -x "$chromium" ]] || fail "$chromium is still missing after apt-get install chromium"
fi
echo "test-e2e: $("$chromium" --version 2>/dev/null | head -n1), node $(node --version)"

cd "$root/e2e"
echo "test-e2e: npm ci (e2e/package-lock.json)"
npm ci --prefer-offline --no-audit --no-fund --loglevel=error
node lib/harness.js check

rm -rf "$root/test-output/e2e"
status=0
node --test --test-concurrency=1 --test-reporter=spec tests/*.test.js || status=$?

echo "test-e2e: $(( $(date +%s) - started ))s; screenshots in test-output/e2e/, process logs in test-output/logs/e2e-*.log"
if [[ $status -ne 0 ]]; then
  echo "test-e2e: FAILED (node --test exited with $status)" >&2
fi
exit "$status"
