# shellcheck shell=bash
# Shared helpers of the benchmark scripts (bench/*.sh); sourced, never run.
#
# Everything a script starts goes through bg_start, which records its pid; bench_cleanup
# (installed as an EXIT/INT/TERM trap by bench_init) stops exactly those pids, newest
# first: SIGTERM, then SIGKILL after a grace period. Nothing is killed by name.
# Every service listens on 127.0.0.1 on a free port; nothing uses Redis's 6379.
#
# Binaries come from $ROOMCAST_BIN_DIR when set; otherwise lib.sh builds target/release first
# (`cargo build --release`, a no-op when it is up to date), so a clean clone needs no other step.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BIN_DIR=${ROOMCAST_BIN_DIR:-$ROOT/target/release}
SECANTUSD=${ROOMCAST_SECANTUSD:-$ROOT/.tools/venv-secantus/bin/secantusd-py}
PEER_DIR=$BENCH_DIR/peer
CLK_TCK=$(getconf CLK_TCK)

BENCH_PIDS=()   # every process started with bg_start, in start order
BENCH_NAMES=()  # their names, same order
BENCH_TMP=""    # scratch dir (stores, redis dirs), removed at exit
RUN_DIR=""      # bench/results/<scenario>-<stamp>: raw JSON, logs, metrics
GIVEN_PORTS=" "
# loadgen opens every connection from 127.0.0.1: lift roomcast's per-address limit (default
# 1,000), as behind a load balancer. Every other limit stays at its default.
export ROOMCAST_MAX_CONNECTIONS_PER_IP=0
BENCH_RUST_ENV=${BENCH_RUST_ENV:-}  # extra VAR=value words for the Rust services (e.g. a diagnostic LD_PRELOAD)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# bench_init SCENARIO: results dir, scratch dir, cleanup trap, and the tools it needs.
bench_init() {
  local scenario=$1
  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  RUN_DIR=$BENCH_DIR/results/$scenario-$stamp
  mkdir -p "$RUN_DIR/logs"
  ln -sfn "$(basename "$RUN_DIR")" "$BENCH_DIR/results/$scenario-latest"
  BENCH_TMP=$(mktemp -d "/tmp/roomcast-bench-$scenario-XXXXXX")
  trap bench_cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  command -v python3 >/dev/null || die "python3 is needed (JSON and port helpers)"
  command -v curl >/dev/null || die "curl is needed (readiness and /metrics)"
  if ! command -v redis-server >/dev/null || [[ ! -x $SECANTUSD ]]; then
    log "installing redis-server and SecantusDB (scripts/setup-test-deps.sh)"
    bash "$ROOT/scripts/setup-test-deps.sh" >&2 || die "scripts/setup-test-deps.sh failed"
  fi
  if [[ -z ${ROOMCAST_BIN_DIR:-} ]]; then
    log "building the release binaries (cargo build --release --workspace --bins)"
    (cd "$ROOT" && cargo build --release --workspace --bins) >&2 || die "cargo build --release failed; see above"
  fi
  log "results in ${RUN_DIR#"$ROOT"/}"
}

# is_alive PID: running (a zombie, exited but not yet reaped, counts as gone).
is_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

bench_cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local i pid alive
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    if is_alive "$pid"; then kill -TERM "$pid" 2>/dev/null; fi
  done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${BENCH_PIDS[@]}"; do if is_alive "$pid"; then alive=1; fi; done
    ((alive)) || break
    sleep 0.1
  done
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    if is_alive "$pid"; then
      log "killing ${BENCH_NAMES[i]} (pid $pid) after 5 s"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  wait 2>/dev/null
  [[ -n $BENCH_TMP && -d $BENCH_TMP ]] && rm -rf "$BENCH_TMP"
  exit "$rc"
}

# need_bin NAME -> path of a release binary, or exit with what to do.
need_bin() {
  local file=$BIN_DIR/$1
  [[ -x $file ]] || die "$file is missing (ROOMCAST_BIN_DIR=$BIN_DIR)"
  printf '%s\n' "$file"
}

# bg_start NAME PROGRAM ARGS...: starts it in the background, output to logs/NAME.log;
# sets LAST_PID.
bg_start() {
  local name=$1
  shift
  local logfile=$RUN_DIR/logs/$name.log
  printf '# %s\n' "$*" >"$logfile"
  "$@" >>"$logfile" 2>&1 &
  LAST_PID=$!
  BENCH_PIDS+=("$LAST_PID")
  BENCH_NAMES+=("$name")
}

