//! `gateway`: the WebSocket edge of a distributed roomcast, talking gRPC to `fanout` and
//! `persister`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fanout::FanoutClient;
use gateway::{Gateway, Limits};
use persister::PersisterClient;
use tokio::sync::watch;

#[derive(Parser)]
#[command(version, about = "roomcast gateway: WebSocket clients in, gRPC to fanout and persister")]
struct Args {
    /// Address for HTTP, the web page and WebSockets.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The fanout's gRPC URL.
    #[arg(long, env = "ROOMCAST_FANOUT_URL", default_value = "http://127.0.0.1:50051")]
    fanout: String,
    /// The persister's gRPC URL.
    #[arg(long, env = "ROOMCAST_PERSISTER_URL", default_value = "http://127.0.0.1:50052")]
    persister: String,
    /// On SIGTERM, connections are closed (code 1012) at random within this many seconds.
    #[arg(long, env = "ROOMCAST_DRAIN_SECONDS", default_value_t = 20)]
    drain_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("gateway");
    let metrics = telemetry::init_metrics("gateway")?;
    gateway::describe_metrics();
    let broker = Arc::new(FanoutClient::new(&args.fanout)?);
    let archive = Arc::new(PersisterClient::new(&args.persister)?);
    let gateway = Gateway::start(broker, archive, Limits::default());

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
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, fanout = %args.fanout, persister = %args.persister, "gateway serving");
    let server = gateway.clone();
    tokio::spawn(async move { server.serve(listener).await });

    telemetry::terminated().await;
    gateway.drain(Duration::from_secs(args.drain_seconds)).await;
    gateway.stop();
    let _ = admin_stop.send(true);
    tracing::info!("gateway stopped");
    Ok(())
}
