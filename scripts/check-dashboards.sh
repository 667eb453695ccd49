#!/usr/bin/env bash
# Offline checks of dashboards/ (Grafana dashboards, Prometheus alert rules and their tests),
# plus self-tests proving that each check can fail.
#
#   scripts/check-dashboards.sh                 install what is missing, run every check
#   scripts/check-dashboards.sh --install-only  only install (used by prom-live-check.sh)
#
# Installs what it needs itself, pinned:
#   - Debian's `prometheus` package (ships promtool), with apt-get, only when promtool or
#     prometheus is missing (apt-get update first, then; services are not started);
#   - grafana-foundation-sdk and PyYAML from PyPI into .tools/venv-dash (gitignored).
# Prints one PASS/FAIL line per check and ends with `N passed, M failed`; exits non-zero when
# anything failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.tools/venv-dash"
PY="$VENV/bin/python"
PROM_DEB_VERSION="2.42.0+ds-5+deb12u1"   # Debian 12 (bookworm)
SDK_PIN='grafana-foundation-sdk==1769699379!11.6.0'   # Grafana 11.6 schema
YAML_PIN='PyYAML==6.0.3'
export PYTHONDONTWRITEBYTECODE=1

log() { printf '%s\n' "$*" >&2; }

install_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        log "promtool/prometheus missing and not root: install Debian's prometheus package ($PROM_DEB_VERSION)"
        return 1
    fi
    log "installing Debian package prometheus=$PROM_DEB_VERSION (apt-get update first)"
    local aptlog
    aptlog=$(mktemp)
    apt-get update -qq >"$aptlog" 2>&1 || { cat "$aptlog" >&2; rm -f "$aptlog"; return 1; }
    # Do not let the package start a Prometheus daemon (it would take :9090, the gateway's
    # metrics port): a policy-rc.d that forbids starting services, unless one exists already.
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "prometheus=$PROM_DEB_VERSION" >"$aptlog" 2>&1 \
    || {
        log "exact version $PROM_DEB_VERSION not available; trying prometheus=2.42.0*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            'prometheus=2.42.0*' >"$aptlog" 2>&1
    } || { rc=1; tail -20 "$aptlog" >&2; }
    rm -f "$aptlog"
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || return 1
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

install_venv() {
    if [ -x "$PY" ] && "$PY" - "$SDK_PIN" "$YAML_PIN" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
import grafana_foundation_sdk, yaml  # noqa
EOF
    then
        return 0
    fi
    local base=""
    for cand in "${PYTHON:-}" python3.11 python3; do
        if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 \
            && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            base=$cand
            break
        fi
    done
    if [ -z "$base" ]; then
        log "no python >= 3.11 found (set PYTHON=...)"
        return 1
    fi
    log "creating $VENV with $base; installing $SDK_PIN $YAML_PIN"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$base" -m venv "$VENV" >&2 || return 1
    "$VENV/bin/pip" install -q --disable-pip-version-check "$SDK_PIN" "$YAML_PIN" >&2
}

install_all() {
    local ok=0
    install_prometheus || { log "ERROR: could not install prometheus/promtool"; ok=1; }
    install_venv || { log "ERROR: could not create $VENV"; ok=1; }
    return $ok
}

if [ "${1:-}" = "--install-only" ]; then
    install_all
    exit $?
fi

cd "$ROOT"
PASSED=0
FAILED=0
OUT=$(mktemp)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" "$OUT"' EXIT

pass() { PASSED=$((PASSED + 1)); printf 'PASS %s\n' "$1"; }
fail() {
    FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"
    [ -s "$OUT" ] && sed 's/^/     | /' "$OUT" | tail -n "${2:-40}"
    return 0
}

# expect_ok NAME CMD...: the command must succeed
expect_ok() {
    local name=$1; shift
    if "$@" >"$OUT" 2>&1; then pass "$name"; else fail "$name" 200; fi
}

# expect_fail NAME PATTERN CMD...: the command must fail, and its output must match PATTERN
# (so that it failed for the planted reason, not for another one)
expect_fail() {
    local name=$1 pattern=$2; shift 2
    if "$@" >"$OUT" 2>&1; then
        fail "self-test: $name (the check passed on broken input)"
    elif grep -Eq -- "$pattern" "$OUT"; then
        pass "self-test: $name"
    else
        fail "self-test: $name (failed, but without /$pattern/)"
    fi
}

