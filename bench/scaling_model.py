#!/usr/bin/env python3
"""The capacity model of docs/SCALING.md: from costs measured on this 2-core machine to
what 1,000,000 connections and 100,000 messages/s need.

    python3 bench/scaling_model.py            # the tables of docs/SCALING.md
    python3 bench/scaling_model.py --json     # the same numbers as JSON

Every input is a cost per unit of work (CPU microseconds per delivery, per message, per
command; KiB per connection) measured here, with where it was measured, or an
assumption, marked so. Costs per unit are what carries over to other machines; the
capacities (1 s / cost) and everything below are extrapolations, not measurements.
"""

import json
import math
import sys

# Measured on this machine (BENCHMARKS.md, "Issue 17"), CPU time per unit of work.
MEASURED = {
    # bench/redis-shard.sh (redis-shard-20261205T175105Z): Redis's own CPU per call.
    "redis_us_per_publish": (0.89, "SPUBLISH on a cluster node, fit of 1/2/4 subscribers: the publish"),
    "redis_us_per_push": (0.27, "SPUBLISH on a cluster node, fit of 1/2/4 subscribers: each subscriber"),
    "redis_us_per_next_seq": (2.93, "the NEXT_SEQ script (EVAL) on 10,000 rooms' counters"),
    "redis_us_per_directory_zadd": (1.60, "ZADD GT on the directory's sorted set of 100,000 rooms"),
    # bench/fanout.sh rooms, roomcast-cluster system (rooms-20261205T175140Z), its best
    # passing step (1,000 msgs/s into 10 rooms of 100, 100,000 deliveries/s): CPU per unit.
    "gateway_us_per_delivery": (5.0, "2 gateways at 50% of a core for 100,000 deliveries/s"),
    "fanout_us_per_message": (80, "2 fanouts at 16% for 1,000 msgs/s, each carrying every message"),
    "persister_us_per_message": (70, "the persister at 7% for 1,000 msgs/s"),
    "redis_us_per_message": (40, "3 shards at 2% + 1% + 1% for 1,000 msgs/s (2 fanouts per room; seq, "
                             "publish, pushes, directory, presence), unpipelined at this rate"),
    # bench/idle.sh (idle-20261202T041923Z): VmRSS growth per idle /ws connection.
    "gateway_kib_per_connection": (7.28, "one gateway holding 19,500 idle /ws connections"),
    # bench/fanout.sh big-rooms (big-rooms-20261202T041255Z): one room task's deliveries/s
    # (roomcast alone, 2 rooms of 1,000, p99 <= 50 ms, loadgen on the same 2 cores).
    "room_task_deliveries_per_s": (48_600, "one room's task: 97,250 deliveries/s over 2 rooms"),
}

# Assumptions: not measurable here, to be replaced by measurements on the target.
ASSUMED = {
    "mongo_docs_per_s_per_shard": (20_000, "a MongoDB shard's primary taking batched insert_many "
                                   "(w: majority, journal); secantusd, the stand-in here, takes 3,100-3,700"),
    "core_headroom": (0.6, "plan every process at 60% of its cores"),
    "gateway_cores": (4, "a gateway pod's cores (with its fanout sidecar)"),
    "gateway_memory_gib": (16, "a gateway pod's memory"),
    "kernel_kib_per_connection": (8, "the kernel's socket buffers per idle TCP connection (outside VmRSS)"),
}

# Configured: the gateway's --max-connections default (gateway/src/limits.rs).
MAX_CONNECTIONS_PER_GATEWAY = 50_000

TARGET = {"connections": 1_000_000, "messages_per_s": 100_000}


def value(table, name):
    v = table[name][0]
    if v is None:
        raise SystemExit(f"scaling_model: {name} has no measured value yet ({table[name][1]})")
    return v


def share(gateways, members, affinity):
    """The share of all rooms a gateway pod holds members of: with `affinity`, a room's
    members are on that many pods; without (None), spread at random over all of them."""
    if affinity:
        return min(1.0, affinity / gateways)
    return 1 - (1 - 1 / gateways) ** members


