//! The contract, end to end, against real processes: gateways, fanouts and a persister
//! over a real Redis and a real MongoDB-wire server.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use support::{Client, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_every_message_once_in_one_order_and_store_it() {
    let stack = Stack::start("order", 2);
    let room = "lobby";
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = Client::connect(&stack.ws_url(i % 2), &format!("user{i}")).await;
        assert!(client.join(room, None).await.is_empty(), "a new room has no history");
        clients.push(client);
    }
    // Every client publishes at once, so the two gateways race to publish into one room.
    let per_client = 25;
    let mut tasks = Vec::new();
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                client.send(room, &format!("{} says {n}", client.user), &format!("{}-{n}", client.user)).await;
            }
            for n in 0..per_client {
                let id = format!("{}-{n}", client.user);
                client.wait_for(|f| f["type"] == "ack" && f["client_id"] == id.as_str()).await;
            }
            client.wait_messages(room, 4 * per_client).await;
            client.settle(Duration::from_millis(500)).await;
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }

    let reference = clients[0].ordered_ids(room);
    assert_eq!(reference.len(), 4 * per_client);
    let mut acked = HashSet::new();
    for client in &clients {
        assert!(client.errors().is_empty(), "{} got errors: {:?}", client.user, client.errors());
        assert_eq!(client.ordered_ids(room), reference, "{} saw another order", client.user);
        for ack in client.acks() {
            acked.insert(ack["id"].as_str().expect("ack id").to_owned());
        }
    }
    assert_eq!(acked.len(), 4 * per_client, "every send was acked once");
    assert_eq!(reference.iter().cloned().collect::<HashSet<_>>(), acked, "delivered == acked");
    let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
    assert!(acked.is_subset(&stored), "acked but not in MongoDB: {:?}", acked.difference(&stored).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gives_history_and_since_recovers_exactly_what_was_missed() {
    let stack = Stack::start("recovery", 2);
    let room = "history-room";
    let mut alice = Client::connect(&stack.ws_url(0), "alice").await;
    alice.join(room, None).await;
    for n in 0..10 {
        alice.send(room, &format!("m{n}"), &format!("a{n}")).await;
    }
    alice.wait_messages(room, 10).await;

    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    let history = bob.join(room, None).await;
    let texts: Vec<&str> = history.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, (0..10).map(|n| format!("m{n}")).collect::<Vec<_>>(), "history on join, oldest first");
    let last_seen = history.last().and_then(|m| m["seq"].as_u64()).expect("last seq");
    bob.close().await;

    for n in 10..15 {
        alice.send(room, &format!("m{n}"), &format!("a{n}")).await;
    }
    alice.wait_messages(room, 15).await;

    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    let missed = bob.join(room, Some(last_seen)).await;
    let texts: Vec<&str> = missed.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, (10..15).map(|n| format!("m{n}")).collect::<Vec<_>>(), "exactly the missed messages");
    alice.send(room, "live", "a-live").await;
    bob.wait_messages(room, 1).await;
    bob.settle(Duration::from_millis(500)).await;
    let live: Vec<u64> = bob.messages(room).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(live, vec![last_seen + 6], "the next live message once, after the recovered ones");

    // Older pages through history.
    bob.send_json(json!({"type": "history", "room": room, "before": last_seen - 4, "limit": 3})).await;
    let page = bob.wait_for(|f| f["type"] == "history").await;
    let seqs: Vec<u64> =
        page["messages"].as_array().expect("messages").iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![last_seen - 7, last_seen - 6, last_seen - 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acked_message() {
    let mut stack = Stack::start("redis-restart", 2);
    let room = "weather";
    let mut writer = Client::connect(&stack.ws_url(0), "writer").await;
    let mut reader = Client::connect(&stack.ws_url(1), "reader").await;
    writer.join(room, None).await;
    reader.join(room, None).await;

    let mut acked = HashSet::new();
    let mut sent = 0;
    for phase in 0..3 {
        if phase == 1 {
            stack.redis().restart();
        }
        for n in 0..10 {
            let client_id = format!("w{phase}-{n}");
            // Retry with the same client_id until acked: an error is allowed while Redis
            // is down, a loss is not.
            for _attempt in 0..60 {
                writer.send(room, &format!("phase {phase} #{n}"), &client_id).await;
                let reply = writer
                    .wait_for(|f| f["client_id"] == client_id.as_str() && (f["type"] == "ack" || f["type"] == "error"))
                    .await;
                writer.frames.retain(|f| !(f["client_id"] == client_id.as_str() && f["type"] == "error"));
                if reply["type"] == "ack" {
                    acked.insert(reply["id"].as_str().expect("id").to_owned());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            sent += 1;
        }
    }
    assert_eq!(acked.len(), sent, "every send was eventually acked");

    // A client that reconnects with since=0 recovers every acked message once, in order:
    // in its `joined`, or live right after it while its gateway still catches the room up
    // from the store (pub/sub dropped what was published while Redis was away).
    let mut late = Client::connect(&stack.ws_url(1), "late").await;
    let mut recovered: Vec<(u64, String)> = late
        .join(room, Some(0))
        .await
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["id"].as_str().expect("id").to_owned()))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !acked.iter().all(|id| recovered.iter().chain(&late.messages(room)).any(|(_, m)| m == id)) {
        assert!(std::time::Instant::now() < deadline, "acked messages never reached the reconnected client");
        late.settle(Duration::from_millis(200)).await;
    }
    late.settle(Duration::from_millis(500)).await;
    recovered.extend(late.messages(room));
    for pair in recovered.windows(2) {
        assert!(pair[0].0 < pair[1].0, "recovered out of order or twice: {:?} then {:?}", pair[0], pair[1]);
    }
    let recovered: HashSet<String> = recovered.into_iter().map(|(_, id)| id).collect();
    assert!(
        acked.is_subset(&recovered),
        "missing after Redis restart: {:?}",
        acked.difference(&recovered).collect::<Vec<_>>()
    );

    // The live reader also ends up with every acked message exactly once, in order:
    // the fanout resubscribed and the gateway filled what pub/sub dropped.
    reader.wait_messages(room, acked.len()).await;
    reader.settle(Duration::from_millis(500)).await;
    let live: HashSet<String> = reader.ordered_ids(room).into_iter().collect();
    assert_eq!(live, acked);
    let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
    assert!(acked.is_subset(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_drain_closes_with_1012_and_clients_recover_elsewhere() {
    let mut stack = Stack::start("drain", 2);
    let room = "drain-room";
    let mut writer = Client::connect(&stack.ws_url(1), "writer").await;
    writer.join(room, None).await;
    let mut leaving = Client::connect(&stack.ws_url(0), "leaving").await;
    leaving.join(room, None).await;

    for n in 0..5 {
        writer.send(room, &format!("before {n}"), &format!("b{n}")).await;
    }
    leaving.wait_messages(room, 5).await;
    let last = leaving.messages(room).last().map(|(seq, _)| *seq).expect("seq");

    let pid = stack.gateways[0].pid();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    // Traffic goes on during the drain.
    for n in 0..5 {
        writer.send(room, &format!("during {n}"), &format!("d{n}")).await;
    }
    assert_eq!(leaving.wait_close().await, Some(1012), "drained clients are told to reconnect");
    let exit = stack.gateways[0].terminate(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "the gateway exits cleanly after draining");

    for n in 0..10 {
        let id = if n < 5 { format!("b{n}") } else { format!("d{}", n - 5) };
        writer.wait_for(|f| f["type"] == "ack" && f["client_id"] == id.as_str()).await;
    }
    let mut back = Client::connect(&stack.ws_url(1), "leaving").await;
    let missed = back.join(room, Some(last)).await;
    let texts: Vec<&str> = missed.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, (0..5).map(|n| format!("during {n}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_writes_are_idempotent() {
    use persister::{Archive, PersisterClient, StoreError};
    use roomcast_proto::ChatMessage;

    let stack = Stack::start("idempotent", 0);
    support::wait_port(stack.persister_port, "persister", Duration::from_secs(30));
    let archive = PersisterClient::new(&stack.persister_url()).expect("client");
    let msg = ChatMessage {
        room: "idem".into(),
        seq: 1,
        id: "01-first".into(),
        user: "u".into(),
        text: "hello".into(),
        ts: 1,
        client_id: "c1".into(),
        ..Default::default()
    };
    let mut first = None;
    for _ in 0..100 {
        match archive.write(msg.clone()).await {
            Ok(written) => {
                first = Some(written);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await, // persister still starting
        }
    }
    let first = first.expect("first write");
    assert!(!first.duplicate);
    // The same write retried (e.g. after a timeout) is stored once.
    let again = archive.write(msg.clone()).await.expect("retry");
    assert_eq!((again.stored.id.as_str(), again.duplicate), ("01-first", false));
    // The same client send under a new id and seq: the first copy wins, seq 2 is sealed.
    let resent = ChatMessage { seq: 2, id: "02-resent".into(), ..msg.clone() };
    let dup = archive.write(resent).await.expect("resend");
    assert!(dup.duplicate);
    assert_eq!((dup.stored.id.as_str(), dup.stored.seq), ("01-first", 1));
    // Another message cannot take seq 1.
    let other = ChatMessage { id: "03-other".into(), client_id: "c2".into(), ..msg };
    assert!(matches!(archive.write(other).await, Err(StoreError::Conflict)));

    assert_eq!(stack.stored_ids("idem").await, vec!["01-first".to_owned()]);
    let resolved = archive.resolve("idem", 1, 3).await.expect("resolve");
    let shape: Vec<(u64, bool)> = resolved.iter().map(|m| (m.seq, m.tombstone)).collect();
    assert_eq!(shape, vec![(1, false), (2, true), (3, true)], "holes are sealed");
    assert_eq!(archive.max_seq("idem").await.expect("max"), 3);
}
