//! The server API against the distributed stack (two gateways, each with its fanout, one
//! Redis, the persister on the MongoDB-wire server), and on the one-process `roomcast`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{api, api_call, start_roomcast, Client, Stack, API_KEY};

fn seqs(messages: &Value) -> Vec<u64> {
    messages.as_array().expect("messages").iter().filter_map(|m| m["seq"].as_u64()).collect()
}

/// Polls `call` until `done` holds, for what only becomes true as gateways hear of it.
async fn until(what: &str, mut call: impl FnMut() -> (u16, Value), done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = call();
        if status == 200 && done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_posts_in_order_with_clients_reads_lists_and_refuses_bad_calls() {
    let stack = Stack::start("api-endpoints", 2);
    let (api0, api1) = (stack.api_ports[0], stack.api_ports[1]);
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    ada.join("lobby", None).await;
    bob.join("lobby", None).await;

    // Client sends and API posts (through both gateways) interleave in one order.
    let mut posted = Vec::new();
    for i in 0..6 {
        ada.send("lobby", &format!("ada {i}"), &format!("a{i}")).await;
        let port = if i % 2 == 0 { api0 } else { api1 };
        let body = json!({"user": "bot", "text": format!("bot {i}"), "idempotency_key": format!("post-{i}")});
        let (status, stored) = api(port, "POST", "/api/rooms/lobby/messages", Some(body));
        assert_eq!(status, 200, "{stored}");
        assert_eq!((stored["room"].as_str(), stored["user"].as_str()), (Some("lobby"), Some("bot")));
        posted.push(stored);
    }
    // A retried post (same key, other gateway) is the first call's message, stored once.
    let retry = json!({"user": "bot", "text": "bot 0", "idempotency_key": "post-0"});
    let (status, again) = api(api1, "POST", "/api/rooms/lobby/messages", Some(retry));
    assert_eq!(status, 200);
    assert_eq!((&again["seq"], &again["id"]), (&posted[0]["seq"], &posted[0]["id"]), "the retry is the first copy");
    ada.wait_messages("lobby", 12).await;
    bob.wait_messages("lobby", 12).await;
    ada.settle(Duration::from_millis(500)).await;
    bob.settle(Duration::from_millis(500)).await;
    assert_eq!(ada.ordered_ids("lobby"), bob.ordered_ids("lobby"), "one order on both gateways");
    assert_eq!(ada.ordered_ids("lobby").len(), 12, "each post delivered once");
    for post in &posted {
        assert!(bob.ordered_ids("lobby").contains(&post["id"].as_str().expect("id").to_owned()));
    }
    let stored = stack.stored_ids("lobby").await;
    assert_eq!(stored.iter().filter(|id| *id == posted[0]["id"].as_str().expect("id")).count(), 1);
    assert_eq!(stored.len(), 12, "no second copy of the retried post");

    // History pages, newest last, through either gateway.
    let (status, page) = api(api1, "GET", "/api/rooms/lobby/messages?limit=5", None);
    assert_eq!(status, 200, "{page}");
    let newest = seqs(&page["messages"]);
    // A page counts the seqs it covers; the retry's sealed seq is not shown.
    assert!((4..=5).contains(&newest.len()), "{page}");
    let before = page["next_before"].as_u64().expect("a page before");
    let (_, older) = api(api0, "GET", &format!("/api/rooms/lobby/messages?before={before}&limit=100"), None);
    let mut all = seqs(&older["messages"]);
    all.extend(newest);
    let delivered: Vec<u64> = ada.messages("lobby").into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(all, delivered, "history holds what was delivered, in its order (the retry's sealed seq is not shown)");

    // Presence and the directory see both gateways' users.
    let presence =
        until("presence of lobby", || api(api0, "GET", "/api/rooms/lobby/presence", None), |p| p["count"] == 2).await;
    let users: Vec<&str> =
        presence["users"].as_array().expect("users").iter().filter_map(|u| u["user"].as_str()).collect();
    assert_eq!(users, ["ada", "bob"]);
    let rooms = until(
        "the directory",
        || api(api1, "GET", "/api/rooms", None),
        |r| {
            r["rooms"]
                .as_array()
                .is_some_and(|rooms| rooms.iter().any(|room| room["room"] == "lobby" && room["members"] == 2))
        },
    )
    .await;
    assert!(rooms["total"].as_u64() >= Some(1));

    // Refusals: each a status and a JSON body with a code.
    let body = r#"{"user":"bot","text":"hi"}"#;
    let (status, refused) = api_call(api0, "POST", "/api/rooms/lobby/messages", None, Some(body));
    assert_eq!((status, refused["code"].as_str()), (401, Some("unauthorized")));
    let wrong = "wrong-key-0123456789abcdefghij";
    let (status, refused) = api_call(api0, "POST", "/api/rooms/lobby/messages", Some(wrong), Some(body));
    assert_eq!((status, refused["code"].as_str()), (401, Some("unauthorized")));
    for (method, path) in [
        ("GET", "/api/rooms"),
        ("GET", "/api/rooms/lobby/messages"),
        ("GET", "/api/rooms/lobby/presence"),
        ("DELETE", "/api/rooms/lobby/messages/1"),
        ("POST", "/api/users/ada/disconnect"),
    ] {
        let (status, refused) = api_call(api1, method, path, Some(wrong), Some(r#"{"reason":"x"}"#));
        assert_eq!((status, refused["code"].as_str()), (401, Some("unauthorized")), "{method} {path}");
    }
    let (_, page) = api(api0, "GET", "/api/rooms/lobby/messages?limit=100", None);
    assert!(
        page["messages"].as_array().is_some_and(|m| m.iter().all(|m| m.get("deleted").is_none())),
        "nothing removed"
    );
    let (status, _) = api_call(api0, "POST", "/api/rooms/lobby/messages", Some(API_KEY), Some("{not json"));
    assert_eq!(status, 400, "a body that is not JSON");
    let (status, _) = api(api0, "POST", "/api/rooms/lobby/messages", Some(json!({"user": "bot"})));
    assert_eq!(status, 422, "a body without text");
    let (status, refused) = api(api0, "POST", "/api/rooms/lobby/messages", Some(json!({"user": "b t", "text": "x"})));
    assert_eq!((status, refused["code"].as_str()), (400, Some("invalid_user")));
    let (status, refused) = api(api0, "GET", "/api/rooms/nobody-here/messages", None);
    assert_eq!((status, refused["code"].as_str()), (404, Some("room_not_found")));
    let (status, refused) = api(api0, "GET", "/api/rooms/bad%20room/presence", None);
    assert_eq!((status, refused["code"].as_str()), (400, Some("invalid_room")));
    let (status, refused) = api(api0, "DELETE", "/api/rooms/lobby/messages/999", None);
    assert_eq!((status, refused["code"].as_str()), (404, Some("message_not_found")));
    let (status, doc) = api_call(api1, "GET", "/api/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(5), "five paths, six operations");
    let requests = support::metric(
        stack.metrics_ports["gateway-0"],
        "roomcast_gateway_api_requests_total{method=\"POST\",route=\"/api/rooms/{room}/messages\",status=\"401\"}",
    );
    assert!(requests >= 2.0, "refusals are counted by route and status: {requests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_with_a_ban_closes_the_user_on_both_gateways_until_the_ban_ends() {
    let stack = Stack::start("api-ban", 2);
    let mut tabs = vec![
        Client::connect(&stack.ws_url(0), "mallory").await,
        Client::connect(&stack.ws_url(0), "mallory").await,
        Client::connect(&stack.ws_url(1), "mallory").await,
    ];
    let mut eve = Client::connect(&stack.ws_url(1), "eve").await;
    for client in tabs.iter_mut().chain([&mut eve]) {
        client.join("lobby", None).await;
    }
    let body = json!({"reason": "spam", "ban_seconds": 4});
    let (status, answer) = api(stack.api_ports[0], "POST", "/api/users/mallory/disconnect", Some(body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["closed_here"], 2, "the two tabs on the API's own gateway");
    assert!(answer["banned_until"].as_str().is_some_and(|t| t.ends_with('Z')), "{answer}");
    for tab in &mut tabs {
        assert_eq!(tab.wait_close().await, Some(4403), "every tab, on both gateways, closed with 4403");
    }
    let refused = Client::connect_query(&stack.ws_url(1), "mallory", "user=mallory").await.err().expect("refused");
    assert!(refused.starts_with("403") && refused.contains("banned") && refused.contains("spam"), "{refused}");
    eve.send("lobby", "still here", "e1").await;
    eve.wait_for(|f| f["type"] == "ack" && f["client_id"] == "e1").await;
    // The ban ends, and the user may come back, on either gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match Client::connect_query(&stack.ws_url(0), "mallory", "user=mallory").await {
            Ok(client) => {
                client.close().await;
                break;
            }
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "still refused after the ban: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kicked = support::metric(
        stack.metrics_ports["gateway-1"],
        "roomcast_gateway_disconnects_total{protocol=\"ws\",reason=\"kicked\"}",
    );
    assert_eq!(kicked, 1.0);
    let (status, _) = api(stack.api_ports[1], "POST", "/api/users/mallory/disconnect", Some(json!({"ban_seconds": 5})));
    assert_eq!(status, 422, "a reason is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_becomes_a_tombstone_live_in_history_and_in_recovery() {
    let stack = Stack::start("api-moderation", 2);
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    ada.join("mod", None).await;
    bob.join("mod", None).await;
    for i in 1..=3 {
        ada.send("mod", &format!("text {i}"), &format!("m{i}")).await;
    }
    ada.wait_messages("mod", 3).await;
    bob.wait_messages("mod", 3).await;

    let (status, removed) = api(stack.api_ports[1], "DELETE", "/api/rooms/mod/messages/2", None);
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["members_told"], true);
    assert_eq!((&removed["message"]["deleted"], &removed["message"]["text"]), (&json!(true), &json!("")));
    for client in [&mut ada, &mut bob] {
        let deleted = client.wait_for(|f| f["type"] == "deleted").await;
        assert_eq!((&deleted["room"], &deleted["seq"]), (&json!("mod"), &json!(2)), "{}", client.user);
    }
    // History (the store) and recovery (the room's tail, and the store) show the tombstone.
    let (_, page) = api(stack.api_ports[0], "GET", "/api/rooms/mod/messages", None);
    assert_eq!(seqs(&page["messages"]), [1, 2, 3]);
    assert_eq!((&page["messages"][1]["deleted"], &page["messages"][1]["text"]), (&json!(true), &json!("")));
    bob.send_json(json!({"type": "history", "room": "mod"})).await;
    let history = bob.wait_for(|f| f["type"] == "history").await;
    assert_eq!(history["messages"][1]["deleted"], true, "{history}");
    let mut carol = Client::connect(&stack.ws_url(1), "carol").await;
    let recovered = carol.join("mod", Some(0)).await;
    assert_eq!(recovered.len(), 3);
    assert_eq!((&recovered[1]["deleted"], &recovered[1]["text"]), (&json!(true), &json!("")));
    let mut dave = Client::connect(&stack.ws_url(0), "dave").await;
    let fresh = dave.join("elsewhere", None).await;
    assert!(fresh.is_empty());
    let recovered = dave.join("mod", Some(1)).await;
    assert_eq!(seqs(&Value::from(recovered.clone())), [2, 3]);
    assert_eq!(recovered[0]["deleted"], true, "a join from the store shows it removed too");
    // The order goes on: the next message is seq 4, delivered once to everyone.
    ada.send("mod", "after", "m4").await;
    for client in [&mut ada, &mut bob, &mut carol] {
        client.wait_for(|f| f["type"] == "message" && f["seq"] == 4).await;
        client.settle(Duration::from_millis(300)).await;
        assert_eq!(client.messages("mod").iter().filter(|(seq, _)| *seq == 4).count(), 1);
    }
    // Deleting again answers the same tombstone; the store holds one document for seq 2.
    let (status, again) = api(stack.api_ports[0], "DELETE", "/api/rooms/mod/messages/2", None);
    assert_eq!((status, &again["message"]["id"]), (200, &removed["message"]["id"]));
    assert!(!stack.stored_ids("mod").await.contains(&removed["message"]["id"].as_str().expect("id").to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roomcast_serves_the_api_on_loopback_with_a_key_it_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api_port = support::free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let (_proc, port, _) = start_roomcast("api-roomcast", dir.path(), &["--api-listen", &listen]);
    let key_file = dir.path().join("api-key");
    let key = std::fs::read_to_string(&key_file).expect("roomcast made its API key");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key_file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the key file is readable by its owner only");
    let key = key.trim();
    let mut ada = Client::connect(&format!("ws://127.0.0.1:{port}"), "ada").await;
    ada.join("lobby", None).await;
    let post = r#"{"user":"bot","text":"welcome","idempotency_key":"w1"}"#;
    let (status, stored) = api_call(api_port, "POST", "/api/rooms/lobby/messages", Some(key), Some(post));
    assert_eq!(status, 200, "{stored}");
    let message = ada.wait_for(|f| f["type"] == "message").await;
    assert_eq!((&message["text"], &message["user"]), (&json!("welcome"), &json!("bot")));
    let (status, _) = api_call(api_port, "POST", "/api/rooms/lobby/messages", Some(API_KEY), Some(post));
    assert_eq!(status, 401, "only roomcast's own key");
    let ban = r#"{"reason":"test","ban_seconds":60}"#;
    let (status, answer) = api_call(api_port, "POST", "/api/users/ada/disconnect", Some(key), Some(ban));
    assert_eq!((status, &answer["closed_here"]), (200, &json!(1)));
    assert_eq!(ada.wait_close().await, Some(4403));
    let refused = Client::connect_query(&format!("ws://127.0.0.1:{port}"), "ada", "user=ada").await.err();
    assert!(refused.is_some_and(|r| r.contains("banned")));
}
