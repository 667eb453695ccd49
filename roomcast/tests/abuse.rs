//! Floods and slow readers: 10,000 malformed, oversized and random frames from several
//! clients at once, and a member that stops reading. The gateway must answer every bad
//! frame (or close), keep its memory flat, and keep serving everyone else in order.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{metric, rss_kib, start_roomcast, Client, WAIT};
use tokio_tungstenite::tungstenite::Message;

const FLOODERS: usize = 5;
const FRAMES_EACH: usize = 2_000;

/// One bad frame, chosen by `rng`; the bool is whether it ends the connection (1009).
fn bad_frame(rng: &mut rand::rngs::StdRng, n: usize) -> (Message, bool) {
    let text = |s: String| (Message::Text(s.into()), false);
    match n % 10 {
        0 => text("{not json".into()),
        1 => text(json!({"type": "shout", "room": "x"}).to_string()),
        2 => text(json!({"type": "send", "room": "flood", "text": "x".repeat(5000)}).to_string()),
        3 => text("x".repeat(rng.random_range(16 * 1024 + 1..64 * 1024))),
        4 => text("[".repeat(rng.random_range(100..5000))),
        5 => text((0..rng.random_range(1..300)).map(|_| rng.random::<char>()).collect()),
        6 => (
            Message::Binary((0..rng.random_range(1..2048)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>().into()),
            false,
        ),
        7 => text(json!({"type": "join", "room": "../../etc/passwd"}).to_string()),
        8 => text(json!({"type": "history", "room": "flood", "limit": -1, "before": "x"}).to_string()),
        _ if n % 1000 == 9 => (Message::Text("y".repeat(1024 * 1024 + 1).into()), true),
        _ => text(json!({"type": "send", "room": "not-joined", "text": "hi", "client_id": n.to_string()}).to_string()),
    }
}

/// Sends its share of bad frames, reconnecting after a 1009 close, and counts the
/// errors it gets back. Returns (frames sent, errors received, closes).
async fn flood(base: String, who: usize) -> (usize, usize, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(who as u64);
    let (mut sent, mut errors, mut closes) = (0, 0, 0);
    let mut n = 0;
    while n < FRAMES_EACH {
        let url = format!("{base}/ws?user=flood{who}");
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.expect("flooder connects");
        let (mut tx, mut rx) = ws.split();
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let reader = tokio::spawn(async move {
            let mut errors = 0;
            let mut closed = None;
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, rx.next()).await {
                match frame {
                    Message::Text(text) => {
                        let v: Value = serde_json::from_str(&text).expect("the server always sends JSON");
                        assert!(v["type"] == "error" && v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
                        errors += 1;
                        counter.store(errors, Ordering::Relaxed);
                    }
                    Message::Close(frame) => {
                        closed = frame.map(|f| u16::from(f.code));
                        break;
                    }
                    _ => {}
                }
            }
            (errors, closed)
        });
        let mut expected = 0;
        let mut closing = false;
        while n < FRAMES_EACH {
            let (frame, closes_it) = bad_frame(&mut rng, n);
            n += 1;
            // The oversized frame may fail to go out whole: the server closes on it (1009)
            // while the client is still writing it. It was sent all the same.
            if tx.send(frame).await.is_err() && !closes_it {
                break;
            }
            sent += 1;
            if closes_it {
                closing = true;
                break;
            }
            expected += 1;
        }
        if !closing {
            // Close only once every answer is in: a close drops what is still queued.
            let deadline = Instant::now() + WAIT;
            while answered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = tx.send(Message::Close(None)).await;
        }
        let (got, closed) = reader.await.expect("reader");
        errors += got;
        if closing {
            // The close frame races the client's own 1 MiB upload: when the server drops
            // the socket with that upload unread, TCP resets and the frame is lost.
            assert!(matches!(closed, Some(1009) | None), "a frame over 1 MiB ends the connection: {closed:?}");
            closes += 1;
        } else {
            assert_eq!(got, expected, "flooder {who}: every bad frame gets an error");
        }
    }
    (sent, errors, closes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_frames_leave_the_gateway_flat_and_others_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The rate limit is lifted so that every frame reaches the decoder.
    let (proc, port, metrics) = start_roomcast(
        "flood",
        dir.path(),
        &["--frames-per-second", "1000000", "--frame-burst", "1000000", "--user-sends-per-second", "0"],
    );
    let base = format!("ws://127.0.0.1:{port}");
    let mut ann = Client::connect(&base, "ann").await;
    let mut ben = Client::connect(&base, "ben").await;
    ann.join("calm", None).await;
    ben.join("calm", None).await;
    // Warm up (allocator arenas, buffers) with one round of everything, then measure.
    let _ = flood(base.clone(), 99).await;
    let before = rss_kib(proc.pid());

    let flooders: Vec<_> = (0..FLOODERS).map(|who| tokio::spawn(flood(base.clone(), who))).collect();
    // Meanwhile the well-behaved keep talking, and must see every message once, in order.
    for n in 0..50 {
        ann.send("calm", &format!("during the flood {n}"), &format!("a{n}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut totals = (0, 0, 0);
    for f in flooders {
        let (sent, errors, closes) = f.await.expect("flooder");
        totals = (totals.0 + sent, totals.1 + errors, totals.2 + closes);
    }
    ben.wait_messages("calm", 50).await;
    let seqs: Vec<u64> = ben.messages("calm").iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "ben got all 50, once each, in order");
    ann.wait_for(|f| f["type"] == "ack" && f["client_id"] == "a49").await;
    assert_eq!(ann.acks().len(), 50, "every send during the flood was acked");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(proc.pid());
    println!(
        "flood: {} frames from {FLOODERS} clients, {} errors, {} 1009 closes; gateway RSS {before} KiB before, {after} KiB after",
        totals.0, totals.1, totals.2
    );
    assert_eq!(totals.0, FLOODERS * FRAMES_EACH);
    assert!(metric(metrics, "roomcast_gateway_bad_frames_total") >= totals.1 as f64);
    // Flat: no per-frame leak (10,000 frames of up to 1 MiB would show as hundreds of MiB).
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB over the flood");
    // Still alive and serving.
    ann.send("calm", "after", "after").await;
    ben.wait_messages("calm", 51).await;
}

/// (p50, p99) in ms.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Two publishers send `each` messages of ~4 KB to room `busy` while every reader, in its
/// own task, measures delivery latency and checks it got every message once, in order.
async fn traffic(base: &str, tag: &str, readers: Vec<Client>, each: usize) -> (Vec<Client>, Vec<f64>) {
    let start = Instant::now();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let want = r.messages("busy").len() + 2 * each;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while r.messages("busy").len() < want {
                    let frame =
                        tokio::time::timeout_at(deadline, r.next_frame()).await.expect("reader kept up").expect("open");
                    if frame["type"] == "message" {
                        let stamp: u128 =
                            frame["text"].as_str().and_then(|t| t.split(' ').next()?.parse().ok()).expect("stamp");
                        latencies.push((start.elapsed().as_micros() - stamp) as f64 / 1000.0);
                    }
                    r.frames.push(frame);
                }
                let seqs: Vec<u64> = r.messages("busy").iter().map(|(s, _)| *s).collect();
                assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{}: in order, no gaps, no repeats", r.user);
                (r, latencies)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let (base, tag) = (base.to_owned(), tag.to_owned());
            tokio::spawn(async move {
                let mut c = Client::connect(&base, &format!("{tag}pub{p}")).await;
                c.join("busy", None).await;
                for n in 0..each {
                    let stamp = start.elapsed().as_micros();
                    c.send("busy", &format!("{stamp} {}", "z".repeat(3900)), &format!("{tag}{p}-{n}")).await;
                    if n % 8 == 7 || n == each - 1 {
                        c.wait_for(|f| f["type"] == "ack" && f["client_id"] == format!("{tag}{p}-{n}")).await;
                        c.frames.clear();
                    }
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut readers = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (r, l) = t.await.expect("reader");
        readers.push(r);
        latencies.extend(l);
    }
    (readers, latencies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_off_and_the_room_keeps_its_pace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, metrics) = start_roomcast(
        "slow-consumer",
        dir.path(),
        &[
            "--send-queue-bytes",
            "262144",
            "--frames-per-second",
            "10000",
            "--frame-burst",
            "10000",
            "--user-sends-per-second",
            "0",
        ],
    );
    let base = format!("ws://127.0.0.1:{port}");
    let mut readers = Vec::new();
    for n in 0..3 {
        let mut r = Client::connect(&base, &format!("reader{n}")).await;
        r.join("busy", None).await;
        readers.push(r);
    }
    let (readers, baseline) = traffic(&base, "a", readers, 300).await;

    // A member that stops reading: the kernel buffers fill, then its 256 KiB queue.
    let mut stalled = Client::connect(&base, "stalled").await;
    stalled.join("busy", None).await;
    let (readers, during) = traffic(&base, "b", readers, 1500).await;
    // Its close frame (4001) waits behind the data it never read; the server gives up on
    // it after 2 s, so a reader this late sees the data and then the end of the stream.
    let code = stalled.wait_close().await;
    assert!(matches!(code, Some(4001) | None), "the stalled reader is closed as a slow consumer: {code:?}");
    assert_eq!(metric(metrics, "roomcast_gateway_slow_consumer_disconnects_total"), 1.0);
    assert_eq!(metric(metrics, "roomcast_gateway_disconnects_total{protocol=\"ws\",reason=\"slow_consumer\"}"), 1.0);

    let (b50, b99) = percentiles(baseline);
    let (d50, d99) = percentiles(during);
    println!("slow consumer: others' delivery p50/p99 {b50:.1}/{b99:.1} ms without, {d50:.1}/{d99:.1} ms with a stalled member");
    // The stalled one gets what it missed, once, by joining again with its last position.
    let last = stalled.messages("busy").last().map(|(s, _)| *s).unwrap_or(0);
    let total = readers[0].messages("busy").last().map(|(s, _)| *s).expect("readers got messages");
    // A join recovers what fits half its send queue; `truncated` says to join again.
    let mut back = Client::connect(&base, "stalled").await;
    let (mut missed, mut since, mut joins) = (Vec::new(), last, 0);
    loop {
        back.frames.clear();
        back.send_json(json!({"type": "join", "room": "busy", "since": since})).await;
        let joined = back.wait_for(|f| f["type"] == "joined").await;
        joins += 1;
        missed.extend(joined["messages"].as_array().expect("messages").iter().map(|m| m["seq"].as_u64().expect("seq")));
        since = missed.last().copied().unwrap_or(since);
        if joined["truncated"] != true {
            break;
        }
    }
    assert_eq!(missed, (last + 1..=total).collect::<Vec<_>>(), "recovered in {joins} joins");
    assert!(joins > 1, "{} messages of 4 KB do not fit one 256 KiB queue: recovery was paged", missed.len());
}
