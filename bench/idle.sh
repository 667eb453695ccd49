#!/usr/bin/env bash
# Scenario 2 of BENCHMARKS.md: idle connections. N connections (default 20,000), each
# joined to one of 10 rooms and then silent (loadgen --idle), held by ONE server process:
#
#   roomcast  one gateway (distributed stack: persister + 1 x (fanout + gateway), Redis, secantusd)
#   peer      one Node peer (bench/peer) on Redis
#   ceiling   the minimal tokio-tungstenite server (bench/src/bin/ceiling.rs), as a reference
#   roomcast1, roomcast1-wt  (only when named) the one-process `roomcast`, held by /ws
#             clients, then by WebTransport ones (loadgen --mode webtransport)
#
# The figure is (VmRSS while holding - VmRSS before) / connections held, in KiB, of the
# server process (/proc/PID/status). The load comes from two loadgen processes, so that
# neither needs more file descriptors than the server.
#
#   bash bench/idle.sh                       # under 5 minutes
#   IDLE_CONNECTIONS=5000 IDLE_SYSTEMS=peer bash bench/idle.sh
#
# A process can hold at most `ulimit -Hn` descriptors. The script raises the soft limit to
# the hard one; when N connections plus a reserve for the server's own descriptors do not
# fit under it, it holds as many as do, and says so.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

WANTED=${IDLE_CONNECTIONS:-20000}
SYSTEMS=${IDLE_SYSTEMS:-"roomcast peer ceiling"}
RAMP=${IDLE_RAMP_SECONDS:-40}            # peer and ceiling
RAMP_ROOMCAST=${IDLE_RAMP_ROOMCAST:-90}  # every roomcast join reads the store twice (history,
                                         # max_seq); secantusd-py serves ~300 joins/s, and a
                                         # faster ramp makes joins time out (15 s in loadgen)
HOLD=${IDLE_HOLD_SECONDS:-25}
ROOMS=10
RESERVE=500   # descriptors left to the server for its listeners, upstreams, epoll, logs

bench_init idle
LOADGEN=$(need_bin loadgen)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
N=$WANTED
if ((N + RESERVE > NOFILE)); then
  N=$(((NOFILE - RESERVE) / 100 * 100))
  log "$WANTED connections do not fit: the open-files limit is $NOFILE (hard limit $(ulimit -Hn), which this user cannot raise);" \
    "holding $N so that the server keeps $RESERVE descriptors for itself"
fi
machine_line | tee "$RUN_DIR/machine.txt" >&2
RESULTS=$RUN_DIR/idle.tsv
printf 'system\twanted\tnofile\theld\trss_before_kib\trss_during_kib\trss_after_kib\tkib_per_conn\tconnect_errors\tconnect_p99_ms\n' >"$RESULTS"

# hold SYSTEM PID PORT URL MODE RAMP [METRICS_PORT]: the measurement against one server
# process (METRICS_PORT: its admin port, which counts WebTransport sessions).
hold() {
  local system=$1 pid=$2 port=$3 url=$4 mode=$5 ramp=$6 metrics=${7:-0}
  local half=$((N / 2)) i lgs=() before during=0 after held=0 samples=""
  sleep 2
  before=$(rss_kib "$pid")
  log "$system: pid $pid VmRSS before: $before KiB; opening $N connections over ${ramp}s"
  for i in 0 1; do
    local count=$half
    if ((i == 1)); then count=$((N - half)); fi
    "$LOADGEN" --target "$url" --mode "$mode" --connections "$count" --rooms "$ROOMS" --idle \
      --duration "$HOLD" --ramp-up "$ramp" --drain 1 --quiet --max-connections "$N" \
      --json "$RUN_DIR/$system-loadgen-$i.json" >"$RUN_DIR/logs/loadgen-$system-$i.log" 2>&1 &
    lgs+=($!)
  done
  # Until all are established, or the count has not grown for 5 s after the ramp, then a
  # few samples. loadgen holds for HOLD s from when all its clients are connected (at most
  # ramp + 20 s), so the samples fall inside the hold.
  local deadline=$((SECONDS + ramp + 12)) ramp_end=$((SECONDS + ramp)) last=-1 still=0 now
  while ((SECONDS < deadline)) && is_alive "${lgs[0]}"; do
    now=$(connections "$mode" "$metrics" "$port")
    ((now >= N)) && break
    if ((now == last && SECONDS > ramp_end)); then still=$((still + 1)); else still=0; fi
    ((still >= 10)) && break
    last=$now
    sleep 0.5
  done
  sleep 2
  for _ in 1 2 3; do
    local rss conns
    rss=$(rss_kib "$pid")
    conns=$(connections "$mode" "$metrics" "$port")
    samples+="$conns:$rss "
    if ((rss > during)); then during=$rss; fi
    if ((conns > held)); then held=$conns; fi
    sleep 2
  done
  log "$system: held $held connections; samples (connections:VmRSS KiB) $samples"
  # Where the memory is: the process's status and its largest mappings by RSS.
  {
    grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|Threads)' "/proc/$pid/status"
    echo "largest mappings by Rss (KiB):"
    awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6); range = $1} /^Rss:/ {print $2, range, name}' "/proc/$pid/smaps" | sort -rn | head -8
  } >"$RUN_DIR/$system-memory.txt" 2>/dev/null || true
  local lg rc=0
  for lg in "${lgs[@]}"; do
    local limit=$((SECONDS + ramp + HOLD + 60))
    while is_alive "$lg" && ((SECONDS < limit)); do sleep 0.5; done
    if is_alive "$lg"; then kill -TERM "$lg" 2>/dev/null || true; fi
    wait "$lg" || rc=$?
  done
  sleep 2
  after=$(rss_kib "$pid")
  python3 - "$RESULTS" "$system" "$WANTED" "$NOFILE" "$held" "$before" "$during" "$after" "$RUN_DIR/$system-loadgen-0.json" "$RUN_DIR/$system-loadgen-1.json" <<'EOF'
