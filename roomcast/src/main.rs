//! `roomcast`: the whole chat service in one process, with no external services. The
//! gateway runs against the embedded broker (memory) and store (redb on disk), and
//! serves the web page at `/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fanout::MemoryBroker;
use gateway::{Gateway, Limits};
use persister::{BatcherConfig, Persister, RedbStore};
use tokio::sync::watch;

#[derive(Parser)]
#[command(version, about = "roomcast in one process: open http://127.0.0.1:8080 and chat")]
struct Args {
    /// Address for the web page and WebSockets.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the message store lives; history survives restarts.
    #[arg(long, env = "ROOMCAST_DATA_DIR", default_value = "./roomcast-data")]
    data_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    metrics_listen: SocketAddr,
    /// On SIGTERM, connections are closed (code 1012) at random within this many seconds.
    #[arg(long, env = "ROOMCAST_DRAIN_SECONDS", default_value_t = 2)]
    drain_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("roomcast");
    let metrics = telemetry::init_metrics("roomcast")?;
    gateway::describe_metrics();
    persister::metrics::describe();
    let store = RedbStore::open(&args.data_dir)?;
    let archive = Arc::new(Persister::new(Arc::new(store), BatcherConfig::default()));
    let gateway = Gateway::start(Arc::new(MemoryBroker::default()), archive, Limits::default());

    let (admin_stop, admin_stopped) = watch::channel(false);
    let ready = telemetry::Readiness::default();
    let admin = telemetry::bind(args.metrics_listen, "metrics").await?;
    tokio::spawn(telemetry::serve_admin(admin, metrics, ready.clone(), admin_stopped));
    let readiness = gateway.clone();
    tokio::spawn(async move {
        loop {
            ready.set(readiness.is_ready());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let listener = telemetry::bind(args.listen, "HTTP").await?;
    tracing::info!(url = %format!("http://{}", args.listen), data_dir = %args.data_dir.display(), "roomcast serving");
    let server = gateway.clone();
    tokio::spawn(async move { server.serve(listener).await });

    telemetry::terminated().await;
    gateway.drain(Duration::from_secs(args.drain_seconds)).await;
    gateway.stop();
    let _ = admin_stop.send(true);
    tracing::info!("roomcast stopped");
    Ok(())
}
