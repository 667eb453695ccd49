#!/usr/bin/env python3
"""Summaries of a bench run directory, as Markdown tables (used by the bench scripts).

    python3 bench/summarize.py fanout bench/results/fanout-latest
    python3 bench/summarize.py metrics bench/results/fanout-latest/metrics/gateway-0.prom
    python3 bench/summarize.py delta .../gateway-0-r400.prom .../gateway-0-r800.prom

`fanout` reads steps.tsv (and persist-bench.json) and writes summary.json beside them.
`metrics` prints count, mean and approximate quantiles of every histogram in a /metrics dump.
"""
import csv
import json
import math
import os
import re
import sys
from collections import defaultdict

FANOUT_LABELS = {
    "roomcast": "roomcast, distributed (2 gateways + 2 fanouts + persister, Redis, secantusd)",
    "peer": "peer (2 x Node socket.io 4 + redis-adapter, Redis, no database)",
    "ceiling": "ceiling (1 tokio-tungstenite process, no gRPC/Redis/store)",
    "roomcast-nop99": "roomcast, distributed, p99 NOT limited (loss-free sweep; not the headline)",
    "roomcast1": "roomcast, one process (memory broker, redb store)",
}


# Which CPU groups of steps.tsv are the system's own processes, and which are servers it
# needs (Redis, the MongoDB stand-in); loadgen ("lg") is never counted.
OWN_GROUPS = {"gw", "fo", "pers", "roomcast", "ceiling", "node"}
SERVICE_GROUPS = {"redis", "mongo"}


def cpu_groups(cpu):
    """'gw:31% fo:7%' -> {'gw': 0.31, 'fo': 0.07} (cores)."""
    out = {}
    for part in cpu.split():
        name, _, pct = part.partition(":")
        if pct.endswith("%"):
            out[name] = float(pct[:-1]) / 100
    return out


def cpu_table(rows, systems):
    """CPU ms per 1,000 deliveries, per system and passing rate: own processes, and with Redis/store."""
    out = ["\n### CPU per 1,000 deliveries (ms of CPU; own = the system's processes, all = with Redis and the store; loadgen excluded)\n"]
    rates = sorted({float(r["rate"]) for r in rows if r["pass"] == "PASS"})
    out.append("| msgs/s | " + " | ".join(f"{s} own / all" for s in systems) + " |")
    out.append("|---:|" + "---:|" * len(systems))
    table = {}
    for rate in rates:
        cells = []
        for system in systems:
            row = next((r for r in rows if r["system"] == system and float(r["rate"]) == rate and r["pass"] == "PASS"), None)
            groups = cpu_groups(row["cpu"]) if row else {}
            dps = float(row["deliveries_per_s"]) if row else 0
            if not groups or dps <= 0:
                cells.append("-")
                continue
            own = sum(v for k, v in groups.items() if k in OWN_GROUPS) * 1e6 / dps
            total = sum(v for k, v in groups.items() if k in OWN_GROUPS | SERVICE_GROUPS) * 1e6 / dps
            table.setdefault(system, {})[rate] = {"own_ms": round(own, 2), "all_ms": round(total, 2)}
            cells.append(f"{own:.1f} / {total:.1f}")
        out.append(f"| {rate:.0f} | " + " | ".join(cells) + " |")
    return out, table