# bg_stop PID...: stops some of what was started (SIGTERM, SIGKILL after 5 s), and forgets them.
bg_stop() {
  local pid i
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "$@"; do if is_alive "$pid"; then alive=1; fi; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do
    if is_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    for i in "${!BENCH_PIDS[@]}"; do
      if [[ ${BENCH_PIDS[i]} == "$pid" ]]; then unset 'BENCH_PIDS[i]' 'BENCH_NAMES[i]'; fi
    done
  done
  BENCH_PIDS=("${BENCH_PIDS[@]}")
  BENCH_NAMES=("${BENCH_NAMES[@]}")
}

# free_port VAR...: sets each VAR to a loopback port nothing listens on, never handed out
# twice by this script (not called in $(...), so that it can remember what it gave).
free_port() {
  local _fp_var _fp_port
  for _fp_var in "$@"; do
    while :; do
      _fp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      [[ $GIVEN_PORTS == *" $_fp_port "* ]] || break
    done
    GIVEN_PORTS+="$_fp_port "
    printf -v "$_fp_var" '%s' "$_fp_port"
  done
}

# wait_port PID NAME PORT [SECONDS]: until something accepts on 127.0.0.1:PORT.
wait_port() {
  local pid=$1 name=$2 port=$3 limit=${4:-60}
  local deadline=$((SECONDS + limit))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    is_alive "$pid" || { tail -20 "$RUN_DIR/logs/$name.log" >&2; die "$name exited before listening on $port"; }
    ((SECONDS < deadline)) || die "$name did not listen on $port within ${limit}s"
    sleep 0.1
  done
}

# wait_ready PID NAME PORT [SECONDS]: until GET /readyz on PORT answers 200.
wait_ready() {
  local pid=$1 name=$2 port=$3 limit=${4:-60}
  local deadline=$((SECONDS + limit))
  until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    is_alive "$pid" || { tail -20 "$RUN_DIR/logs/$name.log" >&2; die "$name exited before it was ready"; }
    ((SECONDS < deadline)) || die "$name was not ready on $port within ${limit}s"
    sleep 0.2
  done
}

# start_redis NAME -> sets REDIS_PORT, REDIS_URL, REDIS_PID.
start_redis() {
  local name=$1
  command -v redis-server >/dev/null || die "redis-server is missing after setup"
  free_port REDIS_PORT
  mkdir -p "$BENCH_TMP/$name"
  bg_start "$name" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$BENCH_TMP/$name" --protected-mode yes
  REDIS_PID=$LAST_PID
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
  wait_port "$REDIS_PID" "$name" "$REDIS_PORT"
}

# start_redis_cluster NAME -> a Redis Cluster of 3 primaries (no replicas: on two cores
# they would only take CPU from the shards being measured). Sets REDIS_CLUSTER_SEEDS
# (comma separated redis:// URLs), REDIS_SHARD_PIDS (one per primary) and REDIS_PID (the
# first, so start_stack does not start a plain Redis).
start_redis_cluster() {
  local name=$1 i port bus nodes=()
  REDIS_SHARD_PIDS=() REDIS_CLUSTER_SEEDS=""
  for i in 0 1 2; do
    free_port port bus
    mkdir -p "$BENCH_TMP/$name-$i"
    bg_start "$name-$i" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$BENCH_TMP/$name-$i" --protected-mode yes --cluster-enabled yes --cluster-port "$bus"
    REDIS_SHARD_PIDS+=("$LAST_PID")
    wait_port "$LAST_PID" "$name-$i" "$port"
    nodes+=("127.0.0.1:$port")
    REDIS_CLUSTER_SEEDS+="${REDIS_CLUSTER_SEEDS:+,}redis://127.0.0.1:$port"
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$RUN_DIR/logs/$name-create.log" 2>&1 ||
    die "redis-cli --cluster create failed; see ${RUN_DIR#"$ROOT"/}/logs/$name-create.log"
  local deadline=$((SECONDS + 30))
  until redis-cli -p "${nodes[0]#*:}" cluster info | grep -q 'cluster_state:ok'; do
    ((SECONDS < deadline)) || die "the Redis Cluster $name is not ok after 30 s"
    sleep 0.2
  done
  REDIS_PID=${REDIS_SHARD_PIDS[0]}
}

# start_mongo NAME -> sets MONGO_PORT, MONGO_URI, MONGO_PID (a fresh secantusd-py store).
start_mongo() {
  local name=$1
  [[ -x $SECANTUSD ]] || die "$SECANTUSD is missing after setup"
  free_port MONGO_PORT
  mkdir -p "$BENCH_TMP/$name"
  bg_start "$name" "$SECANTUSD" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$BENCH_TMP/$name" --log-level WARNING
  MONGO_PID=$LAST_PID
  MONGO_URI="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
  wait_port "$MONGO_PID" "$name" "$MONGO_PORT" 90
}