import json, os, sys
out, system, wanted, nofile, held, before, during, after = sys.argv[1:9]
errors, p99 = 0, 0.0
for f in sys.argv[9:]:
    if os.path.exists(f) and os.path.getsize(f):
        j = json.load(open(f))
        errors += j["connect_errors"] + j["send_errors"]
        p99 = max(p99, j["connect_time"]["p99_ms"])
    else:
        errors = -1
per = (int(during) - int(before)) / int(held) if int(held) else float("nan")
with open(out, "a") as fh:
    fh.write("\t".join(str(x) for x in [system, wanted, nofile, held, before, during, after, f"{per:.2f}", errors, p99]) + "\n")
EOF
  log "$system: $(tail -1 "$RESULTS" | awk -F'\t' '{printf "%s connections held, VmRSS %s -> %s KiB (after: %s), %s KiB per connection, connect errors %s, connect p99 %s ms", $4, $5, $6, $7, $8, $9, $10}')"
  if ((rc != 0)); then log "$system: a loadgen exited $rc: $(grep -h FAIL "$RUN_DIR"/logs/loadgen-"$system"-*.log | head -2 | tr '\n' ' ')"; fi
}

for system in $SYSTEMS; do
  case $system in
    roomcast)
      start_stack 1
      hold roomcast "${GATEWAY_PIDS[0]}" "${GATEWAY_PORTS[0]}" "$GATEWAY_URLS" ws "$RAMP_ROOMCAST"
      save_metrics gateway-0 "${GATEWAY_METRICS_PORTS[0]}"
      log "roomcast: fanout VmRSS $(rss_kib "${FANOUT_PIDS[0]}") KiB, persister $(rss_kib "$PERSISTER_PID") KiB (not counted)"
      stop_stack
      ;;
    peer)
      start_peers 1
      hold peer "${PEER_PIDS[0]}" "${PEER_PORTS[0]}" "$PEER_URLS" socketio "$RAMP"
      stop_peers
      ;;
    ceiling)
      # A reference, not a contender: the minimal tokio-tungstenite server of fanout.sh
      # (default WebSocketConfig, no rooms beyond a list, no history).
      start_ceiling
      hold ceiling "$CEILING_PID" "$CEILING_PORT" "http://127.0.0.1:$CEILING_PORT" ws "$RAMP"
      bg_stop "$CEILING_PID"
      ;;
    roomcast1 | roomcast1-wt)
      mode=ws
      [[ $system == roomcast1-wt ]] && mode=webtransport
      free_port RC_PORT RC_METRICS
      rm -rf "$BENCH_TMP/roomcast-data"
      bg_start "$system" env RUST_LOG=warn $BENCH_RUST_ENV "$(need_bin roomcast)" --listen "127.0.0.1:$RC_PORT" --api-listen off \
        --metrics-listen "127.0.0.1:$RC_METRICS" --data-dir "$BENCH_TMP/roomcast-data" --drain-seconds 1 \
        --max-connections-per-ip 0
      wait_ready "$LAST_PID" "$system" "$RC_PORT" 60
      hold "$system" "$LAST_PID" "$RC_PORT" "http://127.0.0.1:$RC_PORT" "$mode" "$RAMP" "$RC_METRICS"
      bg_stop "$LAST_PID"
      ;;
    *) die "unknown system $system (roomcast, peer, ceiling, roomcast1, roomcast1-wt)" ;;
  esac
done

python3 - "$RESULTS" <<'EOF' | tee "$RUN_DIR/summary.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| system | connections held | VmRSS before KiB | VmRSS holding KiB | VmRSS after close KiB | KiB per connection | connect errors | connect p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['system']} | {r['held']} | {r['rss_before_kib']} | {r['rss_during_kib']} | {r['rss_after_kib']} | {r['kib_per_conn']} | {r['connect_errors']} | {r['connect_p99_ms']} |")
by = {r["system"]: float(r["kib_per_conn"]) for r in rows}
if "roomcast" in by and "peer" in by and by["roomcast"] > 0:
    print(f"\npeer/roomcast memory per connection: {by['peer'] / by['roomcast']:.2f}x")
EOF
log "done in ${SECONDS}s"
