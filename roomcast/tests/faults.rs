//! The fault matrix: steady traffic from four clients (one on WebTransport, three on
//! `/ws`) on two gateways into one room, and one fault at a time, with real processes:
//! kill -9 of the persister, of a fanout and of a gateway, a Redis restart, and the
//! MongoDB-wire server stopped for ~5 s.
//!
//! After each fault every client joins again with `since` and must hold every acked
//! message exactly once, in room order; the store must hold every acked message; and
//! every send must end in an ack or an error within [`BOUND`], never silence. The table
//! this prints is the one in docs/RELIABILITY.md (also written to test-output/).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{rss_kib, Client, Stack};
use tokio::sync::{watch, Barrier};

const ROOM: &str = "matrix";
const DRIVERS: usize = 4;
/// The longest a send may wait for its ack or error: the gateway answers every send
/// within 15 s of receiving it (SEND_DEADLINE, docs/RELIABILITY.md), plus the way back.
/// A resend after a reconnect is a new send for the gateway, not for this clock.
const BOUND: Duration = Duration::from_secs(20);
const PACE: Duration = Duration::from_millis(200);
/// The store-outage burst: more writes at once than the persister holds (4 batches of 4 in
/// flight and a queue of 4), so that the overflow must be refused at once.
const BURST_CLIENTS: usize = 40;
const BURST_SENDS: usize = 2;

#[derive(Debug)]
struct Outcome {
    /// When the send was first sent (after a fault's start or not).
    sent_at: Instant,
    took: Duration,
    /// Ok((seq, id)) for an ack, Err(code) for an error.
    result: Result<(u64, String), String>,
}

#[derive(Default)]
struct Record {
    outcomes: Vec<Outcome>,
    /// (seq, id) of every message received, recovered or live, in arrival order.
    seen: Vec<(u64, String)>,
    reconnects: usize,
}

impl Record {
    fn last_seq(&self) -> u64 {
        self.seen.last().map_or(0, |(seq, _)| *seq)
    }

    fn take(&mut self, frame: &Value) {
        if frame["type"] == "message" && frame["room"] == ROOM {
            self.seen.push((frame["seq"].as_u64().expect("seq"), frame["id"].as_str().expect("id").to_owned()));
        }
    }
}

/// Connects to the first gateway that takes it, from `prefer` on, and joins with `since`
/// (page after page while `truncated`). None if nothing answered within BOUND.
async fn connect(urls: &[String], prefer: &mut usize, name: &str, record: &mut Record) -> Option<Client> {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        let url = &urls[*prefer % urls.len()];
        if let Ok(mut client) = Client::connect_query(url, name, &format!("user={name}")).await {
            if join(&mut client, record).await {
                return Some(client);
            }
        }
        *prefer += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Joins with `since` = the last seq seen; false when the connection ends first.
async fn join(client: &mut Client, record: &mut Record) -> bool {
    loop {
        client.send_json(json!({"type": "join", "room": ROOM, "since": record.last_seq()})).await;
        let joined = loop {
            match tokio::time::timeout(BOUND, client.next_frame()).await {
                Ok(Some(frame)) if frame["type"] == "joined" => break frame,
                Ok(Some(frame)) => record.take(&frame),
                _ => return false,
            }
        };
        for m in joined["messages"].as_array().expect("messages") {
            record.seen.push((m["seq"].as_u64().expect("seq"), m["id"].as_str().expect("id").to_owned()));
        }
        if joined["truncated"] != true {
            return true;
        }
    }
}

/// One client: sends every PACE, waits for each send's ack or error, reconnects (to the
/// other gateway if need be) and resends with the same client_id when its connection
/// ends. After `stop`, and once every driver stopped sending, joins once more with
/// `since` and reads what is left.
async fn drive(
    name: String,
    urls: Vec<String>,
    mut prefer: usize,
    stop: watch::Receiver<bool>,
    idle: Arc<Barrier>,
) -> Record {
    let mut record = Record::default();
    let mut client = connect(&urls, &mut prefer, &name, &mut record).await.expect("first connect");
    let mut n = 0;
    while !*stop.borrow() {
        let client_id = format!("{name}-{n}");
        n += 1;
        let sent_at = Instant::now();
        let result = loop {
            client.send("matrix", &format!("{client_id} says hi"), &client_id).await;
            let answer = loop {
                match tokio::time::timeout_at((sent_at + BOUND).into(), client.next_frame()).await {
                    Err(_) => break Some(Err("silence".to_owned())),
                    Ok(None) => break None,
                    Ok(Some(f)) if f["client_id"] == client_id.as_str() && f["type"] == "ack" => {
                        break Some(Ok((f["seq"].as_u64().expect("seq"), f["id"].as_str().expect("id").to_owned())))
                    }
                    Ok(Some(f)) if f["client_id"] == client_id.as_str() && f["type"] == "error" => {
                        break Some(Err(f["code"].as_str().unwrap_or("?").to_owned()))
                    }
                    Ok(Some(f)) => record.take(&f),
                }
            };
            match answer {
                Some(result) => break result,
                None => {
                    // The connection ended with the send unanswered: resend it elsewhere.
                    record.reconnects += 1;
                    prefer += 1;
                    client = connect(&urls, &mut prefer, &name, &mut record).await.expect("reconnect within BOUND");
                }
            }
        };
        record.outcomes.push(Outcome { sent_at, took: sent_at.elapsed(), result });
        tokio::time::sleep(PACE).await;
    }
    // Read what is in flight, then reconnect with `since`, as after any fault.
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(300), client.next_frame()).await {
        record.take(&frame);
    }
    idle.wait().await;
    client.close().await;
    let mut client = connect(&urls, &mut prefer, &name, &mut record).await.expect("final reconnect");
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(1), client.next_frame()).await {
        record.take(&frame);
    }
    client.close().await;
    record
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Persister,
    Fanout,
    Gateway,
    Redis,
    Mongo,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Persister => "kill -9 persister, restart",
            Fault::Fanout => "kill -9 fanout-0, restart",
            Fault::Gateway => "kill -9 gateway-1, clients move to gateway-0",
            Fault::Redis => "Redis restart (comes back empty)",
            Fault::Mongo => "MongoDB-wire server stopped ~5 s, started",
        }
    }
}

