//! Version skew, as during a rolling upgrade or a rollback: this commit's gateways
//! against the fanout and persister of the previous release (named in
//! scripts/previous-release, built by scripts/build-previous-release.sh) still keep the
//! contract: every message acked and stored once, delivered once in one order, and
//! recovered by `since`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{Client, Stack, SETUP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_gateway_keeps_the_contract_with_the_previous_release_upstreams() {
    let dir = std::env::var_os("ROOMCAST_PREVIOUS_RELEASE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("ROOMCAST_PREVIOUS_RELEASE_BIN (the previous release's binaries) is not set: {SETUP}")
    });
    let stack = Stack::start_skewed("skew", 2, &dir);
    let room = "skew";
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    ada.join(room, None).await;
    bob.join(room, None).await;
    for n in 0..10 {
        let (client, id) = if n % 2 == 0 { (&mut ada, format!("a{n}")) } else { (&mut bob, format!("b{n}")) };
        client.send(room, &format!("message {n}"), &id).await;
        let ack =
            client.wait_for(|f| f["client_id"] == id.as_str() && (f["type"] == "ack" || f["type"] == "error")).await;
        assert_eq!(ack["type"], "ack", "send {n} through the skewed stack: {ack}");
    }
    ada.wait_messages(room, 10).await;
    bob.wait_messages(room, 10).await;
    let order = |c: &Client| c.messages(room).into_iter().map(|(seq, _)| seq).collect::<Vec<_>>();
    assert_eq!(order(&ada), order(&bob), "one order on both gateways");
    assert!(order(&ada).windows(2).all(|w| w[0] < w[1]), "strictly increasing: {:?}", order(&ada));
    assert_eq!(stack.stored_ids(room).await.len(), 10, "each message stored once");

    // A client that was away recovers exactly what it missed.
    let seen = order(&bob)[4];
    bob.close().await;
    for n in 10..13 {
        ada.send(room, &format!("message {n}"), &format!("a{n}")).await;
    }
    ada.wait_messages(room, 13).await;
    let mut back = Client::connect(&stack.ws_url(1), "bob").await;
    let missed = back.join(room, Some(seen)).await;
    assert_eq!(missed.len(), 13 - 5, "messages after seq {seen}: {missed:?}");
    back.settle(Duration::from_millis(300)).await;
}
