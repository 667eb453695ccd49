//! Send budgets shared across connections and gateways (kept in Redis): one user with
//! five connections on two gateways spends one budget, and one busy room cannot take
//! more than its own, whoever sends.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{metric, Client, Stack};

/// The answers to every send a client made: (acked, refused with rate_limited).
async fn answers(client: &mut Client, sent: usize) -> (Vec<Value>, Vec<Value>) {
    client.wait_for_count(|f| (f["type"] == "ack" || f["type"] == "error") && f.get("client_id").is_some(), sent).await;
    let acked = client.acks();
    let refused: Vec<Value> = client.errors().into_iter().filter(|e| e.get("client_id").is_some()).collect();
    for error in &refused {
        assert_eq!(error["code"], "rate_limited", "{}: {error}", client.user);
    }
    (acked, refused)
}

fn limited(stack: &Stack, scope: &str) -> f64 {
    (0..2)
        .map(|i| {
            metric(
                stack.metrics_ports[&format!("gateway-{i}")],
                &format!("roomcast_gateway_rate_limited_total{{scope=\"{scope}\"}}"),
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_five_connections_and_two_gateways_spends_one_budget() {
    let args = ["--user-sends-per-second", "2", "--user-send-burst", "5", "--room-sends-per-second", "0"];
    let stack = Stack::start_gateways_with("budget-user", 2, &args);
    let mut tabs = Vec::new();
    for i in 0..5 {
        let mut tab = Client::connect(&stack.ws_url(i % 2), "ada").await;
        tab.join("lobby", None).await;
        tabs.push(tab);
    }
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    bob.join("lobby", None).await;
    // 4 sends per tab, 20 in all: each tab is far below its own 20 frames per second.
    let started = Instant::now();
    for round in 0..4 {
        for (i, tab) in tabs.iter_mut().enumerate() {
            tab.send("lobby", &format!("tab {i} send {round}"), &format!("t{i}-{round}")).await;
        }
    }
    let (mut acked, mut refused) = (0, Vec::new());
    for tab in &mut tabs {
        let (a, r) = answers(tab, 4).await;
        acked += a.len();
        refused.extend(r);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, plus what the rate refilled meanwhile, and one for rounding.
    let most = 5.0 + 2.0 * elapsed + 1.0;
    assert!(acked >= 5 && (acked as f64) <= most, "{acked} acked in {elapsed:.2} s: one budget of 5 + 2/s");
    assert_eq!(acked + refused.len(), 20, "every send answered once");
    assert!(refused.iter().all(|e| e["message"].as_str().is_some_and(|m| m.contains("across all your connections"))));
    assert_eq!(limited(&stack, "user"), refused.len() as f64, "counted by scope");
    // Another user's budget is untouched, and the budget refills.
    bob.send("lobby", "mine is my own", "b1").await;
    let (acked, refused) = answers(&mut bob, 1).await;
    assert_eq!((acked.len(), refused.len()), (1, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tabs[0].send("lobby", "later", "t0-later").await;
    tabs[0].wait_for(|f| f["type"] == "ack" && f["client_id"] == "t0-later").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_is_held_to_its_budget_whoever_sends_and_other_rooms_are_not() {
    let args = ["--room-sends-per-second", "2", "--room-send-burst", "6"];
    let stack = Stack::start_gateways_with("budget-room", 2, &args);
    let mut senders = Vec::new();
    for (i, user) in ["ann", "ben", "cat", "dan"].into_iter().enumerate() {
        let mut client = Client::connect(&stack.ws_url(i % 2), user).await;
        client.join("hot", None).await;
        client.join("calm", None).await;
        senders.push(client);
    }
    let started = Instant::now();
    for round in 0..4 {
        for client in senders.iter_mut() {
            let id = format!("{}-{round}", client.user);
            client.send("hot", "busy", &id).await;
        }
    }
    let (mut acked, mut refused) = (0, Vec::new());
    for client in &mut senders {
        let (a, r) = answers(client, 4).await;
        acked += a.len();
        refused.extend(r);
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(acked >= 6 && (acked as f64) <= 6.0 + 2.0 * elapsed + 1.0, "{acked} acked in {elapsed:.2} s");
    assert_eq!(acked + refused.len(), 16);
    assert!(refused
        .iter()
        .all(|e| e["message"].as_str().is_some_and(|m| m.starts_with("room hot is over its budget"))));
    assert_eq!(limited(&stack, "room"), refused.len() as f64);
    senders[0].send("calm", "elsewhere", "calm-1").await;
    senders[0].wait_for(|f| f["type"] == "ack" && f["client_id"] == "calm-1").await;
}
