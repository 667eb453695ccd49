//! The persister on a replica-set URI with retryable writes, as production's MongoDB
//! (Atlas, or a self-run replica set) is reached. The MongoDB-wire server here is one
//! node that advertises itself as the primary of the replica set `secantus`: the driver
//! takes the replica-set path (discovery by set name, retryable writes, majority write
//! concern), but no election or failover can be tested (docs/SCALING.md).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::{bin, free_port, http_get, log_dir, Client, Mongo, Proc, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persister_works_on_a_replica_set_uri_with_retryable_writes() {
    let uri = "mongodb://{mongo}/?replicaSet=secantus&retryWrites=true&w=majority";
    let stack = Stack::start_with("mongo-rs", 2, &["--mongodb", uri]);
    let room = "replica-set";
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    ada.join(room, None).await;
    bob.join(room, None).await;
    for n in 0..10 {
        ada.send(room, &format!("m{n}"), &format!("c{n}")).await;
    }
    let first = ada.wait_for(|f| f["type"] == "ack" && f["client_id"] == "c0").await;
    // The same client send again: a retried write is stored once, and acked as the first.
    ada.frames.retain(|f| f["client_id"] != "c0");
    ada.send(room, "m0", "c0").await;
    let again = ada.wait_for(|f| f["type"] == "ack" && f["client_id"] == "c0").await;
    assert_eq!((&again["id"], &again["seq"]), (&first["id"], &first["seq"]), "the resend is the first copy");
    bob.wait_messages(room, 10).await;
    bob.settle(Duration::from_millis(500)).await;
    assert_eq!(bob.messages(room).len(), 10, "ten messages, the resend not among them");
    let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
    assert_eq!(stored.len(), 10);
    assert!(bob.messages(room).iter().all(|(_, id)| stored.contains(id)), "every delivered message is stored");
}

#[test]
fn a_replica_set_name_that_does_not_match_is_never_written_to() {
    // The driver checks the set name the server reports: under another name it finds no
    // primary, so the persister cannot even create its indexes and never turns ready.
    let mongo = Mongo::start("mongo-rs-wrong-mongo");
    let (port, metrics) = (free_port(), free_port());
    let log = log_dir().join("mongo-rs-wrong-persister.log");
    let _ = std::fs::remove_file(&log);
    let uri = format!("mongodb://127.0.0.1:{}/?replicaSet=another&serverSelectionTimeoutMS=1000", mongo.port);
    let _persister = Proc::spawn(
        "mongo-rs-wrong-persister",
        &bin("persister"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--mongodb",
            &uri,
        ]
        .map(String::from),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cannot create indexes yet") {
            break;
        }
        assert!(Instant::now() < deadline, "the persister did not report the missing primary:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http_get(metrics, "/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "not ready without a primary: {body}");
}
