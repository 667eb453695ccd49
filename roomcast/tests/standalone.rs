//! The one-process `roomcast`: embedded broker and store, history kept across restarts,
//! the web page served, and bad input answered without hurting anyone else.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{http_get, start_roomcast, Client, Proc};
use tokio_tungstenite::tungstenite::Message;

fn start(dir: &std::path::Path, name: &str) -> (Proc, u16) {
    let (proc, port, _) = start_roomcast(name, dir, &[]);
    (proc, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_the_page_and_keeps_history_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut proc, port) = start(dir.path(), "standalone-1");
    let (status, page) = http_get(port, "/").expect("GET /");
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("/ws"), "the web client is served at /");

    let base = format!("ws://127.0.0.1:{port}");
    let mut ann = Client::connect(&base, "ann").await;
    let mut ben = Client::connect(&base, "ben").await;
    ann.join("general", None).await;
    ben.join("general", None).await;
    for n in 0..5 {
        ann.send("general", &format!("hello {n}"), &format!("c{n}")).await;
    }
    ben.wait_messages("general", 5).await;
    ann.wait_for(|f| f["type"] == "ack" && f["client_id"] == "c4").await;
    assert!(proc.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean exit on SIGTERM");

    let (_proc, port) = start(dir.path(), "standalone-2");
    let base = format!("ws://127.0.0.1:{port}");
    let mut ann = Client::connect(&base, "ann").await;
    let history = ann.join("general", None).await;
    let texts: Vec<&str> = history.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, (0..5).map(|n| format!("hello {n}")).collect::<Vec<_>>());
    // The counter is re-seeded from the store: numbering continues.
    ann.send("general", "after restart", "c5").await;
    let ack = ann.wait_for(|f| f["type"] == "ack" && f["client_id"] == "c5").await;
    assert_eq!(ack["seq"], history.last().expect("history")["seq"].as_u64().expect("seq") + 1);
    ann.wait_messages("general", 1).await;
    // A repeated client_id (a resend after a lost ack) is stored once, acked with the
    // first copy, and not delivered again.
    ann.frames.clear();
    ann.send("general", "after restart", "c5").await;
    let again = ann.wait_for(|f| f["type"] == "ack" && f["client_id"] == "c5").await;
    assert_eq!((&again["seq"], &again["id"]), (&ack["seq"], &ack["id"]));
    ann.send("general", "next", "c6").await;
    ann.wait_messages("general", 1).await;
    let texts: Vec<String> =
        ann.frames.iter().filter(|f| f["type"] == "message").map(|f| f["text"].to_string()).collect();
    assert_eq!(texts, vec!["\"next\"".to_owned()], "the repeat was not delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_or_a_close_and_everyone_else_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port) = start(dir.path(), "bad-input");
    let base = format!("ws://127.0.0.1:{port}");

    let (status, _) = http_get(port, "/ws").expect("GET /ws");
    assert_eq!(status, 400, "no user, no upgrade");
    let (status, _) = http_get(port, "/ws?user=%3Cscript%3E").expect("GET /ws");
    assert_eq!(status, 400, "user names are validated before the upgrade");

    let mut good = Client::connect(&base, "good").await;
    good.join("calm", None).await;
    let mut bad = Client::connect(&base, "bad").await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "bad_request"),
        (Message::Text(json!({"type": "shout", "room": "calm"}).to_string().into()), "bad_request"),
        (Message::Text(json!({"type": "join"}).to_string().into()), "bad_request"),
        (Message::Text(json!({"type": "join", "room": "../etc"}).to_string().into()), "invalid_room"),
        (
            Message::Text(json!({"type": "send", "room": "calm", "text": "x", "client_id": "1"}).to_string().into()),
            "not_joined",
        ),
        (Message::Text(json!({"type": "send", "room": "calm", "text": ""}).to_string().into()), "bad_request"),
        (
            Message::Text(json!({"type": "send", "room": "calm", "text": "x".repeat(4001)}).to_string().into()),
            "too_large",
        ),
        (Message::Text("x".repeat(20 * 1024).into()), "too_large"),
        (Message::Binary(vec![0u8, 1, 2].into()), "bad_request"),
    ];
    for (n, (frame, code)) in cases.into_iter().enumerate() {
        bad.send_raw(frame).await.expect("send bad frame");
        let error = bad.wait_for(|f| f["type"] == "error").await;
        assert_eq!(error["code"], code, "case {n}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "case {n}: errors say what is wrong");
        bad.frames.clear();
    }
    // Still connected and useful after all that.
    bad.join("calm", None).await;
    bad.send("calm", "sorry", "s1").await;
    good.wait_messages("calm", 1).await;

    // Beyond the hard limit the connection is closed with 1009; others are unaffected.
    let mut huge = Client::connect(&base, "huge").await;
    let _ = huge.send_raw(Message::Text("y".repeat(2 * 1024 * 1024).into())).await;
    assert_eq!(huge.wait_close().await, Some(1009));
    good.send("calm", "still here", "g1").await;
    good.wait_for(|f| f["type"] == "ack" && f["client_id"] == "g1").await;
    good.wait_messages("calm", 2).await;
}
