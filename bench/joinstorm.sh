#!/usr/bin/env bash
# The join storm of BENCHMARKS.md: 1,000 clients join 10 rooms that already hold history,
# all at once (a reconnect storm after a gateway drain), side by side in one run:
#
#   roomcast  persister + 2 x (fanout + gateway) on redis-server and secantusd-py
#   roomcast1 the one-process `roomcast` binary
#   peer      2 x the Node peer (it stores nothing, so its rooms have no history)
#   ceiling   the minimal broadcast server (no history either)
#
# For roomcast and roomcast1 the rooms are first filled (JOINSTORM_HISTORY messages per
# room, sent through the system itself), then the gateways (or the process) are restarted
# so that no room is live in memory, as after a drain. Then 1,000 clients connect and join
# at once (loadgen --idle --ramp-up 0). Reported: the seconds until the last client has
# joined (loadgen's slowest connect + join), and the store reads per join, from the
# gateways' own metrics (roomcast_gateway_store_reads_total / roomcast_gateway_joins_total).
#
#   bash bench/joinstorm.sh
#   JOINSTORM_HISTORY=3200 JOINSTORM_SYSTEMS="roomcast roomcast1" bash bench/joinstorm.sh
#
# Results in bench/results/joinstorm-<UTC stamp>/ (and joinstorm-latest): results.tsv,
# each loadgen JSON and the /metrics before and after.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

HISTORY=${JOINSTORM_HISTORY:-1600}
SYSTEMS=${JOINSTORM_SYSTEMS:-"roomcast roomcast1 peer ceiling"}
CONNECTIONS=1000
ROOMS=10
FILL_RATE=500

bench_init joinstorm
LOADGEN=$(need_bin loadgen)
machine_line | tee "$RUN_DIR/machine.txt" >&2
RESULTS=$RUN_DIR/results.tsv
printf 'system\thistory_per_room\tjoined\tfailed\tall_joined_s\tjoin_p50_ms\tjoin_p99_ms\tstore_reads\tjoins\treads_per_join\n' >"$RESULTS"

