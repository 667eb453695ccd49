//! Dashboards and alerts proved against the real thing: the distributed stack on
//! loopback, traffic that includes bad frames, failed writes and server API calls, and a
//! real Prometheus scraping every service each second (`scripts/prom-live-check.sh`).
//! Every dashboard query and alert expression must return at least one series.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{api, api_call, http_get, Client, Stack};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_has_data_from_a_live_stack() {
    let mut stack = Stack::start("observability", 2);
    let room = "metrics-room";
    let mut a = Client::connect(&stack.ws_url(0), "alice").await;
    let mut b = Client::connect(&stack.ws_url(1), "bob").await;
    a.join(room, None).await;
    b.join(room, None).await;
    for n in 0..20 {
        a.send(room, &format!("hello {n}"), &format!("a{n}")).await;
        b.send(room, &format!("hi {n}"), &format!("b{n}")).await;
    }
    a.wait_messages(room, 40).await;
    b.send_json(json!({"type": "history", "room": room, "limit": 5})).await;
    b.wait_for(|f| f["type"] == "history").await;
    // Bad frames of several kinds.
    for frame in ["{oops", r#"{"type":"fly"}"#, r#"{"type":"join","room":"no spaces"}"#] {
        b.send_raw(Message::Text(frame.into())).await.expect("send");
    }
    b.send_raw(Message::Binary(vec![1, 2, 3].into())).await.expect("send");
    // A disconnect (over WebTransport, which samples QUIC's RTT as it ends), and a resend
    // absorbed as a duplicate.
    let mut c = Client::connect_query(&stack.wt_url(0), "carol", "user=carol").await.expect("WebTransport session");
    c.join(room, None).await;
    c.close().await;
    a.send(room, "hello 0", "a0").await;
    a.wait_for(|f| f["type"] == "ack" && f["client_id"] == "a0").await;

    // The server API: a post, a history read and a refused key, for its panels' series
    // (they exist only after a request).
    let path = format!("/api/rooms/{room}/messages");
    let post = json!({"user": "bot", "text": "hi", "idempotency_key": "obs-1"});
    let (status, stored) = api(stack.api_ports[0], "POST", &path, Some(post));
    assert_eq!(status, 200, "API post: {stored}");
    let (status, page) = api(stack.api_ports[0], "GET", &path, None);
    assert_eq!(status, 200, "API history: {page}");
    let (status, refused) = api_call(stack.api_ports[0], "GET", &path, Some("wrong-key-0123456789abcdefghij"), None);
    assert_eq!(status, 401, "a wrong API key: {refused}");

    // A failed write: the MongoDB-wire server goes away; the persister retries, then fails.
    stack.mongo.proc.kill();
    a.send(room, "into the void", "void").await;
    let failed = a.wait_for(|f| f["client_id"] == "void" && (f["type"] == "error" || f["type"] == "ack")).await;
    assert_eq!(failed["type"], "error", "a write without a store is refused, not acked: {failed}");
    stack.mongo.proc.start();
    support::wait_port(stack.mongo.port, "secantusd-py", Duration::from_secs(60));

    // The metrics endpoints answer in Prometheus text format, and every process names the
    // commit it was built from (telemetry/build.rs).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=9", "HEAD"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .expect("git rev-parse (the tests run in a git checkout)");
    let version = format!("version=\"{}+{commit}\"", env!("CARGO_PKG_VERSION"));
    for (name, port) in &stack.metrics_ports {
        let (status, body) = http_get(*port, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{name} /metrics");
        let info = body.lines().find(|l| l.starts_with("roomcast_build_info")).unwrap_or_default();
        assert!(info.contains(&version), "{name} exports build info with {version}: {info:?}");
        assert!(body.contains("process_resident_memory_bytes"), "{name} exports process metrics");
    }

    let targets: Vec<String> = stack
        .metrics_ports
        .iter()
        .map(|(pod, port)| format!("{}/{pod}=127.0.0.1:{port}", pod.split('-').next().unwrap_or(pod)))
        .collect();
    // Keep traffic flowing while Prometheus scrapes, so rates are not zero-length.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        let url = stack.ws_url(1);
        tokio::spawn(async move {
            let mut d = Client::connect(&url, "dora").await;
            d.join(room, None).await;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                d.send(room, &format!("tick {n}"), &format!("t{n}")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/prom-live-check.sh");
    let status = tokio::task::spawn_blocking(move || Command::new("bash").arg(script).arg(targets.join(",")).status())
        .await
        .expect("join")
        .expect("run prom-live-check.sh");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.await;
    assert!(
        status.success(),
        "prom-live-check.sh failed: some dashboard query or alert has no series (see its output)"
    );
}
