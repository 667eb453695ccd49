//! `fanout`: the Redis-backed broker, served over gRPC to the gateways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fanout::{DirectoryArgs, FanoutService, RedisArgs, RedisBroker};
use roomcast_proto::fanout_server::FanoutServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

#[derive(Parser)]
#[command(version, about = "roomcast broker: per-room sequence numbers and fan-out over Redis")]
struct Args {
    /// gRPC address the gateways connect to.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("fanout");
    let metrics = telemetry::init_metrics("fanout")?;
    fanout::metrics::describe();
    // rediss:// goes through rustls: one crypto provider for the process, the gateway's.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let redis = args.redis.target()?;
    let limits = args.directory.limits()?;
    let stop = CancellationToken::new();
    let ready = telemetry::Readiness::new("roomcast_fanout_ready", &[telemetry::STARTING]);
    let admin = telemetry::bind(args.metrics_listen, "metrics").await?;
    tokio::spawn(telemetry::serve_admin(admin, metrics, ready.clone(), stop.clone()));
    // /healthz answers while Redis is checked (at most a few seconds).
    redis.check().await?;
    tracing::info!(redis = redis.describe(), cluster = redis.is_cluster(), "Redis configuration checked");
    let broker = RedisBroker::open(&redis, limits)?;
    // Redis's state is `roomcast_fanout_redis_up`, not readiness: Redis is shared by
    // every pod, and an outage must not take them all out of the load balancer.
    let probe = broker.clone();
    tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
        loop {
            probe.is_up().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));

    let listener = telemetry::bind(args.listen, "gRPC").await?;
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "fanout serving");
    ready.set(telemetry::STARTING, false);
    let shutting_down = ready.clone();
    tonic::transport::Server::builder()
        .add_service(FanoutServer::new(FanoutService::new(Arc::new(broker))))
        // Without TCP_NODELAY, Nagle holds small replies for the peer's delayed ACK (~40 ms per hop).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            telemetry::terminated().await;
            shutting_down.set(telemetry::SHUTTING_DOWN, true);
            stop.cancel();
        })
        .await?;
    tracing::info!("fanout stopped");
    Ok(())
}
