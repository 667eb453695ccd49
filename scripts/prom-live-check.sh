#!/usr/bin/env bash
# Proves the dashboards and alerts against a running roomcast stack with a real Prometheus.
#
#   scripts/prom-live-check.sh gateway=127.0.0.1:9090,fanout=127.0.0.1:9091,persister=127.0.0.1:9092
#
# The stack (and the traffic it needs: sends, bad frames, a failed write, ...) is started by
# the caller. Target names are pods: `gateway-1=HOST:PORT` gets pod gateway-1, job gateway;
# `SERVICE/POD=HOST:PORT` names both. This script:
#   1. installs prometheus/promtool and the Python tools if missing (check-dashboards.sh);
#   2. writes a prometheus.yml with `dashboards/check.py prom-config` (scrape every 1s, labels
#      namespace=roomcast-test, pod, job; rule_files = dashboards/alerts.yml);
#   3. starts prometheus on a free loopback port with a temporary storage folder;
#   4. waits until every target is up, then SCRAPE_WAIT seconds (default 15) of scrapes;
#   5. runs `dashboards/check.py live`: every panel query, variable query and alert
#      expression must return at least one series;
#   6. stops prometheus and exits with the result of step 5.
# Environment: SCRAPE_WAIT (15), UP_TIMEOUT (60, seconds to wait for targets),
# KEEP_PROM_DIR=1 keeps the temporary folder (config, data, prometheus.log).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.tools/venv-dash/bin/python"
SCRAPE_WAIT=${SCRAPE_WAIT:-15}
UP_TIMEOUT=${UP_TIMEOUT:-60}
export PYTHONDONTWRITEBYTECODE=1

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 SERVICE=HOST:PORT[,SERVICE-N=HOST:PORT...]" >&2
    echo "e.g.   $0 gateway=127.0.0.1:9090,fanout=127.0.0.1:9091,persister=127.0.0.1:9092" >&2
    exit 2
fi
TARGETS=$1

say() { printf '[prom-live-check] %s\n' "$*"; }
finish() {  # finish RC MESSAGE: the closing line counts this whole run as one check
    say "$2"
    if [ "$1" = 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; fi
    exit "$1"
}

bash "$ROOT/scripts/check-dashboards.sh" --install-only || finish 1 "could not install the tools"

TMP=$(mktemp -d /tmp/roomcast-prom.XXXXXX)
PROM_PID=""
cleanup() {
    if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
        kill "$PROM_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PROM_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PROM_PID" 2>/dev/null
        wait "$PROM_PID" 2>/dev/null
    fi
    if [ "${KEEP_PROM_DIR:-}" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# its output is shown only on failure, so that the run has a single `N passed, M failed` line
if ! "$PY" "$ROOT/dashboards/check.py" prom-config --targets "$TARGETS" --out "$TMP/prometheus.yml" \
        >"$TMP/prom-config.log" 2>&1; then
    cat "$TMP/prom-config.log"
    exit 1
fi
say "config: $(grep '^PASS' "$TMP/prom-config.log" | sed 's/^PASS prom-config: //')"
promtool check config "$TMP/prometheus.yml" >"$TMP/check-config.log" 2>&1 \
    || { cat "$TMP/check-config.log"; finish 1 "promtool check config failed"; }

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/data" \
    --web.listen-address="127.0.0.1:$PORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
say "prometheus pid $PROM_PID on $URL (storage $TMP/data)"

# wait for readiness, then for every target to be up
"$PY" - "$URL" "$UP_TIMEOUT" "$PROM_PID" <<'EOF'
import json, os, sys, time, urllib.request
url, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + timeout
last = "prometheus not ready"
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print("[prom-live-check] prometheus exited")
        sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/api/v1/targets?state=active", timeout=2) as r:
            targets = json.load(r)["data"]["activeTargets"]
        states = [(t["labels"].get("pod"), t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in targets]
        if states and all(h == "up" for _, _, h, _ in states):
            print(f"[prom-live-check] all {len(states)} targets up: " + ", ".join(p for p, _, _, _ in states))
            sys.exit(0)
        last = "; ".join(f"{p} {u} {h} {e}".strip() for p, u, h, e in states) or "no targets yet"
    except Exception as e:
        last = f"prometheus not ready: {e}"
    time.sleep(0.5)
print(f"[prom-live-check] targets not all up after {timeout:.0f}s: {last}")
sys.exit(1)
EOF
if [ $? -ne 0 ]; then
    tail -20 "$TMP/prometheus.log"
    finish 1 "targets did not come up"
fi

say "waiting ${SCRAPE_WAIT}s of scrapes and rule evaluations"
sleep "$SCRAPE_WAIT"

"$PY" "$ROOT/dashboards/check.py" live --prometheus "$URL"
RC=$?
if [ $RC -ne 0 ] && grep -qi 'level=error' "$TMP/prometheus.log"; then
    say "prometheus errors:"; grep -i 'level=error' "$TMP/prometheus.log" | tail -10
fi
exit $RC
