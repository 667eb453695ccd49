//! loadgen's late/lost accounting against a scripted `/ws` server on loopback: deliveries
//! held past the drain window are counted late and not lost; a delivery that never comes
//! is lost once the server has been silent for --silence.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// A one-room `/ws` server: acks every send at once, and broadcasts it to every member
/// after `hold`, except the `drop_nth` send (1-based; 0 drops none).
async fn scripted_server(hold: Duration, drop_nth: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (room, _) = broadcast::channel::<String>(1 << 16);
    let sends = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (room, sends) = (room.clone(), sends.clone());
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (mut sink, mut stream) = ws.split();
                let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                tokio::spawn(async move {
                    while let Some(frame) = out_rx.recv().await {
                        if sink.send(Message::Text(frame.into())).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                    match frame["type"].as_str() {
                        Some("join") => {
                            let mut members = room.subscribe();
                            let member = out.clone();
                            tokio::spawn(async move {
                                while let Ok(msg) = members.recv().await {
                                    let _ = member.send(msg);
                                }
                            });
                            // loadgen waits for a frame that starts with the type, as roomcast writes it.
                            let _ = out.send(format!(r#"{{"type":"joined","room":{},"messages":[]}}"#, frame["room"]));
                        }
                        Some("send") => {
                            let seq = sends.fetch_add(1, Ordering::SeqCst) + 1;
                            let _ = out
                                .send(json!({"type": "ack", "client_id": frame["client_id"], "seq": seq}).to_string());
                            let msg =
                                json!({"type": "message", "room": frame["room"], "seq": seq, "text": frame["text"]})
                                    .to_string();
                            let room = room.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(hold).await;
                                if seq != drop_nth {
                                    let _ = room.send(msg);
                                }
                            });
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// Runs loadgen with 3 clients in one room sending 6 messages in all, and returns its report.
fn run_loadgen(addr: SocketAddr, drain: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &format!("http://{addr}"), "--connections", "3", "--rooms", "1"])
        .args(["--rate", "6", "--duration", "1", "--ramp-up", "0.1", "--drain", drain, "--silence", "4"])
        .args(["--max-wait", "20", "--quiet", "--json"])
        .arg(&json_path)
        .output()
        .expect("run loadgen");
    let report = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|err| panic!("no report ({err}); stderr: {}", String::from_utf8_lossy(&output.stderr)));
    serde_json::from_str(&report).expect("report JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_after_the_drain_are_late_not_lost() {
    let addr = scripted_server(Duration::from_millis(2500), 0).await;
    let report = tokio::task::spawn_blocking(move || run_loadgen(addr, "0.5")).await.expect("join");
    let (sent, expected) = (report["sent"].as_u64(), report["expected_deliveries"].as_u64());
    assert!(sent.is_some_and(|s| s > 0), "{report}");
    assert_eq!(expected, sent.map(|s| s * 3), "every member gets every acked message: {report}");
    assert_eq!(report["unique_deliveries"], report["expected_deliveries"], "{report}");
    assert_eq!(report["late"], report["unique_deliveries"], "all held past the 0.5 s drain: {report}");
    assert_eq!(report["lost"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_never_comes_is_lost() {
    let addr = scripted_server(Duration::from_millis(50), 2).await;
    let report = tokio::task::spawn_blocking(move || run_loadgen(addr, "3")).await.expect("join");
    assert_eq!(report["lost"], 3, "the second message, for each of the 3 members: {report}");
    assert_eq!(report["late"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
}
