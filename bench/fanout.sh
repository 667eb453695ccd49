#!/usr/bin/env bash
# Fan-out scenarios of BENCHMARKS.md, every system side by side in one run:
#
#   bash bench/fanout.sh rooms       # 1,000 clients in 10 rooms of 100 (default)
#   bash bench/fanout.sh big-rooms   # 2,000 clients in 2 rooms of 1,000
#
# For each system the total publish rate steps up until a step fails (p99 > 50 ms, any
# loss, duplicate, reordering or error); the figure is the highest deliveries/s of a
# passing step. Systems, in this order, each started before its steps and stopped after:
#
#   ceiling   the minimal tokio-tungstenite broadcast server (one process, no gRPC/Redis/
#             store): the known answer loadgen is checked against, run first
#   roomcast  persister + 2 x (fanout + gateway) on one redis-server and one secantusd-py
#   roomcast-nobudget  (only when named) the same with the user and room send budgets off
#   roomcast-cluster  (only when named) the same on a 3-primary Redis Cluster (sharded
#             pub/sub), with each shard's CPU
#   roomcast1 the one-process `roomcast` binary (in-memory broker, on-disk redb store)
#   roomcast1-wt  (only when named) the same, with loadgen --mode webtransport (QUIC)
#   peer      2 x the Node peer (bench/peer: socket.io 4 + redis adapter) on one redis-server
#   roomcast-nop99  (only when named in FANOUT_SYSTEMS) the distributed stack from the rate
#             where `roomcast` failed, with p99 not limited, until loss or errors
# Steps stop starting once FANOUT_BUDGET_SECONDS have passed (the rows say BUDGET).
#
#   FANOUT_SYSTEMS="peer ceiling" bash bench/fanout.sh rooms
#   FANOUT_RATES="100 200" FANOUT_STEP_SECONDS=5 bash bench/fanout.sh big-rooms
#
# Raw loadgen JSON, logs and /metrics land in bench/results/<scenario>-<UTC stamp>/ (and
# bench/results/<scenario>-latest), with steps.tsv and summary.json. Everything it starts
# listens on 127.0.0.1 and is stopped when it ends, also on failure or Ctrl-C.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

SCENARIO=${1:-rooms}
case $SCENARIO in
  rooms)
    CONNECTIONS=1000 ROOMS=10
    DEFAULT_RATES="200 400 600 800 1000 1200 1600 2000 2500 3000 4000 5000 6000"
    ;;
  big-rooms)
    CONNECTIONS=2000 ROOMS=2
    DEFAULT_RATES="20 40 60 80 100 150 200 250 300 400 500"
    ;;
  *) echo "usage: bash bench/fanout.sh [rooms|big-rooms]" >&2; exit 2 ;;
esac
RATES=${FANOUT_RATES:-$DEFAULT_RATES}
NOP99_RATES=${FANOUT_NOP99_RATES:-$RATES}
SYSTEMS=${FANOUT_SYSTEMS:-"ceiling roomcast roomcast1 peer"}
STEP_SECONDS=${FANOUT_STEP_SECONDS:-8}
BUDGET=${FANOUT_BUDGET_SECONDS:-1500}   # no new step starts once this many seconds have passed
MAX_P99=50
RAMP=2
DRAIN=3

bench_init "$SCENARIO"
LOADGEN=$(need_bin loadgen)
ulimit -n "$(ulimit -Hn)"
machine_line | tee "$RUN_DIR/machine.txt" >&2

STEP_MAX_P99=$MAX_P99  # the p99 limit of the current steps (the loss-free sweep lifts it)
STEP_METRICS=""   # "name:admin-port ...": /metrics saved after every step of the current system
STEPS=$RUN_DIR/steps.tsv
printf 'system\trate\tpass\tdeliveries_per_s\tsent\texpected\treceived\tlost\tdup_reord\terrors\tp50_ms\tp99_ms\tmax_ms\tcpu\n' >"$STEPS"