/// Injects the fault and heals it; returns when healed. Blocking process work runs with
/// `block_in_place`, so the drivers keep running on the other worker.
async fn inject(fault: Fault, stack: &mut Stack, burst_urls: &[String]) -> Vec<Outcome> {
    let mut burst = Vec::new();
    match fault {
        Fault::Persister => {
            tokio::task::block_in_place(|| stack.persister.kill());
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| stack.persister.start());
        }
        Fault::Fanout => {
            tokio::task::block_in_place(|| stack.fanouts[0].kill());
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| stack.fanouts[0].start());
        }
        Fault::Gateway => {
            tokio::task::block_in_place(|| stack.gateways[1].kill());
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| stack.gateways[1].start());
        }
        Fault::Redis => tokio::task::block_in_place(|| stack.redis().restart()),
        Fault::Mongo => {
            let down = Instant::now();
            tokio::task::block_in_place(|| stack.mongo.proc.terminate(Duration::from_secs(10)));
            // Meanwhile a burst fills the persister's bounded queue: the overflow must be
            // refused at once, not held in memory.
            let sends: Vec<_> = (0..BURST_CLIENTS)
                .map(|i| tokio::spawn(burst_sends(burst_urls[i % burst_urls.len()].clone(), i)))
                .collect();
            for s in sends {
                burst.extend(s.await.expect("burst"));
            }
            tokio::time::sleep_until((down + Duration::from_secs(5)).into()).await;
            tokio::task::block_in_place(|| {
                stack.mongo.proc.start();
                support::wait_port(stack.mongo.port, "secantusd-py", Duration::from_secs(60));
            });
        }
    }
    burst
}

