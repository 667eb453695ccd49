#!/usr/bin/env bash
# WebTransport against WebSocket on the same server (BENCHMARKS.md, issue 16), in one run:
# the one-process `roomcast` held by /ws clients, then by WebTransport clients (loadgen
# --mode webtransport, QUIC over loopback), each started afresh:
#
#   1. idle memory per connection and connect time (bench/idle.sh, N idle clients);
#   2. rooms fan-out, deliveries/s at p99 <= 50 ms (bench/fanout.sh rooms), after the
#      ceiling server, where the answer is known, has checked loadgen.
#
#   bash bench/webtransport.sh
#   WT_IDLE_CONNECTIONS=2000 FANOUT_RATES="400 800" bash bench/webtransport.sh
#
# Results: bench/results/webtransport-<UTC stamp>/ with the idle and rooms runs, and
# ratios.txt (WebTransport / WebSocket).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/bench/results/webtransport-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
log() { printf '[webtransport %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

log "building (cargo build --release --workspace --bins)"
(cd "$ROOT" && cargo build --release --workspace --bins) >&2

log "== idle connections: roomcast1 (/ws) then roomcast1-wt (WebTransport)"
IDLE_SYSTEMS="roomcast1 roomcast1-wt" IDLE_CONNECTIONS=${WT_IDLE_CONNECTIONS:-5000} bash "$ROOT/bench/idle.sh" >&2
cp -rL "$ROOT/bench/results/idle-latest" "$OUT/idle"

log "== rooms fan-out: ceiling, roomcast1 (/ws), roomcast1-wt (WebTransport)"
FANOUT_SYSTEMS="ceiling roomcast1 roomcast1-wt" bash "$ROOT/bench/fanout.sh" rooms >&2
cp -rL "$ROOT/bench/results/rooms-latest" "$OUT/rooms"

python3 - "$OUT" <<'EOF' | tee "$OUT/ratios.txt"
import csv, sys
out = sys.argv[1]
def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))
idle = {r["system"]: r for r in rows(f"{out}/idle/idle.tsv")}
ws, wt = idle.get("roomcast1"), idle.get("roomcast1-wt")
print("idle connections, one roomcast process (VmRSS growth / connections held)")
print("transport     held  KiB/conn  connect p99 ms  connect errors")
for name, r in (("WebSocket", ws), ("WebTransport", wt)):
    if r:
        print(f"{name:12} {r['held']:>5} {float(r['kib_per_conn']):9.2f} {r['connect_p99_ms']:>15} {r['connect_errors']:>15}")
if ws and wt and float(ws["kib_per_conn"]) > 0:
    print(f"WebTransport / WebSocket memory per connection: {float(wt['kib_per_conn']) / float(ws['kib_per_conn']):.2f}x")
    if float(ws["connect_p99_ms"]) > 0:
        print(f"WebTransport / WebSocket connect p99: {float(wt['connect_p99_ms']) / float(ws['connect_p99_ms']):.2f}x")
best = {}
for r in rows(f"{out}/rooms/steps.tsv"):
    if r["pass"] == "PASS" and float(r["deliveries_per_s"]) > best.get(r["system"], (0, 0, ""))[0]:
        best[r["system"]] = (float(r["deliveries_per_s"]), float(r["p99_ms"]), r["cpu"])
print("\nrooms fan-out (1,000 clients, 10 rooms; the best passing step, p99 <= 50 ms)")
print("system          deliveries/s  p99 ms  cpu")
for s in ("ceiling", "roomcast1", "roomcast1-wt"):
    if s in best:
        d, p, c = best[s]
        print(f"{s:15} {d:12.0f} {p:7.1f}  {c}")
if best.get("roomcast1") and best.get("roomcast1-wt"):
    print(f"WebTransport / WebSocket deliveries/s: {best['roomcast1-wt'][0] / best['roomcast1'][0]:.2f}x")
EOF
log "done: ${OUT#"$ROOT"/}/ratios.txt"
