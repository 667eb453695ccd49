//! `roomcast`: the whole chat service in one process, with no external services. The
//! gateway runs against the embedded broker (memory) and store (redb on disk), and
//! serves the web page at `/`. `roomcast token` mints a development JWT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fanout::{DirectoryArgs, MemoryBroker};
use gateway::{ApiArgs, EdgeArgs, Gateway, SelfSign, WebTransport};
use persister::{BatcherConfig, Persister, RedbStore};

#[derive(Parser)]
#[command(
    version,
    about = "roomcast in one process: open http://127.0.0.1:8080 and chat",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token for development, signed with --secret.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address for the web page and WebSockets (TCP), and WebTransport (UDP, self-signed
    /// unless --tls-cert or --webtransport-cert is given).
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
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
    /// The server API listens on 127.0.0.1:9091 unless --api-listen says otherwise (or
    /// `off`); without --api-key or --api-key-file its key is made once and kept in
    /// DATA_DIR/api-key (readable by this user only).
    #[command(flatten)]
    api: ApiArgs,
}

/// Where `roomcast` serves the server API by default: loopback only.
const API_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

#[derive(clap::Args)]
struct TokenArgs {
    /// The user name the token carries (its `sub`).
    #[arg(long)]
    user: String,
    /// Rooms the token may join: comma-separated glob patterns (e.g. "team-*,lobby"); all when absent.
    #[arg(long)]
    rooms: Option<String>,
    /// How long the token is valid, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The server's --auth-jwt-secret.
    #[arg(long, env = "ROOMCAST_AUTH_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            anyhow::ensure!(
                args.secret.len() >= 32,
                "--secret must be at least 32 bytes, like the server's --auth-jwt-secret"
            );
            println!("{}", gateway::mint_token(&args.secret, &args.user, args.rooms.as_deref(), args.ttl)?);
            Ok(())
        }
        None => tokio::runtime::Runtime::new()?.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging("roomcast");
    let metrics = telemetry::init_metrics("roomcast")?;
    gateway::describe_metrics();
    persister::metrics::describe();
    let edge = args.edge.load()?;
    let api = match (&args.api.api_key, &args.api.api_key_file, args.api.api_listen.as_deref()) {
        (None, None, listen) if listen.map(str::trim) != Some("off") => {
            ApiArgs { api_key_file: Some(local_api_key(&args.data_dir)?), ..args.api.clone() }
        }
        _ => args.api.clone(),
    };
    let api = api.load(Some(API_LISTEN))?;
    let wt = match args.edge.webtransport(args.listen, SelfSign::Allowed)? {
        Some(config) => Some(WebTransport::bind(config, &edge.limits).await?),
        None => None,
    };
    let store = RedbStore::open(&args.data_dir)?;
    let archive = Arc::new(Persister::new(Arc::new(store), BatcherConfig::default()));
    tracing::info!(data_dir = %args.data_dir.display(), metrics = %args.metrics_listen, "roomcast starting");
    let broker = MemoryBroker::new(args.directory.limits()?);
    let gateway = Gateway::start(Arc::new(broker), archive, edge.limits, edge.access);
    let drain = Duration::from_secs(args.drain_seconds);
    gateway.run(args.listen, edge.tls, wt, api, args.metrics_listen, metrics, drain).await
}

/// The one-process server's own API key: made at the first start, then kept.
fn local_api_key(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("api-key");
    std::fs::create_dir_all(data_dir)
        .map_err(|err| anyhow::anyhow!("cannot create data directory {}: {err}", data_dir.display()))?;
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
    match created {
        Ok(mut file) => {
            let key: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            file.write_all(format!("{key}\n").as_bytes())
                .map_err(|err| anyhow::anyhow!("cannot write the API key to {}: {err}", path.display()))?;
            tracing::info!(file = %path.display(), "made a server API key");
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => anyhow::bail!("cannot create the API key file {}: {err}", path.display()),
    }
    Ok(path)
}
