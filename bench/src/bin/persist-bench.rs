//! Persister write throughput against a MongoDB-wire server: documents/s through the
//! persister's batcher (concurrent writers, batched insert_many) versus one-by-one
//! insert_one from a single writer, the way the original app stored messages.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use mongodb::bson::doc;
use persister::{Archive, PersisterClient};
use roomcast_proto::ChatMessage;

#[derive(Parser)]
struct Args {
    /// The persister's gRPC URL (batched path).
    #[arg(long)]
    persister: String,
    /// The MongoDB-wire server (one-by-one path), the same one the persister writes to.
    #[arg(long)]
    mongodb: String,
    /// Messages per path.
    #[arg(long, default_value_t = 5000)]
    messages: u64,
    /// Concurrent writers on the batched path (gateways send many writes at once).
    #[arg(long, default_value_t = 64)]
    writers: u64,
}

fn message(room: &str, seq: u64) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        seq,
        id: format!("{room}-{seq}"),
        user: "bench".into(),
        text: "x".repeat(64),
        ts: 0,
        client_id: format!("c{seq}"),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = std::process::id();

    let archive = Arc::new(PersisterClient::new(&args.persister)?);
    let room = format!("bench-batched-{run}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (archive, room) = (archive.clone(), room.clone());
        let (writers, messages) = (args.writers, args.messages);
        tasks.push(tokio::spawn(async move {
            let mut seq = w + 1;
            while seq <= messages {
                archive.write(message(&room, seq)).await?;
                seq += writers;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let batched = args.messages as f64 / started.elapsed().as_secs_f64();

    let client = mongodb::Client::with_uri_str(&args.mongodb).await?;
    // The same durability as the persister: majority and journal.
    let concern =
        mongodb::options::WriteConcern::builder().w(mongodb::options::Acknowledgment::Majority).journal(true).build();
    let coll = client.database("roomcast_bench").collection_with_options::<mongodb::bson::Document>(
        "one_by_one",
        mongodb::options::CollectionOptions::builder().write_concern(concern).build(),
    );
    let started = Instant::now();
    for seq in 1..=args.messages {
        coll.insert_one(
            doc! {"_id": format!("{run}-{seq}"), "room": "bench", "seq": seq as i64, "text": "x".repeat(64)},
        )
        .await?;
    }
    let one_by_one = args.messages as f64 / started.elapsed().as_secs_f64();

    println!(
        "{}",
        serde_json::json!({
            "messages": args.messages, "writers": args.writers,
            "batched_docs_per_s": batched.round(), "one_by_one_docs_per_s": one_by_one.round(),
            "ratio": (batched / one_by_one * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