# metric_sum NAME PORT...: the sum of every series of NAME over the admin ports.
metric_sum() {
  local name=$1 port total=0 v
  shift
  for port in "$@"; do
    v=$(curl -fsS -m 5 "http://127.0.0.1:$port/metrics" | python3 -c '
import re, sys
name = sys.argv[1]
print(sum(float(m.group(2)) for m in (re.match(r"^(\w+)(?:\{[^}]*\})?\s+(\S+)", l) for l in sys.stdin) if m and m.group(1) == name))
' "$name") || die "cannot read /metrics on $port"
    total=$(python3 -c "print($total + $v)")
  done
  printf '%s\n' "$total"
}

# fill TARGETS: HISTORY messages into each of the ROOMS rooms, through the system.
fill() {
  local seconds
  seconds=$(python3 -c "print(round($HISTORY * $ROOMS / $FILL_RATE, 1))")
  log "filling $ROOMS rooms with $HISTORY messages each ($FILL_RATE msgs/s for ${seconds}s)"
  "$LOADGEN" --target "$1" --connections 100 --rooms "$ROOMS" --rate "$FILL_RATE" --duration "$seconds" \
    --ramp-up 1 --silence 5 --max-wait 30 --quiet --json "$RUN_DIR/fill-$2.json" >"$RUN_DIR/logs/fill-$2.log" 2>&1 \
    || die "filling the rooms of $2 failed: $(tail -3 "$RUN_DIR/logs/fill-$2.log" | tr '\n' ' ')"
}

# storm SYSTEM MODE TARGETS HISTORY [ADMIN_PORT...]: 1,000 joins at once; one results row.
storm() {
  local system=$1 mode=$2 targets=$3 history=$4
  shift 4
  local reads0=0 joins0=0 reads1=0 joins1=0
  if (($#)); then
    reads0=$(metric_sum roomcast_gateway_store_reads_total "$@")
    joins0=$(metric_sum roomcast_gateway_joins_total "$@")
  fi
  local json=$RUN_DIR/storm-$system.json
  "$LOADGEN" --target "$targets" --mode "$mode" --connections "$CONNECTIONS" --rooms "$ROOMS" --idle --duration 1 --ramp-up 0 \
    --quiet --json "$json" >"$RUN_DIR/logs/storm-$system.log" 2>&1 || true
  [[ -s $json ]] || die "$system: loadgen wrote no report: $(tail -3 "$RUN_DIR/logs/storm-$system.log" | tr '\n' ' ')"
  if (($#)); then
    local i=0 port
    for port in "$@"; do save_metrics "$system-after-$i" "$port"; i=$((i + 1)); done
    reads1=$(metric_sum roomcast_gateway_store_reads_total "$@")
    joins1=$(metric_sum roomcast_gateway_joins_total "$@")
  fi
  python3 - "$json" "$system" "$history" "$reads0" "$reads1" "$joins0" "$joins1" "$RESULTS" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
system, history = sys.argv[2], sys.argv[3]
reads0, reads1, joins0, joins1 = (float(x) for x in sys.argv[4:8])
reads, joins = reads1 - reads0, joins1 - joins0
per_join = f"{reads / joins:.3f}" if joins > 0 else "-"
ct = j["connect_time"]
row = [system, history, j["connected"], j["connect_errors"], round(ct["max_ms"] / 1000, 2), ct["p50_ms"], ct["p99_ms"],
       int(reads) if joins > 0 else "-", int(joins) if joins > 0 else "-", per_join]
open(sys.argv[8], "a").write("\t".join(str(x) for x in row) + "\n")
print(f"{system}: {j['connected']} joined, {j['connect_errors']} failed; all joined after {ct['max_ms'] / 1000:.2f} s "
      f"(p50 {ct['p50_ms']} ms, p99 {ct['p99_ms']} ms); store reads per join {per_join} ({reads:.0f} reads, {joins:.0f} joins)")
EOF
}

for system in $SYSTEMS; do
  case $system in
    roomcast)
      log "== roomcast: 2 gateways + 2 fanouts + persister"
      start_stack 2
      fill "$GATEWAY_URLS" roomcast
      log "restarting the gateways and fanouts: no room is live in memory any more"
      bg_stop "${GATEWAY_PIDS[@]}" "${FANOUT_PIDS[@]}"
      STACK_TAG=restarted- start_stack 2
      storm roomcast ws "$GATEWAY_URLS" "$HISTORY" "${GATEWAY_METRICS_PORTS[@]}"
      stop_stack
      ;;
    roomcast1)
      log "== roomcast1: the one-process roomcast binary"
      free_port RC_PORT RC_METRICS
      mkdir -p "$BENCH_TMP/roomcast-data"
      start_roomcast1() {
        bg_start "roomcast1$1" env RUST_LOG=warn $BENCH_RUST_ENV "$(need_bin roomcast)" --listen "127.0.0.1:$RC_PORT" --api-listen off \
          --metrics-listen "127.0.0.1:$RC_METRICS" --data-dir "$BENCH_TMP/roomcast-data" --drain-seconds 1
        RC_PID=$LAST_PID
        wait_ready "$RC_PID" "roomcast1$1" "$RC_PORT" 60
      }
      start_roomcast1 ""
      fill "http://127.0.0.1:$RC_PORT" roomcast1
      log "restarting roomcast: no room is live in memory any more"
      bg_stop "$RC_PID"
      start_roomcast1 -restarted
      storm roomcast1 ws "http://127.0.0.1:$RC_PORT" "$HISTORY" "$RC_METRICS"
      bg_stop "$RC_PID"
      ;;
    peer)
      start_peers 2
      storm peer socketio "$PEER_URLS" 0
      stop_peers
      ;;
    ceiling)
      start_ceiling
      storm ceiling ws "http://127.0.0.1:$CEILING_PORT" 0
      bg_stop "$CEILING_PID"
      ;;
    *) die "unknown system $system (roomcast, roomcast1, peer, ceiling)" ;;
  esac
done

column -t -s $'\t' "$RESULTS" >&2
log "done in ${SECONDS}s; results in ${RUN_DIR#"$ROOT"/}/results.tsv"
