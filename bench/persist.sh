#!/usr/bin/env bash
# Scenario 3 of BENCHMARKS.md: persistence. persist-bench writes the same number of
# messages (a) through the persister (concurrent writers; the persister batches them into
# unordered insert_many with majority + journal write concern) and (b) one-by-one with
# insert_one from a single writer (the original app's way), against one fresh
# MongoDB-wire server (secantusd-py). It runs once with 64 writers and once with 256, each
# on a fresh store and persister (an insert into secantusd gets slower as its collection
# grows, so a second run on the same store would not compare), and samples the CPU of the
# store and the persister, to show which of the two is the limit.
#
#   bash bench/persist.sh                    # about 2 minutes
#   PERSIST_MESSAGES=2000 bash bench/persist.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

MESSAGES=${PERSIST_MESSAGES:-5000}
WRITERS=${PERSIST_WRITERS:-"64 256"}

bench_init persist
PERSIST_BENCH=$(need_bin persist-bench)
machine_line | tee "$RUN_DIR/machine.txt" >&2
RESULTS=$RUN_DIR/persist.tsv
printf 'writers\tmessages\tbatched_docs_per_s\tone_by_one_docs_per_s\tratio\tseconds\tcpu\n' >"$RESULTS"
for w in $WRITERS; do
  start_mongo "secantusd-w$w"
  start_persister "persister-w$w"
  log "secantusd-py :$MONGO_PORT (fresh store), persister $PERSISTER_URL (batch 256, linger 2 ms: the defaults)"
  before_m=$(cpu_ticks "$MONGO_PID") before_p=$(cpu_ticks "$PERSISTER_PID")
  t0=$EPOCHREALTIME
  out=$RUN_DIR/persist-bench-w$w.json
  if ! timeout -k 5 120 "$PERSIST_BENCH" --persister "$PERSISTER_URL" --mongodb "$MONGO_URI" \
      --messages "$MESSAGES" --writers "$w" >"$out" 2>"$RUN_DIR/logs/persist-bench-w$w.log"; then
    log "persist-bench with $w writers failed or timed out after 120 s: $(tail -3 "$RUN_DIR/logs/persist-bench-w$w.log" | tr '\n' ' ')"
    bg_stop "$PERSISTER_PID" "$MONGO_PID"
    continue
  fi
  dt=$(python3 -c "print($EPOCHREALTIME - $t0)")
  cpu="secantusd:$(python3 -c "print(round(($(cpu_ticks "$MONGO_PID") - $before_m) / $CLK_TCK / $dt * 100))")% persister:$(python3 -c "print(round(($(cpu_ticks "$PERSISTER_PID") - $before_p) / $CLK_TCK / $dt * 100))")%"
  python3 - "$out" "$dt" "$cpu" >>"$RESULTS" <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print("\t".join(str(x) for x in [j["writers"], j["messages"], j["batched_docs_per_s"], j["one_by_one_docs_per_s"], j["ratio"], f"{float(sys.argv[2]):.1f}", sys.argv[3]]))
EOF
  log "writers $w: $(cat "$out")  cpu over the run: $cpu"
  save_metrics "persister-w$w" "$PERSISTER_METRICS"
  bg_stop "$PERSISTER_PID" "$MONGO_PID"
done
python3 "$BENCH_DIR/summarize.py" metrics "$RUN_DIR"/metrics/persister-w*.prom >"$RUN_DIR/metrics/histograms.md" || true

python3 - "$RESULTS" "$RUN_DIR"/metrics/persister-w*.prom <<'EOF' | tee "$RUN_DIR/summary.txt"
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| writers (batched path) | messages per path | batched docs/s | one-by-one docs/s | batched / one-by-one | CPU over both paths (100% = 1 core) |")
print("|---:|---:|---:|---:|---:|---|")
for r in rows:
    print(f"| {r['writers']} | {r['messages']} | {r['batched_docs_per_s']} | {r['one_by_one_docs_per_s']} | {r['ratio']} | {r['cpu']} |")
print()
for path in sys.argv[2:]:
    text = open(path).read()
    def total(name):
        return sum(float(v) for v in re.findall(rf'^{name}(?:{{[^}}]*}})?\s+(\S+)$', text, re.M))
    n, s = total("roomcast_persister_batch_size_count"), total("roomcast_persister_batch_size_sum")
    dn, ds = total("roomcast_persister_batch_duration_seconds_count"), total("roomcast_persister_batch_duration_seconds_sum")
    if n and dn:
        print(f"{path.rsplit('/', 1)[-1]}: {n:.0f} batches (insert_many), mean {s / n:.1f} documents per batch, "
              f"mean {ds / dn * 1000:.1f} ms per batch")
EOF
log "done in ${SECONDS}s"
