//! The broker on a Redis Cluster (3 primaries, 3 replicas, real `redis-server`s): the
//! contract across two gateways with rooms on every shard, a primary killed with
//! `kill -9` under traffic, and a cluster that speaks only TLS.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric, Client, RedisCluster, RedisSetup, Stack};

/// One room per shard: room names whose channel's slot falls on each primary.
fn room_per_shard(cluster: &RedisCluster, test: &str) -> Vec<(String, usize)> {
    let mut rooms: Vec<(String, usize)> = Vec::new();
    for n in 0..200 {
        let room = format!("{test}-{n}");
        let primary = cluster.primary_of(cluster.slot(&format!("roomcast:room:{{{room}}}")));
        if rooms.iter().all(|(_, p)| *p != primary) {
            rooms.push((room, primary));
        }
        if rooms.len() == 3 {
            return rooms;
        }
    }
    panic!("no room names found on all three shards: {rooms:?}");
}

/// Subscribers of `channel` on the primary `node`, from its PUBSUB SHARDNUMSUB.
fn shard_subscribers(cluster: &RedisCluster, node: usize, channel: &str) -> u64 {
    let reply = cluster.nodes[node].cli(&["PUBSUB", "SHARDNUMSUB", channel]);
    reply.lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_with_rooms_on_every_shard() {
    let cluster = RedisCluster::start("cluster-contract");
    let rooms = room_per_shard(&cluster, "shard");
    let stack = Stack::start_on("cluster-contract", 2, RedisSetup::Cluster(cluster));
    let RedisSetup::Cluster(cluster) = &stack.broker else { unreachable!() };

    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = Client::connect(&stack.ws_url(i % 2), &format!("user{i}")).await;
        for (room, _) in &rooms {
            assert!(client.join(room, None).await.is_empty(), "a new room has no history");
        }
        clients.push(client);
    }
    // Both fanouts hold each room's sharded channel on the primary that owns its slot
    // (subscribing runs beside the joins' answers: wait for it).
    for (room, primary) in &rooms {
        let channel = format!("roomcast:room:{{{room}}}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while shard_subscribers(cluster, *primary, &channel) != 2 {
            assert!(Instant::now() < deadline, "{channel} on node {primary}: not 2 subscribers");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let per_room = 8;
    let mut tasks = Vec::new();
    for mut client in clients {
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_room {
                for (room, _) in &rooms {
                    client.send(room, &format!("{} {n}", client.user), &format!("{}-{room}-{n}", client.user)).await;
                }
            }
            for (room, _) in &rooms {
                for n in 0..per_room {
                    let id = format!("{}-{room}-{n}", client.user);
                    client.wait_for(|f| f["type"] == "ack" && f["client_id"] == id.as_str()).await;
                }
                client.wait_messages(room, 4 * per_room).await;
            }
            client.settle(Duration::from_millis(500)).await;
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }
    let acked: HashSet<String> =
        clients.iter().flat_map(|c| c.acks()).filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(acked.len(), 4 * 3 * per_room, "every send acked once");
    for (room, _) in &rooms {
        let reference = clients[0].ordered_ids(room);
        assert_eq!(reference.len(), 4 * per_room, "{room}");
        for client in &clients {
            assert!(client.errors().is_empty(), "{}: {:?}", client.user, client.errors());
            assert_eq!(client.ordered_ids(room), reference, "{} saw another order in {room}", client.user);
        }
        let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
        assert!(reference.iter().all(|id| stored.contains(id)), "{room}: delivered but not stored");
    }

    // Recovery: a client away while 2 messages per room are sent gets exactly those.
    let away = clients.pop().expect("a client");
    let last: HashMap<String, u64> =
        rooms.iter().map(|(room, _)| (room.clone(), away.messages(room).last().expect("a message").0)).collect();
    away.close().await;
    for (room, _) in &rooms {
        for n in 0..2 {
            clients[0].send(room, &format!("late {n}"), &format!("late-{room}-{n}")).await;
        }
        clients[0].wait_messages(room, 4 * per_room + 2).await;
    }
    let mut back = Client::connect(&stack.ws_url(1), "user3").await;
    for (room, _) in &rooms {
        let missed = back.join(room, Some(last[room])).await;
        let texts: Vec<&str> = missed.iter().filter_map(|m| m["text"].as_str()).collect();
        assert_eq!(texts, ["late 0", "late 1"], "{room}: exactly the missed messages");
    }

    // The directory (a sorted set in one slot, presence hashes in each room's) counts the
    // members on both gateways, once the rejoined user's presence is announced (every
    // 250 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        back.send_json(json!({"type": "rooms"})).await;
        let page = back.wait_for(|f| f["type"] == "rooms").await;
        back.frames.retain(|f| f["type"] != "rooms");
        let members = |room: &str| {
            let listed = page["rooms"].as_array().and_then(|all| all.iter().find(|r| r["room"] == room));
            listed.map(|r| r["members"].clone())
        };
        if rooms.iter().all(|(room, _)| members(room) == Some(json!(4))) {
            break;
        }
        assert!(Instant::now() < deadline, "the directory never counted 4 members in every room: {page}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_a_cluster_that_speaks_only_tls() {
    let cluster = RedisCluster::start_tls("cluster-tls");
    let rooms = room_per_shard(&cluster, "tls");
    let stack = Stack::start_on("cluster-tls", 2, RedisSetup::Cluster(cluster));
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    for (room, _) in &rooms {
        ada.join(room, None).await;
        bob.join(room, None).await;
        for n in 0..3 {
            ada.send(room, &format!("a{n}"), &format!("a-{room}-{n}")).await;
            bob.send(room, &format!("b{n}"), &format!("b-{room}-{n}")).await;
        }
    }
    for (room, _) in &rooms {
        ada.wait_messages(room, 6).await;
        bob.wait_messages(room, 6).await;
        assert_eq!(ada.messages(room), bob.messages(room), "{room}: one order on both gateways");
        let seqs: Vec<u64> = ada.messages(room).iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "{room}: seqs from its shard's counter");
        let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
        assert!(ada.messages(room).iter().all(|(_, id)| stored.contains(id)), "{room}: every message stored");
    }
    assert!(ada.errors().is_empty() && bob.errors().is_empty(), "{:?} {:?}", ada.errors(), bob.errors());
}

/// One send's outcome, as its client saw it.
struct Outcome {
    room: String,
    sent_at: Instant,
    answered_at: Instant,
    result: Result<String, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_is_replaced_and_nothing_acked_is_lost() {
    let cluster = RedisCluster::start("cluster-failover");
    let rooms = room_per_shard(&cluster, "failover");
    let mut stack = Stack::start_on("cluster-failover", 2, RedisSetup::Cluster(cluster));
    let victim_room = rooms[0].0.clone();
    let victim = rooms[0].1;

    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = Client::connect(&stack.ws_url(i % 2), &format!("user{i}")).await;
        for (room, _) in &rooms {
            client.join(room, None).await;
        }
        clients.push(client);
    }
    // Each client sends one message at a time, round the rooms, and waits for its answer,
    // until told to stop: 4 s after the failover is seen, so that the failed shard's room
    // takes sends again however slow this machine is.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for mut client in clients {
        let rooms: Vec<String> = rooms.iter().map(|(room, _)| room.clone()).collect();
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !*stopped.borrow() {
                let room = rooms[n % rooms.len()].clone();
                let id = format!("{}-{n}", client.user);
                let sent_at = Instant::now();
                client.send(&room, "x", &id).await;
                let answer = client.wait_for(|f| f["client_id"] == id.as_str()).await;
                let result = match answer["type"].as_str() {
                    Some("ack") => Ok(answer["id"].as_str().unwrap_or_default().to_owned()),
                    _ => Err(answer["code"].as_str().unwrap_or("?").to_owned()),
                };
                outcomes.push(Outcome { room, sent_at, answered_at: Instant::now(), result });
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (client, outcomes)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    let RedisSetup::Cluster(cluster) = &mut stack.broker else { unreachable!() };
    cluster.nodes[victim].proc.kill();
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(30)));
    let promoted_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop.send(true);

    let mut clients = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for task in tasks {
        let (client, mine) = task.await.expect("client task");
        clients.push(client);
        outcomes.extend(mine);
    }
    // Every send was answered (wait_for panics after its bound otherwise); errors only on
    // the shard that failed.
    let errors: Vec<(&str, &str)> =
        outcomes.iter().filter_map(|o| o.result.as_ref().err().map(|code| (o.room.as_str(), code.as_str()))).collect();
    assert!(errors.iter().all(|(room, _)| *room == victim_room), "errors on healthy shards: {errors:?}");
    assert!(
        errors.iter().all(|(_, code)| ["unavailable", "timeout"].contains(code)),
        "failover errors are unavailable or timeout: {errors:?}"
    );
    // Recovery: from the kill to the first ack of a send sent after it, on the failed shard.
    let recovered_after = outcomes
        .iter()
        .filter(|o| o.room == victim_room && o.sent_at > killed_at && o.result.is_ok())
        .map(|o| o.answered_at.duration_since(killed_at))
        .min()
        .expect("the failed shard's room takes sends again after the failover");
    let longest = outcomes.iter().map(|o| o.answered_at.duration_since(o.sent_at)).max().unwrap_or_default();

    // Nothing acked is lost: stored, and delivered to everyone once, in one order, with
    // the gap the failover left filled from the store.
    let acked: HashMap<String, Vec<String>> = outcomes.iter().fold(HashMap::new(), |mut acked, o| {
        if let Ok(id) = &o.result {
            acked.entry(o.room.clone()).or_default().push(id.clone());
        }
        acked
    });
    for (room, _) in &rooms {
        let ids = acked.get(room).cloned().unwrap_or_default();
        let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
        let lost: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(lost.is_empty(), "{room}: acked but not stored: {lost:?}");
        for client in &mut clients {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ids.iter().any(|id| !client.messages(room).iter().any(|(_, m)| m == id)) {
                assert!(Instant::now() < deadline, "{}: acked messages of {room} never arrived", client.user);
                client.settle(Duration::from_millis(300)).await;
            }
        }
        let reference = clients[0].ordered_ids(room);
        for client in &clients {
            assert_eq!(client.ordered_ids(room), reference, "{} saw another order in {room}", client.user);
        }
    }
    // Each fanout counted its subscriptions coming back, as a reconnect.
    for i in 0..2 {
        let reconnects = metric(stack.metrics_ports[&format!("fanout-{i}")], "roomcast_fanout_redis_reconnects_total");
        assert!(reconnects >= 1.0, "fanout-{i} counted {reconnects} reconnects");
    }
    let acks: usize = acked.values().map(Vec::len).sum();
    println!(
        "failover: kill -9 of a primary; its shard's room acked again {:.1} s after (CLUSTER SLOTS showed the \
         promoted replica after {:.1} s); longest send {:.1} s; {} sends, {acks} acked, {} errors, all on the failed \
         shard: {:?}",
        recovered_after.as_secs_f64(),
        promoted_after.as_secs_f64(),
        longest.as_secs_f64(),
        outcomes.len(),
        errors.len(),
        errors.iter().map(|(_, code)| *code).collect::<HashSet<_>>(),
    );
}
