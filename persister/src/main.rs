//! `persister`: batched, idempotent message writes and history on MongoDB, over gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backoff::Retryable;
use clap::Parser;
use persister::{Archive, BatcherConfig, MongoStore, Persister, PersisterService};
use roomcast_proto::persister_server::PersisterServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

#[derive(Parser)]
#[command(version, about = "roomcast store tier: batched writes and history on MongoDB")]
struct Args {
    /// gRPC address the gateways connect to.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "0.0.0.0:50052")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN", default_value = "0.0.0.0:9092")]
    metrics_listen: SocketAddr,
    /// MongoDB connection string.
    #[arg(long, env = "ROOMCAST_MONGODB_URI", default_value = "mongodb://127.0.0.1:27017", hide_env_values = true)]
    mongodb: String,
    /// Database holding the `messages` collection.
    #[arg(long, env = "ROOMCAST_MONGODB_DATABASE", default_value = "roomcast")]
    database: String,
    /// Most messages in one insert_many.
    #[arg(long, env = "ROOMCAST_BATCH_SIZE", default_value_t = 256)]
    batch_size: usize,
    /// Under load (writes already waiting when a batch could be written), how long the
    /// batch waits for more, in milliseconds; an idle store never waits.
    #[arg(long, env = "ROOMCAST_BATCH_LINGER_MS", default_value_t = 0)]
    batch_linger_ms: u64,
    /// Batches written at once; the messages that arrive meanwhile form the next batch.
    #[arg(long, env = "ROOMCAST_BATCHES_IN_FLIGHT", default_value_t = 1)]
    batches_in_flight: usize,
    /// Most writes waiting for a batch; beyond it writes fail fast.
    #[arg(long, env = "ROOMCAST_QUEUE_CAPACITY", default_value_t = 10_000)]
    queue_capacity: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("persister");
    let metrics = telemetry::init_metrics("persister")?;
    persister::metrics::describe();
    let store = MongoStore::connect(&args.mongodb, &args.database).await?;
    let stop = CancellationToken::new();
    let ready = telemetry::Readiness::new("roomcast_persister_ready", &[telemetry::STARTING]);
    let admin = telemetry::bind(args.metrics_listen, "metrics").await?;
    tokio::spawn(telemetry::serve_admin(admin, metrics, ready.clone(), stop.clone()));

    // Indexes first: without them writes would not be idempotent.
    (|| store.ensure_indexes())
        .retry(backoff::exponential(Duration::from_millis(200), Duration::from_secs(5)))
        .notify(|err, delay| tracing::warn!(%err, ?delay, "cannot create indexes yet; MongoDB may still be starting"))
        .await?;
    let config = BatcherConfig {
        max_batch: args.batch_size.max(1),
        linger: Duration::from_millis(args.batch_linger_ms),
        queue_capacity: args.queue_capacity.max(1),
        max_in_flight: args.batches_in_flight.max(1),
        ..BatcherConfig::default()
    };
    let persister = Persister::new(Arc::new(store), config);
    // The store's state is `roomcast_persister_store_up`, not readiness: MongoDB is
    // shared by every persister, and an outage must not empty the Service.
    let probe = persister.clone();
    tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(2), probe.max_seq("_readyz")).await;
            metrics::gauge!("roomcast_persister_store_up").set(if matches!(answer, Ok(Ok(_))) { 1.0 } else { 0.0 });
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));

    let listener = telemetry::bind(args.listen, "gRPC").await?;
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "persister serving");
    ready.set(telemetry::STARTING, false);
    let shutting_down = ready.clone();
    tonic::transport::Server::builder()
        .add_service(PersisterServer::new(PersisterService::new(persister)))
        // Without TCP_NODELAY, Nagle holds small replies for the peer's delayed ACK (~40 ms per hop).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            telemetry::terminated().await;
            shutting_down.set(telemetry::SHUTTING_DOWN, true);
            stop.cancel();
        })
        .await?;
    tracing::info!("persister stopped");
    Ok(())
}