/// BURST_SENDS sends at once on one connection, while the store is down; each must end in
/// an ack or an error within BOUND. A connection's sends are written one after another,
/// so the persister sees as many at once as there are connections.
async fn burst_sends(url: String, i: usize) -> Vec<Outcome> {
    let name = format!("burst{i}");
    let mut client = Client::connect(&url, &name).await;
    // The join's history cannot load while the store is down; sends are taken anyway.
    client.send_json(json!({"type": "join", "room": ROOM, "since": u64::MAX / 2})).await;
    let sent_at = Instant::now();
    for n in 0..BURST_SENDS {
        client.send(ROOM, "burst", &format!("{name}-{n}")).await;
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < BURST_SENDS {
        let f = tokio::time::timeout_at((sent_at + BOUND).into(), client.next_frame())
            .await
            .expect("every burst send is answered within BOUND")
            .expect("open");
        let result = match f["type"].as_str() {
            Some("ack") if f["client_id"].as_str().is_some_and(|id| id.starts_with(&name)) => {
                Ok((f["seq"].as_u64().expect("seq"), f["id"].as_str().expect("id").to_owned()))
            }
            Some("error") if f["client_id"].as_str().is_some_and(|id| id.starts_with(&name)) => {
                Err(f["code"].as_str().unwrap_or("?").to_owned())
            }
            _ => continue,
        };
        outcomes.push(Outcome { sent_at, took: sent_at.elapsed(), result });
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_each_fault() {
    let mut stack =
        Stack::start_with("faults", 2, &["--queue-capacity", "4", "--batch-size", "4", "--batches-in-flight", "4"]);
    let urls = vec![stack.ws_url(0), stack.ws_url(1)];
    // Driver 0 is on WebTransport, the others on /ws: the same room, the same contract.
    let wt_urls = vec![stack.wt_url(0), stack.wt_url(1)];
    let mut table = vec![
        "| fault | sent | acked | errored (codes) | lost | slowest answer | recovered after heal | persister RSS before / during / after the outage |".to_owned(),
        "|---|---:|---:|---|---:|---:|---:|---|".to_owned(),
    ];
    let mut acked_ever: HashMap<String, u64> = HashMap::new();
    for fault in [Fault::Persister, Fault::Fanout, Fault::Gateway, Fault::Redis, Fault::Mongo] {
        let (stop_tx, stop) = watch::channel(false);
        let idle = Arc::new(Barrier::new(DRIVERS));
        let drivers: Vec<_> = (0..DRIVERS)
            .map(|i| {
                let urls = if i == 0 { wt_urls.clone() } else { urls.clone() };
                tokio::spawn(drive(format!("{fault:?}{i}").to_lowercase(), urls, i, stop.clone(), idle.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_before = rss_kib(stack.persister.pid());
        let burst = inject(fault, &mut stack, &urls).await;
        let rss_during = rss_kib(stack.persister.pid());
        let healed = Instant::now();
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop_tx.send_replace(true);
        let mut records = Vec::new();
        for d in drivers {
            records.push(d.await.expect("driver"));
        }
        let rss_after = rss_kib(stack.persister.pid());

        let outcomes: Vec<&Outcome> = records.iter().flat_map(|r| &r.outcomes).chain(&burst).collect();
        for o in &outcomes {
            assert!(o.took <= BOUND + Duration::from_secs(1), "{fault:?}: a send waited {:?} for its answer", o.took);
            assert_ne!(
                o.result.as_ref().err().map(String::as_str),
                Some("silence"),
                "{fault:?}: a send was never answered"
            );
        }
        for o in &outcomes {
            if let Ok((seq, id)) = &o.result {
                acked_ever.insert(id.clone(), *seq);
            }
        }
        // Every client holds every acked message, once, in room order.
        let mut lost: HashSet<String> = HashSet::new();
        for (i, r) in records.iter().enumerate() {
            let seqs: Vec<u64> = r.seen.iter().map(|(s, _)| *s).collect();
            if let Some(w) = seqs.windows(2).position(|w| w[0] >= w[1]) {
                panic!(
                    "{fault:?}: driver {i} saw seq {} after {} (twice or out of order): {:?}",
                    seqs[w + 1],
                    seqs[w],
                    &seqs[w.saturating_sub(3)..(w + 4).min(seqs.len())]
                );
            }
            let ids: HashSet<&String> = r.seen.iter().map(|(_, id)| id).collect();
            lost.extend(acked_ever.keys().filter(|id| !ids.contains(id)).cloned());
        }
        // The store holds every acked message.
        let stored: HashSet<String> = stack.stored_ids(ROOM).await.into_iter().collect();
        lost.extend(acked_ever.keys().filter(|id| !stored.contains(*id)).cloned());

        let acked = outcomes.iter().filter(|o| o.result.is_ok()).count();
        let mut codes: Vec<String> = outcomes.iter().filter_map(|o| o.result.as_ref().err().cloned()).collect();
        codes.sort();
        codes.dedup();
        let errored = outcomes.len() - acked;
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        let recovered = outcomes
            .iter()
            .filter(|o| o.result.is_ok() && o.sent_at >= healed)
            .map(|o| o.sent_at + o.took - healed)
            .min()
            .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        let rss = match fault {
            Fault::Mongo => format!("{} / {} / {} MiB", rss_before / 1024, rss_during / 1024, rss_after / 1024),
            _ => "".to_owned(),
        };
        let row = format!(
            "| {} | {} | {acked} | {errored} ({}) | {} | {:.1} s | {recovered} | {rss} |",
            fault.describe(),
            outcomes.len(),
            if codes.is_empty() { "none".to_owned() } else { codes.join(", ") },
            lost.len(),
            slowest.as_secs_f64(),
        );
        println!("{row}");
        table.push(row);
        assert!(lost.is_empty(), "{fault:?}: acked messages lost: {lost:?}");
        assert!(acked > 0 && recovered != "never", "{fault:?}: traffic never recovered");
        assert!(
            codes.iter().all(|c| c == "unavailable" || c == "timeout"),
            "{fault:?}: unexpected error codes {codes:?}"
        );
        if let Fault::Mongo = fault {
            assert!(rss_after < rss_before + 32 * 1024, "persister RSS grew from {rss_before} to {rss_after} KiB");
            let rejected =
                support::metric(stack.metrics_ports["persister"], "roomcast_persister_queue_rejections_total");
            println!("store outage: the persister's full queue refused {rejected} writes at once");
            assert!(rejected > 0.0, "the bounded queue refused the overflow of the burst at once");
        }
    }
    let out = support::log_dir().join("../reliability.md");
    std::fs::write(&out, table.join("\n") + "\n").expect("write test-output/reliability.md");
    println!("{}", table.join("\n"));
}
