#!/usr/bin/env bash
# Installs what the tests need and prints nothing else but progress: redis-server and
# redis-cli (the cluster tests create a Redis Cluster with it), and openssl (the Redis TLS
# tests make their CA with it) from Debian when missing, and the MongoDB-wire server
# SecantusDB into a venv.
# Idempotent: a warm machine skips what it has.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/venv-secantus"
secantus_version="0.7.0b3"

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 ||
  ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing redis-server, redis-tools and openssl (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools openssl >/dev/null
fi

if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('SecantusDB') != '$secantus_version')" 2>/dev/null; then
  echo "setup: installing SecantusDB==$secantus_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "SecantusDB==$secantus_version"
fi
test -x "$venv/bin/secantusd-py" || { echo "setup: $venv/bin/secantusd-py is missing after install" >&2; exit 1; }
echo "setup: redis-server $(redis-server --version | awk '{print $3}'), SecantusDB $secantus_version ready"
