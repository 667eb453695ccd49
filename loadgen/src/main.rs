//! `loadgen`: drives chat load at roomcast gateways (or any server speaking the original
//! Socket.IO events) and measures what comes back: end-to-end latency, deliveries/s,
//! connect time and errors, and loss and duplicates, counted from what arrived.

mod client;
mod offer;
mod run;
mod stats;

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;

pub use client::Mode;

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Load generator for roomcast: latency, throughput, loss and duplicates",
    after_help = "Targets must be on this machine (127.0.0.0/8 or ::1) unless --allow-remote is given: \
load aimed at someone else's server is an attack, and at your own remote cluster it should be a \
deliberate choice. Every run is bounded by --duration and stops by itself."
)]
pub struct Args {
    /// Base URLs of gateways or an Ingress, comma separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<url::Url>,
    /// Protocol: roomcast's /ws, or Socket.IO with the original app's events.
    #[arg(long, value_enum, default_value = "ws")]
    pub mode: Mode,
    /// Clients that join a room and, unless --idle, publish.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Rooms; clients are dealt to them round-robin (equal sizes), or by --room-skew.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Room-size distribution: 0 deals clients evenly; s > 0 deals them Zipf-like (room k gets weight 1/k^s).
    #[arg(long, default_value_t = 0.0)]
    pub room_skew: f64,
    /// Messages per second, all clients together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Size of each message's text in bytes (at least the ~30 bytes of its header).
    #[arg(long, default_value_t = 64)]
    pub message_size: usize,
    /// Seconds of publishing (or of holding, with --idle).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds over which connections are opened.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_up: f64,
    /// Extra connections opened and closed per second during the run (they do not publish).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Connect and hold, with no traffic.
    #[arg(long)]
    pub idle: bool,
    /// Seconds after publishing stops within which a delivery is on time; later ones are
    /// counted as late (never as lost).
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// After publishing stops, a client reads until it has every delivery it is owed, or
    /// until the server has sent it nothing for this many seconds; what is missing then is lost.
    #[arg(long, default_value_t = 5.0)]
    pub silence: f64,
    /// After publishing stops, a client gives up waiting for missing deliveries after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_wait: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Fail (exit 1) when the delivery p99 is above this many milliseconds.
    #[arg(long)]
    pub max_p99: Option<f64>,
    /// Hard cap on connections, as a guard against typos.
    #[arg(long, default_value_t = 50_000)]
    pub max_connections: usize,
    /// Allow targets that are not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// Threads that run the clients: 0 for one per core, 1 for a single-threaded runtime
    /// (which leaves the other cores to a server on the same machine).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// No live progress line (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

fn check_targets(args: &Args) -> anyhow::Result<()> {
    if args.connections > args.max_connections {
        bail!("--connections {} is above --max-connections {}", args.connections, args.max_connections);
    }
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    if !(0.0..=600.0).contains(&args.max_wait) || !(0.0..=600.0).contains(&args.silence) {
        bail!("--max-wait and --silence must be between 0 and 600 seconds");
    }
    if args.rooms == 0 || args.connections == 0 {
        bail!("--rooms and --connections must be at least 1");
    }
    for target in &args.target {
        let host = target.host_str().ok_or_else(|| anyhow::anyhow!("{target} has no host"))?;
        let port = target.port_or_known_default().unwrap_or(80);
        let addrs: Vec<_> = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|err| anyhow::anyhow!("cannot resolve {host}: {err}"))?
            .collect();
        if !args.allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
            bail!("{target} is not on this machine; pass --allow-remote if you mean to load a remote server you own");
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run_and_report(args)),
        Err(err) => {
            eprintln!("loadgen: cannot start the tokio runtime: {err}");
            std::process::exit(2);
        }
    }
}

async fn run_and_report(args: Args) {
    if let Err(err) = check_targets(&args) {
        eprintln!("loadgen: {err}");
        std::process::exit(2);
    }
    let deadline = Duration::from_secs_f64(args.ramp_up + args.duration + args.max_wait.max(args.drain) + 30.0);
    let report = match tokio::time::timeout(deadline, run::run(args.clone())).await {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => {
            eprintln!("loadgen: {err:#}");
            std::process::exit(2);
        }
        Err(_) => {
            eprintln!("loadgen: the run did not finish within {deadline:?}; stopping");
            std::process::exit(2);
        }
    };
    println!("{}", report.summary());
    if let Some(path) = &args.json {
        if let Err(err) = std::fs::write(path, report.to_json()) {
            eprintln!("loadgen: cannot write {}: {err}", path.display());
            std::process::exit(2);
        }
    }
    let failures = report.failures(args.max_p99);
    for failure in &failures {
        eprintln!("loadgen: FAIL: {failure}");
    }
    std::process::exit(if failures.is_empty() { 0 } else { 1 });
}