# cpu_snapshot GROUPSPEC -> "name=ticks ..." where GROUPSPEC is "name:pid,pid name:pid".
cpu_snapshot() {
  local spec out="" name pids pid sum
  for spec in $1; do
    name=${spec%%:*} pids=${spec#*:} sum=0
    for pid in ${pids//,/ }; do sum=$((sum + $(cpu_ticks "$pid" 2>/dev/null || echo 0))); done
    out+="$name=$sum "
  done
  printf '%s' "$out"
}

# cpu_percent BEFORE AFTER SECONDS -> "name:NN% ..." (100% = one core).
cpu_percent() {
  python3 - "$1" "$2" "$3" "$CLK_TCK" <<'EOF'
import sys
before = dict(kv.split("=") for kv in sys.argv[1].split())
after = dict(kv.split("=") for kv in sys.argv[2].split())
dt, hz = float(sys.argv[3]), float(sys.argv[4])
print(" ".join(f"{k}:{(int(after[k]) - int(before[k])) / hz / dt * 100:.0f}%" for k in after if k in before))
EOF
}

# run_step SYSTEM MODE TARGETS RATE "PORT..." GROUPSPEC -> 0 when the step passed.
run_step() {
  local system=$1 mode=$2 targets=$3 rate=$4 ports=$5 groups=$6
  local json=$RUN_DIR/$system-r$rate.json out=$RUN_DIR/logs/loadgen-$system-r$rate.log
  rm -f "$json"
  "$LOADGEN" --target "$targets" --mode "$mode" --connections "$CONNECTIONS" --rooms "$ROOMS" \
    --rate "$rate" --duration "$STEP_SECONDS" --ramp-up "$RAMP" --drain "$DRAIN" \
    --silence 5 --max-wait 30 --max-p99 "$STEP_MAX_P99" --quiet --json "$json" >"$out" 2>&1 &
  local lg=$! limit=$((SECONDS + RAMP + STEP_SECONDS + DRAIN + 60))
  # CPU per process over the middle of the publishing window: from 2 s after every
  # client is connected, for STEP_SECONDS - 4 s.
  local until_connected=$((SECONDS + RAMP + 25)) before="" after="" window=$((STEP_SECONDS - 4)) cpu="-"
  # shellcheck disable=SC2086
  while is_alive "$lg" && (($(connections "$mode" "${STEP_WT_METRICS:-0}" $ports) < CONNECTIONS)) && ((SECONDS < until_connected)); do sleep 0.2; done
  if is_alive "$lg" && ((window > 0)); then
    sleep 2
    before=$(cpu_snapshot "$groups lg:$lg")
    local t0=$EPOCHREALTIME
    sleep "$window"
    if is_alive "$lg"; then
      after=$(cpu_snapshot "$groups lg:$lg")
      cpu=$(cpu_percent "$before" "$after" "$(python3 -c "print($EPOCHREALTIME - $t0)")")
    fi
  fi
  while is_alive "$lg"; do
    if ((SECONDS > limit)); then
      log "loadgen did not stop by itself; stopping it"
      kill -TERM "$lg" 2>/dev/null || true
      sleep 2
      kill -KILL "$lg" 2>/dev/null || true
    fi
    sleep 0.2
  done
  local rc=0
  wait "$lg" || rc=$?
  if [[ ! -s $json ]]; then
    log "$system rate $rate: loadgen exited $rc without a report: $(tail -3 "$out" | tr '\n' ' ')"
    printf '%s\t%s\tFAIL\t0\t0\t0\t0\t0\t0\tno report (exit %s)\t-\t-\t-\t%s\n' "$system" "$rate" "$rc" "$cpu" >>"$STEPS"
    return 1
  fi
  # loadgen's exit code covers loss, duplicates, reordering, errors and p99. On /ws it
  # counts deliveries only of acked messages, so a send never acked by the end of the
  # drain fails the step here too.
  local verdict
  verdict=$(python3 - "$json" "$system" "$rate" "$rc" "$cpu" "$STEPS" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
system, rate, rc, cpu, steps = sys.argv[2:7]
lat = j["latency"]
errors = j["connect_errors"] + j["send_errors"]
unacked = j["sent"] - j["acked"] if j["mode"] in ("Ws", "Webtransport") else 0
verdict = "PASS" if rc == "0" and unacked == 0 else "FAIL"
err = f"{errors} (+{unacked} unacked)" if unacked else str(errors)
with open(steps, "a") as fh:
    fh.write("\t".join(str(x) for x in [system, rate, verdict, round(j["deliveries_per_s"]), j["sent"], j["expected_deliveries"],
             j["unique_deliveries"], j["lost"], j["duplicates"] + j["reordered"], err, lat["p50_ms"], lat["p99_ms"], lat["max_ms"], cpu]) + "\n")
print(verdict)
EOF
  )
  local m
  for m in $STEP_METRICS; do save_metrics "${m%%:*}-$system-r$rate" "${m#*:}"; done
  local line
  line=$(tail -1 "$STEPS")
  log "$(awk -F'\t' '{printf "%-9s rate %5s/s  %s  %8s deliveries/s  p50 %6s ms  p99 %7s ms  lost %s  dup/reord %s  errors %s  cpu %s", $1, $2, $3, $4, $11, $12, $8, $9, $10, $14}' <<<"$line")"
  if [[ $verdict != PASS ]]; then
    grep -h 'FAIL' "$out" | head -3 | cut -c1-300 | sed 's/^/    /' >&2 || true
    return 1
  fi
  return 0
}

# step_system SYSTEM MODE FROM_RATE RATES: the rates in order (from FROM_RATE on), until the
# first failure, whose rate is left in FAILED_RATE, against the system the caller started
# (STEP_TARGETS, STEP_PORTS, STEP_GROUPS).
step_system() {
  local system=$1 mode=$2 from=$3 rates=$4 rate ok
  local est=$((RAMP + STEP_SECONDS + DRAIN + 6))
  FAILED_RATE=""
  for rate in $rates; do
    if python3 -c "import sys; sys.exit(0 if float('$rate') < float('$from') else 1)"; then continue; fi
    if ((SECONDS + est > BUDGET)); then
      log "$system: time budget (${BUDGET}s) reached before rate $rate; stepping stopped"
      printf '%s\t%s\tBUDGET\t0\t0\t0\t0\t0\t0\tnot run: time budget\t-\t-\t-\t-\n' "$system" "$rate" >>"$STEPS"
      return 0
    fi
    ok=1
    run_step "$system" "$mode" "$STEP_TARGETS" "$rate" "$STEP_PORTS" "$STEP_GROUPS" || ok=0
    if ((!ok)); then
      FAILED_RATE=$rate
      return 0
    fi
  done
}

# The distributed stack is started once per system, like the others, and its steps run
# one after another on it. Each step's clients join rooms that hold the earlier steps'
# messages: a room's first join on a gateway reads the store once, the rest come from
# the room's tail in memory.
start_roomcast() {
  STACK_TAG="$1-"
  start_stack 2
  STEP_TARGETS=$GATEWAY_URLS
  STEP_PORTS="${GATEWAY_PORTS[*]}"
  STEP_GROUPS="gw:$(IFS=,; echo "${GATEWAY_PIDS[*]}") fo:$(IFS=,; echo "${FANOUT_PIDS[*]}") pers:$PERSISTER_PID redis:$REDIS_PID mongo:$MONGO_PID"
  STEP_METRICS="gateway-0:${GATEWAY_METRICS_PORTS[0]} gateway-1:${GATEWAY_METRICS_PORTS[1]} fanout-0:${FANOUT_METRICS_PORTS[0]} persister:$PERSISTER_METRICS"
}

HEADLINE_ROOMCAST_FAILED=""
for system in $SYSTEMS; do
  case $system in
    roomcast)
      start_roomcast roomcast
      log "== roomcast: 2 gateways + 2 fanouts + persister, loadgen --mode ws -> both gateways"
      step_system roomcast ws 0 "$RATES"
      HEADLINE_ROOMCAST_FAILED=$FAILED_RATE
      STEP_METRICS=""
      stop_stack
      ;;
    roomcast-nobudget)
      # The same stack with the user and room send budgets off: what a send's budget check
      # (one more fanout call, one Redis script per budget) costs, side by side.
      GATEWAY_ARGS="--user-sends-per-second 0 --room-sends-per-second 0" start_roomcast nobudget
      log "== roomcast-nobudget: as roomcast, without the user and room send budgets"
      step_system roomcast-nobudget ws 0 "$RATES"
      STEP_METRICS=""
      stop_stack
      ;;
    roomcast-cluster)
      STACK_TAG="cluster-"
      start_redis_cluster cluster-redis
      start_roomcast cluster
      STEP_GROUPS="${STEP_GROUPS/ redis:$REDIS_PID/} shard0:${REDIS_SHARD_PIDS[0]} shard1:${REDIS_SHARD_PIDS[1]} shard2:${REDIS_SHARD_PIDS[2]}"
      log "== roomcast-cluster: 2 gateways + 2 fanouts + persister on a 3-primary Redis Cluster, loadgen --mode ws"
      step_system roomcast-cluster ws 0 "$RATES"
      STEP_METRICS=""
      stop_stack
      ;;
    roomcast-nop99)
      # A second figure, not the headline: how far the distributed stack goes without loss
      # or errors when p99 is not limited, from the rate where the headline stopped. It
      # shows the store's throughput cap apart from its latency.
      log "== roomcast-nop99: the loss-free sweep (p99 not limited) from ${HEADLINE_ROOMCAST_FAILED:-the first rate}"
      STEP_MAX_P99=600000
      start_roomcast nop99
      step_system roomcast-nop99 ws "${HEADLINE_ROOMCAST_FAILED:-0}" "$NOP99_RATES"
      STEP_METRICS=""
      stop_stack
      STEP_MAX_P99=$MAX_P99
      ;;
    peer)
      start_peers 2
      STEP_TARGETS=$PEER_URLS STEP_PORTS="${PEER_PORTS[*]}" STEP_GROUPS="node:$(IFS=,; echo "${PEER_PIDS[*]}") redis:$REDIS_PID"
      log "== peer: 2 x node socket.io + redis adapter, loadgen --mode socketio -> $PEER_URLS"
      step_system peer socketio 0 "$RATES"
      stop_peers
      ;;
    ceiling)
      start_ceiling
      STEP_TARGETS="http://127.0.0.1:$CEILING_PORT" STEP_PORTS=$CEILING_PORT STEP_GROUPS="ceiling:$CEILING_PID"
      log "== ceiling: one tokio-tungstenite broadcast process, loadgen --mode ws -> :$CEILING_PORT"
      step_system ceiling ws 0 "$RATES"
      bg_stop "$CEILING_PID"
      ;;
    roomcast1 | roomcast1-wt)
      mode=ws
      [[ $system == roomcast1-wt ]] && mode=webtransport
      free_port RC_PORT RC_METRICS
      rm -rf "$BENCH_TMP/roomcast-data"
      mkdir -p "$BENCH_TMP/roomcast-data"
      bg_start "$system" env RUST_LOG=warn $BENCH_RUST_ENV "$(need_bin roomcast)" --listen "127.0.0.1:$RC_PORT" --api-listen off \
        --metrics-listen "127.0.0.1:$RC_METRICS" --data-dir "$BENCH_TMP/roomcast-data" --drain-seconds 1
      RC_PID=$LAST_PID
      wait_ready "$RC_PID" "$system" "$RC_PORT" 60
      STEP_TARGETS="http://127.0.0.1:$RC_PORT" STEP_PORTS=$RC_PORT STEP_GROUPS="roomcast:$RC_PID" STEP_WT_METRICS=$RC_METRICS
      log "== $system: the one-process roomcast binary (memory broker, redb store), loadgen --mode $mode"
      STEP_METRICS="roomcast1:$RC_METRICS"
      save_metrics "roomcast1-$system-r0" "$RC_METRICS"
      step_system "$system" "$mode" 0 "$RATES"
      STEP_METRICS=""
      bg_stop "$RC_PID"
      ;;
    *) die "unknown system $system (roomcast, roomcast-nobudget, roomcast-cluster, peer, ceiling, roomcast1, roomcast1-wt, roomcast-nop99)" ;;
  esac
done

python3 "$BENCH_DIR/summarize.py" fanout "$RUN_DIR" "$SCENARIO" | tee "$RUN_DIR/summary.txt"
if compgen -G "$RUN_DIR/metrics/*-r*.prom" >/dev/null; then
  for f in "$RUN_DIR"/metrics/*-roomcast*-r*.prom "$RUN_DIR"/metrics/roomcast1-roomcast1-r*.prom; do
    [[ -e $f ]] || continue
    echo "#### ${f##*/}"
    python3 "$BENCH_DIR/summarize.py" metrics "$f" | tail -n +3
    echo
  done >"$RUN_DIR/metrics/histograms.md" 2>/dev/null || true
  log "latency histograms of roomcast's /metrics after each step: ${RUN_DIR#"$ROOT"/}/metrics/histograms.md"
fi
log "done in ${SECONDS}s"