# start_persister NAME -> sets PERSISTER_PORT, PERSISTER_URL, PERSISTER_PID, PERSISTER_METRICS
# (needs MONGO_URI).
start_persister() {
  local name=$1
  local bin
  bin=$(need_bin persister)
  free_port PERSISTER_PORT PERSISTER_METRICS
  bg_start "$name" env RUST_LOG=warn $BENCH_RUST_ENV "$bin" --listen "127.0.0.1:$PERSISTER_PORT" \
    --metrics-listen "127.0.0.1:$PERSISTER_METRICS" --mongodb "$MONGO_URI"
  PERSISTER_PID=$LAST_PID
  PERSISTER_URL=http://127.0.0.1:$PERSISTER_PORT
  wait_port "$PERSISTER_PID" "$name" "$PERSISTER_PORT"
  wait_ready "$PERSISTER_PID" "$name" "$PERSISTER_METRICS" 90
}

# start_stack N: redis + secantusd + persister + N x (fanout, gateway), every gateway ready.
# Sets GATEWAY_URLS (comma separated), GATEWAY_PIDS, GATEWAY_PORTS, GATEWAY_METRICS_PORTS,
# FANOUT_PIDS, FANOUT_METRICS_PORTS, and everything start_redis/mongo/persister set.
# Skips redis/mongo/persister when they are already running (REDIS_URL/PERSISTER_URL set).
# GATEWAY_ARGS (words) are added to every gateway's flags.
start_stack() {
  local n=$1
  local fanout_bin gateway_bin i fport fmetrics gport gmetrics
  fanout_bin=$(need_bin fanout)
  gateway_bin=$(need_bin gateway)
  local tag=${STACK_TAG:-}
  [[ -n ${REDIS_PID:-} ]] || start_redis "${tag}redis"
  [[ -n ${MONGO_PID:-} ]] || start_mongo "${tag}secantusd"
  [[ -n ${PERSISTER_PID:-} ]] || start_persister "${tag}persister"
  GATEWAY_PIDS=() GATEWAY_PORTS=() GATEWAY_METRICS_PORTS=() FANOUT_PIDS=() FANOUT_METRICS_PORTS=()
  local urls=()
  for ((i = 0; i < n; i++)); do
    free_port fport fmetrics gport gmetrics
    local redis_flag=(--redis "${REDIS_URL:-}")
    [[ -z ${REDIS_CLUSTER_SEEDS:-} ]] || redis_flag=(--redis-cluster "$REDIS_CLUSTER_SEEDS")
    bg_start "${tag}fanout-$i" env RUST_LOG=warn $BENCH_RUST_ENV "$fanout_bin" --listen "127.0.0.1:$fport" \
      --metrics-listen "127.0.0.1:$fmetrics" "${redis_flag[@]}"
    FANOUT_PIDS+=("$LAST_PID")
    FANOUT_METRICS_PORTS+=("$fmetrics")
    wait_port "$LAST_PID" "${tag}fanout-$i" "$fport"
    bg_start "${tag}gateway-$i" env RUST_LOG=warn $BENCH_RUST_ENV "$gateway_bin" --listen "127.0.0.1:$gport" \
      --metrics-listen "127.0.0.1:$gmetrics" --fanout "http://127.0.0.1:$fport" \
      --persister "$PERSISTER_URL" --drain-seconds 1 ${GATEWAY_ARGS:-}
    GATEWAY_PIDS+=("$LAST_PID")
    GATEWAY_PORTS+=("$gport")
    GATEWAY_METRICS_PORTS+=("$gmetrics")
    urls+=("http://127.0.0.1:$gport")
  done
  for ((i = 0; i < n; i++)); do
    wait_ready "${GATEWAY_PIDS[i]}" "${tag}gateway-$i" "${GATEWAY_PORTS[i]}" 90
  done
  GATEWAY_URLS=$(IFS=,; echo "${urls[*]}")
  log "roomcast stack ready: $n x (gateway + fanout), persister, redis ${REDIS_CLUSTER_SEEDS:-:${REDIS_PORT:-}}, secantusd :$MONGO_PORT"
}

