#!/usr/bin/env bash
# What one Redis shard costs per delivery, the figure docs/SCALING.md scales from:
#
#   bash bench/redis-shard.sh
#
# One redis-server at a time (plain, then a one-node cluster that owns every slot),
# K subscriber connections (a room's fanouts: K = gateways with members in the room),
# each subscribed to ROOMS room channels as the fanout does (SUBSCRIBE / SSUBSCRIBE on
# roomcast:room:{rN}), and redis-benchmark publishing a 200-byte payload to random rooms
# (PUBLISH / SPUBLISH, as the fanout does) as fast as Redis takes it. For each (mode, K):
# publishes/s, deliveries/s, and Redis's own CPU per 1,000 deliveries, from /proc.
# The instrument is checked: every subscriber's output is counted, and a row whose
# deliveries are not publishes x K is marked FAIL.
#
# Then the other commands every message costs a shard, one Redis each: the seq script
# (NEXT_SEQ, on 10,000 rooms' counters) and the directory's ZADD GT (one sorted set of
# 100,000 rooms, one slot: every message of every room touches it).
#
# The publisher and the subscribers share this machine's cores with Redis, so Redis is
# not always the bottleneck: the cost per delivery is the figure to scale from, and the
# capacity per core (1 s / that cost) is an extrapolation, labelled so.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

PUBLISHES=${SHARD_PUBLISHES:-300000}
ROOMS=${SHARD_ROOMS:-10}
SUBSCRIBERS=${SHARD_SUBSCRIBERS:-"1 2 4"}
PAYLOAD=$(head -c 200 /dev/zero | tr '\0' 'x')

# Only Redis's own tools run here: no roomcast binary to build.
ROOMCAST_BIN_DIR=${ROOMCAST_BIN_DIR:-$BIN_DIR}
bench_init redis-shard
command -v redis-benchmark >/dev/null || die "redis-benchmark is missing (Debian redis-tools)"
machine_line | tee "$RUN_DIR/machine.txt" >&2
ROWS=$RUN_DIR/rows.tsv
printf 'mode\tsubscribers\tpublishes\tseconds\tpublishes_per_s\tdeliveries\tdeliveries_per_s\tredis_cpu_pct\tredis_cpu_ms_per_1000_deliveries\tcheck\n' >"$ROWS"

measure() {
  local mode=$1 k=$2 port bus pid pub sub chans=() i
  free_port port bus
  mkdir -p "$BENCH_TMP/$mode-$k"
  local extra=()
  [[ $mode == cluster ]] && extra=(--cluster-enabled yes --cluster-port "$bus")
  bg_start "redis-$mode-$k" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$BENCH_TMP/$mode-$k" "${extra[@]}"
  pid=$LAST_PID
  wait_port "$pid" "redis-$mode-$k" "$port"
  if [[ $mode == cluster ]]; then
    redis-cli -p "$port" cluster addslotsrange 0 16383 >/dev/null
    until redis-cli -p "$port" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
    pub=SPUBLISH sub=SSUBSCRIBE
  else
    pub=PUBLISH sub=SUBSCRIBE
  fi
  for ((i = 0; i < ROOMS; i++)); do chans+=("roomcast:room:{r$(printf '%012d' "$i")}"); done
  # One connection per (subscriber, room): a cluster's SSUBSCRIBE takes channels of one
  # slot only. The fanout holds one connection per shard for all its rooms.
  local subs=() logs=() c
  for ((i = 0; i < k; i++)); do
    for c in "${chans[@]}"; do
      bg_start "sub-$mode-$k-$i-${#subs[@]}" redis-cli -p "$port" "$sub" "$c"
      subs+=("$LAST_PID")
      logs+=("$RUN_DIR/logs/sub-$mode-$k-$i-$((${#subs[@]} - 1)).log")
    done
  done
  sleep 1
  local before t0 after t1
  before=$(cpu_ticks "$pid")
  t0=$EPOCHREALTIME
  redis-benchmark -p "$port" -n "$PUBLISHES" -c 20 -P 16 -r "$ROOMS" -q \
    "$pub" 'roomcast:room:{r__rand_int__}' "$PAYLOAD" >"$RUN_DIR/logs/benchmark-$mode-$k.log" 2>&1
  t1=$EPOCHREALTIME
  after=$(cpu_ticks "$pid")
  sleep 1
  bg_stop "${subs[@]}" "$pid"
  local delivered=0 n f
  for f in "${logs[@]}"; do
    # redis-cli prints a delivery as three lines: smessage/message, channel, payload.
    n=$(grep -c "^$PAYLOAD\$" "$f" || true)
    delivered=$((delivered + n))
    rm -f "$f"
  done
  python3 - "$mode" "$k" "$PUBLISHES" "$t0" "$t1" "$before" "$after" "$CLK_TCK" "$delivered" "$ROWS" <<'EOF'
import sys
mode, k, n, t0, t1, before, after, hz, delivered, rows = sys.argv[1:11]
k, n, delivered = int(k), int(n), int(delivered)
secs = float(t1) - float(t0)
cpu = (int(after) - int(before)) / float(hz)
check = "PASS" if delivered == n * k else f"FAIL ({delivered} of {n * k} delivered)"
row = [mode, k, n, f"{secs:.2f}", round(n / secs), delivered, round(delivered / secs), f"{cpu / secs * 100:.0f}",
       f"{cpu * 1000 / max(delivered, 1) * 1000:.3f}", check]
open(rows, "a").write("\t".join(map(str, row)) + "\n")
print("\t".join(map(str, row)))
EOF
}

