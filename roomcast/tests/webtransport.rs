//! The `/wt` front door (WebTransport over QUIC) with a real Rust client (wtransport):
//! the same room, order, acks and `since` recovery as `/ws`, across gateways and front
//! doors; slow consumers, bad lines, oversized lines, refusals and the drain, each with
//! its documented code (docs/PROTOCOL.md, "WebTransport").

mod support;

use std::time::Duration;

use serde_json::json;
use support::{http_get, metric, start_roomcast, wt_refusal, Client, Stack};

/// Every message frame's seq for `room`, in arrival order.
fn seqs(client: &Client, room: &str) -> Vec<u64> {
    client.messages(room).into_iter().map(|(seq, _)| seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_and_websocket_share_a_room_across_gateways_and_recover_with_since() {
    let stack = Stack::start("wt-room", 2);
    let mut wt = Client::connect_query(&stack.wt_url(0), "wanda", "user=wanda").await.expect("WebTransport session");
    let mut ws = Client::connect(&stack.ws_url(1), "walt").await;
    wt.join("mixed", None).await;
    ws.join("mixed", None).await;
    for n in 0..5 {
        wt.send("mixed", &format!("over QUIC {n}"), &format!("wt{n}")).await;
        ws.send("mixed", &format!("over TCP {n}"), &format!("ws{n}")).await;
    }
    for n in 0..5 {
        let ack = wt.wait_for(|f| f["type"] == "ack" && f["client_id"] == format!("wt{n}").as_str()).await;
        assert!(ack["seq"].as_u64().is_some_and(|seq| seq > 0), "an ack carries its seq: {ack}");
    }
    wt.wait_messages("mixed", 10).await;
    ws.wait_messages("mixed", 10).await;
    assert_eq!(wt.messages("mixed"), ws.messages("mixed"), "both front doors see one order");
    assert!(seqs(&wt, "mixed").windows(2).all(|w| w[0] < w[1]), "in seq order, once each");

    // The QUIC connection goes away; what is sent meanwhile comes back with `since`.
    let last = *seqs(&wt, "mixed").last().expect("a seq");
    wt.close().await;
    for n in 0..3 {
        ws.send("mixed", &format!("while away {n}"), &format!("away{n}")).await;
    }
    ws.wait_messages("mixed", 13).await;
    let mut back = Client::connect_query(&stack.wt_url(0), "wanda", "user=wanda").await.expect("reconnect");
    let missed = back.join("mixed", Some(last)).await;
    let missed: Vec<u64> = missed.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(missed, seqs(&ws, "mixed")[10..].to_vec(), "exactly what was missed, once");

    let port = stack.metrics_ports["gateway-0"];
    assert!(metric(port, "roomcast_gateway_frames_received_total{protocol=\"webtransport\"}") >= 7.0);
    assert!(metric(port, "roomcast_gateway_webtransport_rtt_seconds_count") >= 1.0, "QUIC RTT is sampled");
    back.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--send-queue-bytes",
        "65536",
        "--frames-per-second",
        "2000",
        "--frame-burst",
        "2000",
        "--user-sends-per-second",
        "0",
    ];
    let (_proc, port, metrics) = start_roomcast("wt-slow", dir.path(), &flags);
    let base = format!("ws://127.0.0.1:{port}");
    let mut stalled = Client::connect_query(&format!("https://127.0.0.1:{port}"), "stalled", "user=stalled")
        .await
        .expect("WebTransport session");
    stalled.join("busy", None).await;
    // More than QUIC's stream window and then the 64 KiB queue: ~3 MB of messages.
    let mut sender = Client::connect(&base, "sender").await;
    sender.join("busy", None).await;
    let text = "z".repeat(3900);
    for n in 0..800 {
        sender.send("busy", &text, &format!("s{n}")).await;
        if n % 100 == 99 {
            sender.wait_for(|f| f["type"] == "ack" && f["client_id"] == format!("s{n}").as_str()).await;
        }
        if metric(metrics, "roomcast_gateway_slow_consumer_disconnects_total") >= 1.0 {
            break;
        }
    }
    assert_eq!(stalled.wait_close().await, Some(4001), "closed as a slow consumer");
    assert_eq!(
        metric(metrics, "roomcast_gateway_disconnects_total{protocol=\"webtransport\",reason=\"slow_consumer\"}"),
        1.0
    );
    // The room carries on for the others.
    sender.send("busy", "after", "after").await;
    sender.wait_for(|f| f["type"] == "ack" && f["client_id"] == "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_oversized_lines_refusals_and_the_drain_get_their_documented_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "0123456789abcdef0123456789abcdef";
    let (mut proc, port, metrics) = start_roomcast("wt-bad", dir.path(), &["--auth-jwt-secret", secret]);
    let wt = format!("https://127.0.0.1:{port}");

    // `roomcast` with no certificate makes its own and offers its hash.
    let (status, body) = http_get(port, "/wt/cert-hash").expect("GET /wt/cert-hash");
    let offered: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(offered["port"], port, "WebTransport is on --listen's port, on UDP: {body}");
    assert!(offered["sha256"].as_str().is_some_and(|h| h.len() == 64), "{body}");

    // Refused sessions are told why on their stream, then closed with 4000 + the status
    // /ws would answer.
    for (query, code, reason) in [
        ("token=not-a-jwt", 4401, "token_invalid:"),
        ("", 4400, "invalid_user:"),
        ("user=no%20spaces", 4400, "invalid_user:"),
    ] {
        let (last, closed, why) = wt_refusal(port, query).await;
        assert_eq!((last["code"].as_u64(), closed), (Some(code), code as u32), "?{query}: {last}");
        assert!(last["reason"].as_str().is_some_and(|r| r.starts_with(reason)) && why.starts_with(reason), "{why}");
    }
    assert_eq!(metric(metrics, "roomcast_gateway_refused_connections_total{reason=\"token_invalid\"}"), 1.0);

    let mut bad = Client::connect_query(&wt, "bad", "user=bad").await.expect("session");
    let cases: [(&[u8], &str); 4] = [
        (b"not json\n", "bad_request"),
        (b"\xff\xfe\n", "bad_request"),
        (b"{\"type\":\"teleport\"}\r\n", "bad_request"),
        (b"{\"type\":\"send\",\"room\":\"calm\",\"text\":\"hi\",\"client_id\":\"c1\"}\n", "not_joined"),
    ];
    for (n, (line, code)) in cases.iter().enumerate() {
        bad.wt().write(line).await.expect("write");
        let error = bad.wait_for(|f| f["type"] == "error").await;
        assert_eq!(error["code"], *code, "case {n}: {error}");
        bad.frames.clear();
    }
    let long = format!("{}\n", json!({"type": "send", "room": "calm", "text": "x".repeat(20_000), "client_id": "l"}));
    bad.wt().write(long.as_bytes()).await.expect("write");
    let error = bad.wait_for(|f| f["type"] == "error").await;
    assert_eq!(error["code"], "too_large", "{error}");
    // Still useful after all that.
    bad.join("calm", None).await;
    bad.send("calm", "sorry", "s1").await;
    bad.wait_for(|f| f["type"] == "ack" && f["client_id"] == "s1").await;

    // A line beyond the 1 MiB hard limit closes the session with 1009.
    let mut huge = Client::connect_query(&wt, "huge", "user=huge").await.expect("session");
    let _ = huge.wt().write("y".repeat(2 * 1024 * 1024).as_bytes()).await;
    assert_eq!(huge.wait_close().await, Some(1009));
    assert_eq!(huge.frames.last().map(|f| f["code"].clone()), Some(json!(1009)), "the last line says why");

    // SIGTERM: sessions are closed with 1012, reconnect elsewhere.
    let terminate = tokio::task::spawn_blocking(move || proc.terminate(Duration::from_secs(15)));
    assert_eq!(bad.wait_close().await, Some(1012), "a drain closes WebTransport sessions with 1012");
    let last = bad.frames.last().cloned().unwrap_or_default();
    assert_eq!((last["type"].as_str(), last["code"].as_u64()), (Some("close"), Some(1012)), "and says so: {last}");
    let exit = terminate.await.expect("terminate");
    assert!(exit.is_some_and(|status| status.success()), "clean exit on SIGTERM");
}