echo "== installing tools"
if install_all; then
    pass "tools installed ($(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3); $SDK_PIN; $YAML_PIN)"
else
    FAILED=$((FAILED + 1)); echo "FAIL tools could not be installed"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi

echo "== checks"
expect_ok "promtool check rules dashboards/alerts.yml" promtool check rules dashboards/alerts.yml
expect_ok "promtool test rules dashboards/alerts_test.yml" promtool test rules dashboards/alerts_test.yml
expect_ok "check.py selftest (PromQL scanning)" "$PY" dashboards/check.py selftest
if "$PY" dashboards/check.py static >"$OUT" 2>&1; then
    pass "check.py static ($(tail -1 "$OUT"))"
else
    fail "check.py static ($(tail -1 "$OUT"))" 200
fi

echo "== self-tests: every check must fail on planted faults"
# A copy of dashboards/ to break, one fault per copy.
fresh() {  # fresh NAME -> prints a folder holding a pristine copy of the dashboards and rules
    local d="$WORK/$1"
    rm -rf "$d"; mkdir -p "$d"
    cp dashboards/*.json dashboards/alerts.yml dashboards/alerts_test.yml "$d/"
    printf '%s\n' "$d"
}
# mutate FILE PYTHON-CODE: edits a JSON dashboard in place; the code sees `d` (the dashboard)
mutate() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
path, code = sys.argv[1], sys.argv[2]
d = json.load(open(path))
panels = [p for p in d["panels"] if p.get("type") != "row"]
exec(code)
json.dump(d, open(path, "w"), indent=2)
EOF
}
static_on() {  # static_on DIR CHECKS [extra args]
    local dir=$1 only=$2; shift 2
    "$PY" dashboards/check.py static --dashboards "$dir" --rules "$dir/alerts.yml" \
        --rules-test "$dir/alerts_test.yml" --only "$only" "$@"
}

# (a) a key the SDK does not know is dropped by the round trip
D=$(fresh roundtrip)
mutate "$D/gateway.json" 'panels[0]["options"]["notAnOption"] = True; panels[1]["targets"][0]["exprr"] = "x"'
expect_fail "round trip catches keys the SDK drops" 'notAnOption: key dropped' static_on "$D" roundtrip
D=$(fresh roundtrip-var)
mutate "$D/overview.json" 'd["templating"]["list"][1]["definition"] = "label_values(namespace)"'
expect_fail "round trip catches a dropped variable key" 'definition: key dropped' static_on "$D" roundtrip
D=$(fresh broken-json)
printf '{"uid": "x", "panels": [' > "$D/fanout.json"
expect_fail "a dashboard that is not JSON" 'invalid JSON' static_on "$D" json

# (b) duplicated panel id
D=$(fresh ids)
mutate "$D/persister.json" 'panels[3]["id"] = panels[1]["id"]'
expect_fail "duplicated panel id" 'panel id [0-9]+ used by' static_on "$D" ids

# (c) metric names against the Rust code, on a fake repository: first a positive control
# (every name present), then a name missing from the code, then a dashboard naming an
# unknown metric.
FAKE="$WORK/fake-repo"; mkdir -p "$FAKE/src" "$FAKE/target"
D=$(fresh metrics)
"$PY" dashboards/check.py list-metrics --dashboards "$D" --rules "$D/alerts.yml" \
    | sed 's/.*/    counter!("&");/' > "$FAKE/src/lib.rs"
expect_ok "self-test: metrics check passes when the code has every name" static_on "$D" metrics --repo "$FAKE"
grep -v 'roomcast_persister_duplicates_total' "$FAKE/src/lib.rs" > "$FAKE/src/lib.rs.new"
mv "$FAKE/src/lib.rs.new" "$FAKE/src/lib.rs"
echo 'const X: &str = "roomcast_persister_duplicates_total";' > "$FAKE/target/ignored.rs"
expect_fail "metric missing from the code (target/ ignored)" 'roomcast_persister_duplicates_total' \
    static_on "$D" metrics --repo "$FAKE"
"$PY" dashboards/check.py list-metrics --dashboards "$D" --rules "$D/alerts.yml" \
    | sed 's/.*/    counter!("&");/' > "$FAKE/src/lib.rs"
mutate "$D/overview.json" 'panels[1]["targets"][0]["expr"] = "sum(roomcast_gateway_made_up_total{namespace=\"$namespace\", pod=~\"$pod\"})"'
expect_fail "unknown metric in a dashboard" 'roomcast_gateway_made_up_total' static_on "$D" metrics --repo "$FAKE"
D=$(fresh metrics-alert)
sed -i 's/roomcast_fanout_redis_up) == 0/roomcast_fanout_redis_is_up) == 0/' "$D/alerts.yml"
expect_fail "unknown metric in an alert" 'roomcast_fanout_redis_is_up' static_on "$D" metrics --repo "$FAKE"

# (d) variables and $__rate_interval
D=$(fresh rate)
mutate "$D/fanout.json" 'panels[0]["targets"][0]["expr"] = panels[0]["targets"][0]["expr"].replace("$__rate_interval", "5m")'
expect_fail "rate() without \$__rate_interval" 'uses \[5m\] instead of' static_on "$D" rate
D=$(fresh vars)
mutate "$D/gateway.json" 'd["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "pod"]'
expect_fail "missing pod variable" "no template variable 'pod'" static_on "$D" variables
D=$(fresh ds)
mutate "$D/overview.json" 'panels[2]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}'
expect_fail "hard-coded datasource" 'not \$\{datasource\}' static_on "$D" variables
D=$(fresh filters)
mutate "$D/persister.json" 'panels[0]["targets"][0]["expr"] = "max by (pod) (roomcast_persister_queue_depth)"'
expect_fail "query without namespace/pod filters" 'lacks namespace' static_on "$D" filters
D=$(fresh generated)
mutate "$D/overview.json" 'panels[0]["title"] = "edited by hand"'
expect_fail "hand-edited JSON differs from the generator" 'differs from gen_dashboards.py' static_on "$D" generated

# alert rules: broken PromQL, a test that expects the wrong thing, a weakened threshold,
# a runbook pointing nowhere, an alert without tests
D=$(fresh bad-rule)
sed -i 's/max by (namespace, pod) (roomcast_fanout_redis_up) == 0/max by (namespace, pod) (roomcast_fanout_redis_up == 0/' "$D/alerts.yml"
expect_fail "promtool check rules: broken PromQL" 'unclosed|parse error|unexpected' promtool check rules "$D/alerts.yml"
D=$(fresh bad-test)
"$PY" - "$D/alerts_test.yml" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("pod: fanout-0\n            exp_annotations:\n              summary: \"Fanout cannot reach Redis\"",
              "pod: fanout-1\n            exp_annotations:\n              summary: \"Fanout cannot reach Redis\"", 1)
open(p, "w").write(s)
EOF
expect_fail "promtool test rules: wrong expectation" 'RoomcastRedisDown' promtool test rules "$D/alerts_test.yml"
D=$(fresh weak-threshold)
sed -i 's/) > 0.5$/) > 5/' "$D/alerts.yml"
expect_fail "promtool test rules: a changed threshold breaks the firing test" 'RoomcastDeliveryLatencyHigh' \
    promtool test rules "$D/alerts_test.yml"
D=$(fresh runbook)
sed -i 's|docs/OPERATIONS.md#roomcastredisdown|docs/OPERATIONS.md#redis-is-down|' "$D/alerts.yml"
expect_fail "runbook anchor missing from OPERATIONS.md" 'anchor #redis-is-down' static_on "$D" runbooks
D=$(fresh untested)
cat >> "$D/alerts.yml" <<'EOF'
      - alert: RoomcastUntested
        expr: roomcast_gateway_rooms > 1000000
        labels: {severity: warning}
        annotations: {summary: s, description: d, runbook: "docs/OPERATIONS.md#roomcastredisdown"}
EOF
expect_fail "alert without promtool test" 'RoomcastUntested: no test case where it fires' static_on "$D" tests

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
