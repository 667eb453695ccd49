#!/usr/bin/env bash
# The cost of presence (BENCHMARKS.md): the rooms fan-out scenario and the join storm, on
# the one-process `roomcast` (roomcast1) and the distributed stack (roomcast), built from
# the commit before presence (bench/presence-baseline) and from this checkout, in one run.
# Every loadgen is this checkout's, so both builds are measured with one instrument.
#
#   bash bench/presence.sh
#   PRESENCE_SYSTEMS=roomcast1 FANOUT_RATES="1000 2000" bash bench/presence.sh
#
# The baseline's binaries are built once into .tools/bench-baseline/<commit>/ (from a
# temporary git worktree). Results: bench/results/presence-<UTC stamp>/, with the runs of
# bench/fanout.sh and bench/joinstorm.sh under base-*/ and head-*/, and ratios.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYSTEMS=${PRESENCE_SYSTEMS:-"roomcast1 roomcast"}
read -r BASE _ <"$ROOT/bench/presence-baseline"
BASE_DIR=$ROOT/.tools/bench-baseline/$BASE
OUT=$ROOT/bench/results/presence-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
log() { printf '[presence %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ ! -x $BASE_DIR/roomcast ]]; then
  log "building the baseline $BASE (once) into ${BASE_DIR#"$ROOT"/}"
  tree=$(mktemp -d)
  trap 'git -C "$ROOT" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
  git -C "$ROOT" worktree add --detach "$tree" "$BASE" >/dev/null
  # The same target directory: dependencies are shared, only the workspace's crates build.
  (cd "$tree" && CARGO_TARGET_DIR="$ROOT/target" cargo build --release --workspace --bins) >&2
  mkdir -p "$BASE_DIR"
  for bin in roomcast gateway fanout persister; do cp "$ROOT/target/release/$bin" "$BASE_DIR/"; done
fi
log "building this checkout (cargo build --release --workspace --bins)"
(cd "$ROOT" && cargo build --release --workspace --bins) >&2
ln -sf "$ROOT/target/release/loadgen" "$BASE_DIR/loadgen"

for build in base head; do
  # The ceiling server, where the answer is known, checks loadgen first (once).
  bins=$BASE_DIR systems=$SYSTEMS
  [[ $build == head ]] && bins=$ROOT/target/release systems="ceiling $SYSTEMS"
  log "== $build: rooms fan-out ($systems)"
  ROOMCAST_BIN_DIR=$bins FANOUT_SYSTEMS=$systems bash "$ROOT/bench/fanout.sh" rooms >&2
  cp -rL "$ROOT/bench/results/rooms-latest" "$OUT/$build-rooms"
  log "== $build: join storm ($SYSTEMS)"
  ROOMCAST_BIN_DIR=$bins JOINSTORM_SYSTEMS=$SYSTEMS bash "$ROOT/bench/joinstorm.sh" >&2
  cp -rL "$ROOT/bench/results/joinstorm-latest" "$OUT/$build-joinstorm"
done

python3 - "$OUT" "$BASE" <<'EOF' | tee "$OUT/ratios.txt"
import csv, sys
out, base = sys.argv[1], sys.argv[2]
def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))
def best(build):
    """Per system: the highest deliveries/s of a passing step, and its p99."""
    top = {}
    for r in rows(f"{out}/{build}-rooms/steps.tsv"):
        if r["pass"] == "PASS" and float(r["deliveries_per_s"]) > top.get(r["system"], (0, 0))[0]:
            top[r["system"]] = (float(r["deliveries_per_s"]), float(r["p99_ms"]))
    return top
def storm(build):
    return {r["system"]: r for r in rows(f"{out}/{build}-joinstorm/results.tsv")}
b, h = best("base"), best("head")
print(f"rooms fan-out (1,000 clients, 10 rooms; p99 <= 50 ms), baseline {base[:7]} vs this checkout")
print("system     base deliv/s  base p99  head deliv/s  head p99  head/base")
for s in sorted(set(b) | set(h)):
    (bd, bp), (hd, hp) = b.get(s, (0, 0)), h.get(s, (0, 0))
    print(f"{s:10} {bd:12.0f} {bp:8.1f} {hd:13.0f} {hp:9.1f} {hd / bd if bd else float('nan'):10.2f}")
sb, sh = storm("base"), storm("head")
print("\njoin storm (1,000 clients join 10 rooms at once)")
print("system     base all_joined_s  head all_joined_s  head/base  base p99 ms  head p99 ms")
for s in sorted(set(sb) | set(sh)):
    x, y = float(sb[s]["all_joined_s"]), float(sh[s]["all_joined_s"])
    print(f"{s:10} {x:17.2f} {y:17.2f} {y / x if x else float('nan'):10.2f} {sb[s]['join_p99_ms']:>12} {sh[s]['join_p99_ms']:>11}")
EOF
log "done: ${OUT#"$ROOT"/}/ratios.txt"