def fanout(run_dir, scenario="rooms"):
    rows = list(csv.DictReader(open(os.path.join(run_dir, "steps.tsv")), delimiter="\t"))
    systems = []
    for row in rows:
        if row["system"] not in systems:
            systems.append(row["system"])
    summary = {"systems": {}}
    persist = os.path.join(run_dir, "persist-bench.json")
    if os.path.exists(persist) and os.path.getsize(persist) > 0:
        try:
            summary["store"] = json.loads(open(persist).read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
    out = []
    out.append("### Steps\n")
    out.append("| system | msgs/s offered | result | deliveries/s | sent | expected | received | lost | dup+reord | errors | p50 ms | p99 ms | max ms | CPU (100% = 1 core) |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        out.append("| {system} | {rate} | {pass} | {deliveries_per_s} | {sent} | {expected} | {received} | {lost} | {dup_reord} | {errors} | {p50_ms} | {p99_ms} | {max_ms} | {cpu} |".format(**r))
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        passed = [r for r in mine if r["pass"] == "PASS"]
        best = max(passed, key=lambda r: float(r["deliveries_per_s"]), default=None)
        failed = next((r for r in mine if r["pass"] != "PASS"), None)
        summary["systems"][system] = {
            "best_deliveries_per_s": float(best["deliveries_per_s"]) if best else 0.0,
            "best_rate": float(best["rate"]) if best else None,
            "best_p99_ms": float(best["p99_ms"]) if best else None,
            "stopped_at_rate": float(failed["rate"]) if failed else None,
            "stopped_because": None if not failed else (
                "time budget" if failed["pass"] == "BUDGET" else
                f"p99 {failed['p99_ms']} ms, lost {failed['lost']}, dup/reord {failed['dup_reord']}, errors {failed['errors']}"),
        }
    out.append("\n### Figures (highest deliveries/s of a step with p99 <= 50 ms and no loss; roomcast-nop99: no loss, any p99)\n")
    out.append("| system | deliveries/s | at msgs/s | p99 ms | first failing step |")
    out.append("|---|---:|---:|---:|---|")
    for system in systems:
        s = summary["systems"][system]
        stop = f"{s['stopped_at_rate']:.0f} msgs/s: {s['stopped_because']}" if s["stopped_at_rate"] else "none (all rates passed)"
        out.append(f"| {FANOUT_LABELS.get(system, system)} | {s['best_deliveries_per_s']:.0f} | "
                   f"{s['best_rate'] or 0:.0f} | {s['best_p99_ms'] if s['best_p99_ms'] is not None else '-'} | {stop} |")
    ratios = {}
    get = lambda name: summary["systems"].get(name, {}).get("best_deliveries_per_s", 0.0)
    for a, b in [("roomcast", "peer"), ("roomcast", "ceiling"), ("roomcast1", "peer"), ("roomcast1", "ceiling"), ("peer", "ceiling")]:
        if a in summary["systems"] and b in summary["systems"] and get(b) > 0:
            ratios[f"{a}/{b}"] = round(get(a) / get(b), 3)
    summary["ratios"] = ratios
    summary["scenario"] = scenario
    if ratios:
        out.append("\n| ratio | value |\n|---|---:|")
        for k, v in ratios.items():
            out.append(f"| {k} | {v:.2f} |")
    lines, table = cpu_table(rows, systems)
    summary["cpu_ms_per_1k_deliveries"] = table
    out.extend(lines)
    if "store" in summary:
        st = summary["store"]
        out.append(f"\nStore (persist-bench against the same persister and secantusd, {st.get('messages')} messages, "
                   f"{st.get('writers')} writers): batched {st.get('batched_docs_per_s')} docs/s, one-by-one "
                   f"{st.get('one_by_one_docs_per_s')} docs/s. Every roomcast message is stored before it is delivered, "
                   f"so the publish rate of the distributed stack cannot exceed ~{st.get('batched_docs_per_s')} msgs/s "
                   f"(= {float(st.get('batched_docs_per_s') or 0) * 100:.0f} deliveries/s in rooms of 100).")
    json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"), indent=2)
    print("\n".join(out))


def parse_prom(path):
    """{metric_name: {labels_without_le: {"buckets": [(le, count)], "sum": x, "count": n}}} for histograms."""
    hist = defaultdict(lambda: defaultdict(lambda: {"buckets": [], "sum": 0.0, "count": 0.0}))
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
    for line in open(path):
        if line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        le = next((v for k, v in pairs if k == "le"), None)
        key = ",".join(f"{k}={v}" for k, v in pairs if k != "le")
        if name.endswith("_bucket") and le is not None:
            hist[name[:-7]][key]["buckets"].append((math.inf if le == "+Inf" else float(le), value))
        elif name.endswith("_sum"):
            hist[name[:-4]][key]["sum"] = value
        elif name.endswith("_count"):
            hist[name[:-6]][key]["count"] = value
    return {k: v for k, v in hist.items() if any(s["buckets"] for s in v.values())}


def quantile(buckets, q):
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


def delta(before_path, after_path):
    """Histograms of after minus before: what one step added."""
    before, after = parse_prom(before_path), parse_prom(after_path)
    print(f"Histograms of {os.path.basename(after_path)} minus {os.path.basename(before_path)}; ms for *_seconds.\n")
    print("| histogram | labels | count | mean | ~p50 | ~p99 |")
    print("|---|---|---:|---:|---:|---:|")
    for name, series in sorted(after.items()):
        for labels, s in sorted(series.items()):
            b = before.get(name, {}).get(labels, {"buckets": [], "sum": 0.0, "count": 0.0})
            bb = dict(b["buckets"])
            buckets = [(le, c - bb.get(le, 0.0)) for le, c in s["buckets"]]
            count, total = s["count"] - b["count"], s["sum"] - b["sum"]
            if count <= 0:
                continue
            scale = 1000.0 if name.endswith("_seconds") else 1.0
            print(f"| {name} | {labels} | {count:.0f} | {total / count * scale:.2f} | "
                  f"{quantile(buckets, 0.5) * scale:.2f} | {quantile(buckets, 0.99) * scale:.2f} |")


def metrics(paths):
    print("Means and bucket-interpolated quantiles; in ms for *_seconds histograms.\n")
    print("| file | histogram | labels | count | mean | ~p50 | ~p99 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for path in paths:
        for name, series in sorted(parse_prom(path).items()):
            for labels, s in sorted(series.items()):
                if s["count"] == 0:
                    continue
                scale = 1000.0 if name.endswith("_seconds") else 1.0
                unit_mean = s["sum"] / s["count"] * scale
                print(f"| {os.path.basename(path)} | {name} | {labels} | {s['count']:.0f} | {unit_mean:.2f} | "
                      f"{quantile(s['buckets'], 0.5) * scale:.2f} | {quantile(s['buckets'], 0.99) * scale:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fanout":
        fanout(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "rooms")
    elif len(sys.argv) == 4 and sys.argv[1] == "delta":
        delta(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "metrics":
        metrics(sys.argv[2:])
    else:
        print(__doc__)
        sys.exit(2)