# stop_stack: stops everything start_stack started (and the store and redis under it).
stop_stack() {
  bg_stop "${GATEWAY_PIDS[@]}"
  bg_stop "${FANOUT_PIDS[@]}"
  bg_stop "$PERSISTER_PID"
  bg_stop "$MONGO_PID"
  if [[ -n ${REDIS_CLUSTER_SEEDS:-} ]]; then bg_stop "${REDIS_SHARD_PIDS[@]}"; else bg_stop "$REDIS_PID"; fi
  GATEWAY_PIDS=() FANOUT_PIDS=() REDIS_SHARD_PIDS=()
  unset PERSISTER_PID MONGO_PID REDIS_PID REDIS_URL PERSISTER_URL REDIS_CLUSTER_SEEDS
}

# ensure_peer_deps: npm ci in bench/peer when its node_modules is missing or stale.
ensure_peer_deps() {
  command -v node >/dev/null || die "node is missing (the peer is a Node server)"
  if [[ ! -d $PEER_DIR/node_modules/socket.io || $PEER_DIR/package-lock.json -nt $PEER_DIR/node_modules/.package-lock.json ]]; then
    log "installing the peer's packages (npm ci in bench/peer)"
    (cd "$PEER_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci in bench/peer failed"
  fi
}

# start_peers N: N Node peers on one (new) redis. Sets PEER_URLS, PEER_PIDS, PEER_PORTS.
start_peers() {
  local n=$1 i port
  ensure_peer_deps
  [[ -n ${REDIS_PID:-} ]] || start_redis peer-redis
  PEER_PIDS=() PEER_PORTS=()
  local urls=()
  for ((i = 0; i < n; i++)); do
    free_port port
    bg_start "peer-$i" env PORT="$port" REDIS_URL="$REDIS_URL" NODE_ENV=production node "$PEER_DIR/server.js"
    PEER_PIDS+=("$LAST_PID")
    PEER_PORTS+=("$port")
    urls+=("http://127.0.0.1:$port")
  done
  for ((i = 0; i < n; i++)); do
    wait_ready "${PEER_PIDS[i]}" "peer-$i" "${PEER_PORTS[i]}" 30
  done
  PEER_URLS=$(IFS=,; echo "${urls[*]}")
  log "peer ready: $n x node ($(node --version)) on redis :$REDIS_PORT"
}

stop_peers() {
  bg_stop "${PEER_PIDS[@]}"
  bg_stop "$REDIS_PID"
  PEER_PIDS=()
  unset REDIS_PID REDIS_URL
}

# start_ceiling: bench's minimal broadcast server. Sets CEILING_PORT, CEILING_PID.
start_ceiling() {
  free_port CEILING_PORT
  bg_start ceiling "$(need_bin ceiling)" --listen "127.0.0.1:$CEILING_PORT"
  CEILING_PID=$LAST_PID
  wait_port "$CEILING_PID" ceiling "$CEILING_PORT"
}

# rss_kib PID -> VmRSS in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID -> utime + stime of the process (all its threads), in clock ticks.
cpu_ticks() {
  # Field 2 (comm) can hold spaces: cut after the last ')'.
  local stat
  stat=$(<"/proc/$1/stat") || { echo 0; return; }
  stat=${stat##*) }
  # Fields from 3 on: state is $1, so utime (14) is $12 and stime (15) is $13.
  awk '{print $12 + $13}' <<<"$stat"
}

# established PORT... -> TCP connections established to any of the ports (client side).
established() {
  local filter="" p
  for p in "$@"; do filter+="${filter:+ or }dport = :$p"; done
  ss -Htn state established "( $filter )" 2>/dev/null | wc -l
}

# connections MODE METRICS_PORT PORT...: client connections open now: TCP ones from ss;
# WebTransport sessions (UDP, which ss cannot count per session) from the server's own
# gauge on its admin port METRICS_PORT.
connections() {
  local mode=$1 metrics=$2
  shift 2
  if [[ $mode == webtransport ]]; then
    curl -fsS -m 2 "http://127.0.0.1:$metrics/metrics" 2>/dev/null |
      awk '/^roomcast_gateway_connections\{protocol="webtransport"\}/ { n = int($2) } END { print n + 0 }'
  else
    established "$@"
  fi
}

# json_get FILE EXPR: a Python expression over the JSON in FILE, bound to `j`.
json_get() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# save_metrics NAME PORT: GET /metrics of an admin port into RUN_DIR/metrics/NAME.prom.
save_metrics() {
  mkdir -p "$RUN_DIR/metrics"
  curl -fsS -m 5 "http://127.0.0.1:$2/metrics" >"$RUN_DIR/metrics/$1.prom" 2>/dev/null || log "could not read /metrics of $1"
}

machine_line() {
  printf '%s nproc=%s, %s, %s GiB RAM, kernel %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" \
    "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
    "$(awk '/^MemTotal:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)" "$(uname -r)"
}