COMMANDS=$RUN_DIR/commands.tsv
printf 'command\tcalls\tseconds\tcalls_per_s\tredis_cpu_pct\tredis_cpu_us_per_call\n' >"$COMMANDS"
NEXT_SEQ="if redis.call('EXISTS', KEYS[1]) == 0 then return false end return redis.call('INCR', KEYS[1])"

# measure_command NAME KEYSPACE PREPARE-COMMAND -- COMMAND...: Redis CPU per call of COMMAND.
measure_command() {
  local name=$1 keyspace=$2 port pid
  shift 2
  local prepare=()
  while [[ $1 != -- ]]; do prepare+=("$1"); shift; done
  shift
  free_port port
  mkdir -p "$BENCH_TMP/cmd-$name"
  bg_start "redis-cmd-$name" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$BENCH_TMP/cmd-$name"
  pid=$LAST_PID
  wait_port "$pid" "redis-cmd-$name" "$port"
  redis-benchmark -p "$port" -n $((keyspace * 4)) -c 20 -P 16 -r "$keyspace" -q "${prepare[@]}" >/dev/null 2>&1
  local before t0 after t1
  before=$(cpu_ticks "$pid")
  t0=$EPOCHREALTIME
  redis-benchmark -p "$port" -n "$PUBLISHES" -c 20 -P 16 -r "$keyspace" -q "$@" >"$RUN_DIR/logs/command-$name.log" 2>&1
  t1=$EPOCHREALTIME
  after=$(cpu_ticks "$pid")
  bg_stop "$pid"
  python3 - "$name" "$PUBLISHES" "$t0" "$t1" "$before" "$after" "$CLK_TCK" "$COMMANDS" <<'EOF'
import sys
name, n, t0, t1, before, after, hz, out = sys.argv[1:9]
n, secs = int(n), float(t1) - float(t0)
cpu = (int(after) - int(before)) / float(hz)
row = [name, n, f"{secs:.2f}", round(n / secs), f"{cpu / secs * 100:.0f}", f"{cpu * 1e6 / n:.2f}"]
open(out, "a").write("\t".join(map(str, row)) + "\n")
print("\t".join(map(str, row)))
EOF
}

for mode in single cluster; do
  for k in $SUBSCRIBERS; do
    log "$mode, $k subscriber(s) per room: $PUBLISHES publishes to $ROOMS rooms"
    measure "$mode" "$k" >&2
  done
done
log "the seq script on 10,000 rooms' counters"
measure_command next-seq 10000 INCR 'roomcast:seq:{r__rand_int__}' -- \
  EVAL "$NEXT_SEQ" 1 'roomcast:seq:{r__rand_int__}' >&2
log "the directory's ZADD GT on 100,000 rooms"
measure_command directory-zadd 100000 ZADD 'roomcast:{directory}:active' __rand_int__ 'r__rand_int__' -- \
  ZADD 'roomcast:{directory}:active' GT __rand_int__ 'r__rand_int__' >&2
{ column -t -s $'\t' "$ROWS"; echo; column -t -s $'\t' "$COMMANDS"; } | tee "$RUN_DIR/summary.txt"
log "done in ${SECONDS}s; ${RUN_DIR#"$ROOT"/}/rows.tsv"