def pod_cores(gateways, room_size, messages, affinity):
    """CPU of one pod (gateway + its fanout): its share of the deliveries, and every
    message of every room it holds members of, through its fanout."""
    m = lambda n: value(MEASURED, n)
    deliveries = messages * room_size / gateways * m("gateway_us_per_delivery")
    carried = messages * share(gateways, room_size, affinity) * m("fanout_us_per_message")
    return (deliveries + carried) / 1e6


def plan(room_size, affinity=None, connections=TARGET["connections"], messages=TARGET["messages_per_s"]):
    m, a = lambda n: value(MEASURED, n), lambda n: value(ASSUMED, n)
    head = a("core_headroom")
    budget = a("gateway_cores") * head
    per_conn_kib = m("gateway_kib_per_connection") + a("kernel_kib_per_connection")
    by_memory = math.ceil(connections * per_conn_kib / (a("gateway_memory_gib") * 1024 * 1024 * head))
    by_connections = math.ceil(connections / MAX_CONNECTIONS_PER_GATEWAY)
    # The fewest pods whose CPU fits, if any: without affinity every pod carries nearly
    # every message of big rooms, which no number of pods divides.
    gateways = next((g for g in range(max(2, by_memory, by_connections), 5001) if pod_cores(g, room_size, messages, affinity) <= budget),
                    None)
    shown = gateways or 5000
    k = share(shown, room_size, affinity) * shown
    redis_core_s = messages * (m("redis_us_per_message") + max(0.0, k - 2) * m("redis_us_per_push")) / 1e6
    pipelined = m("redis_us_per_next_seq") + m("redis_us_per_publish") + m("redis_us_per_directory_zadd")
    redis_best_core_s = messages * (pipelined + k * m("redis_us_per_push")) / 1e6
    persister_cores = messages * m("persister_us_per_message") / 1e6
    return {
        "room_size": room_size,
        "affinity": f"{affinity} pods per room" if affinity else "none",
        "deliveries_per_s": messages * room_size,
        "gateway_pods": gateways if gateways else "none fits",
        "pods_for_memory": by_memory,
        "pods_for_connections": by_connections,
        "pod_cores_used": round(pod_cores(shown, room_size, messages, affinity), 2),
        "pods_per_room": round(k, 1),
        "redis_cores": round(redis_core_s, 2),
        "redis_cores_pipelined_best_case": round(redis_best_core_s, 2),
        "redis_shards": max(1, math.ceil(redis_core_s / head)),
        "directory_shard_core_share": round(messages * m("redis_us_per_directory_zadd") / 1e6, 2),
        "persister_cores": round(persister_cores, 2),
        "persisters": max(2, math.ceil(persister_cores / head)),
        "mongo_docs_per_s": messages,
        "mongo_shards": math.ceil(messages / (a("mongo_docs_per_s_per_shard") * head)),
    }


def hot_room(members=100_000, messages=50):
    """One room with `members` members on every gateway, `messages` msgs/s into it."""
    per_task = value(MEASURED, "room_task_deliveries_per_s")
    gateways = math.ceil(members * messages / per_task)
    return {
        "members": members,
        "messages_per_s": messages,
        "deliveries_per_s": members * messages,
        "gateways_for_the_room_tasks": gateways,
        "members_per_gateway": math.ceil(members / gateways),
        "redis_pushes_per_s": messages * gateways,
        "redis_core_share": round(messages * (value(MEASURED, "redis_us_per_message")
                                              + gateways * value(MEASURED, "redis_us_per_push")) / 1e6, 3),
    }


def main():
    plans = [plan(10), plan(100), plan(10, affinity=2), plan(100, affinity=2)]
    hot = hot_room()
    if "--json" in sys.argv:
        print(json.dumps({"plans": plans, "hot_room": hot}, indent=2))
        return
    print("| for 1,000,000 connections, 100,000 msgs/s | " + " | ".join(
        f"rooms of {p['room_size']}, affinity {p['affinity']}" for p in plans) + " |")
    print("|---|" + "---:|" * len(plans))
    for key in plans[0]:
        if key not in ("room_size", "affinity"):
            cells = [f"{p[key]:,}" if isinstance(p[key], (int, float)) else str(p[key]) for p in plans]
            print(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    print()
    print("| hot room | |")
    print("|---|---:|")
    for key, v in hot.items():
        print(f"| {key.replace('_', ' ')} | {v:,} |")


if __name__ == "__main__":
    main()
