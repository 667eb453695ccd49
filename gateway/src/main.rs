//! `gateway`: the WebSocket edge of a distributed roomcast, talking gRPC to `fanout` and
//! `persister`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fanout::FanoutClient;
use gateway::{ApiArgs, EdgeArgs, Gateway, Metered, SelfSign, WebTransport};
use persister::PersisterClient;

#[derive(Parser)]
#[command(version, about = "roomcast gateway: WebSocket and WebTransport clients in, gRPC to fanout and persister")]
struct Args {
    /// Address for HTTP, the web page and WebSockets (TCP); WebTransport uses it on UDP
    /// when a certificate is given (--webtransport-cert or --tls-cert).
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
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("gateway");
    let metrics = telemetry::init_metrics("gateway")?;
    gateway::describe_metrics();
    let edge = args.edge.load()?;
    let api = args.api.load(None)?;
    let wt = match args.edge.webtransport(args.listen, SelfSign::Never)? {
        Some(config) => Some(WebTransport::bind(config, &edge.limits).await?),
        None => None,
    };
    let broker = Arc::new(Metered::new("fanout", FanoutClient::new(&args.fanout)?));
    let archive = Arc::new(Metered::new("persister", PersisterClient::new(&args.persister)?));
    tracing::info!(fanout = %args.fanout, persister = %args.persister, metrics = %args.metrics_listen, "gateway starting");
    let gateway = Gateway::start(broker, archive, edge.limits, edge.access);
    let drain = Duration::from_secs(args.drain_seconds);
    gateway.run(args.listen, edge.tls, wt, api, args.metrics_listen, metrics, drain).await
}
