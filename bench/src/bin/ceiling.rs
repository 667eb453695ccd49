//! The fan-out ceiling: a minimal tokio-tungstenite broadcast server speaking just enough
//! of `/ws` (join, send, ack, message) for loadgen. No gRPC, no Redis, no store: what this
//! machine can fan out at all, to compare roomcast against (BENCHMARKS.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Utf8Bytes>)>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let rooms: Rooms = Arc::default();
    let seqs: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut next_id = 0u64;
    eprintln!("ceiling listening on {}", args.listen);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let (id, rooms, seqs) = (next_id, rooms.clone(), seqs.clone());
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
            let writer = tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    if sink.feed(Message::Text(first)).await.is_err() {
                        return;
                    }
                    while let Ok(more) = rx.try_recv() {
                        if sink.feed(Message::Text(more)).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            let mut joined = Vec::new();
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let room = frame["room"].as_str().unwrap_or_default().to_owned();
                match frame["type"].as_str() {
                    Some("join") => {
                        rooms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(room.clone())
                            .or_default()
                            .push((id, tx.clone()));
                        joined.push(room.clone());
                        let _ = tx.send(json!({"type": "joined", "room": room, "messages": []}).to_string().into());
                    }
                    Some("send") => {
                        let seq = {
                            let mut seqs = seqs.lock().unwrap_or_else(|p| p.into_inner());
                            let seq = seqs.entry(room.clone()).or_default();
                            *seq += 1;
                            *seq
                        };
                        let message: Utf8Bytes =
                            json!({"type": "message", "room": room, "seq": seq, "id": seq.to_string(),
                            "user": "x", "text": frame["text"], "ts": 0})
                            .to_string()
                            .into();
                        for (_, member) in
                            rooms.lock().unwrap_or_else(|p| p.into_inner()).get(&room).into_iter().flatten()
                        {
                            let _ = member.send(message.clone());
                        }
                        let _ = tx.send(
                            json!({"type": "ack", "client_id": frame["client_id"], "room": room, "seq": seq})
                                .to_string()
                                .into(),
                        );
                    }
                    _ => {}
                }
            }
            let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
            for room in joined {
                if let Some(members) = rooms.get_mut(&room) {
                    members.retain(|(member, _)| *member != id);
                }
            }
            drop(rooms);
            writer.abort();
        });
    }
}
