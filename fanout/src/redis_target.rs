//! Where the Redis broker keeps its state: one Redis (`--redis`) or a Redis Cluster
//! (`--redis-cluster`, sharded pub/sub), over TCP or TLS (`rediss://`, `--redis-ca`).
//!
//! This module only connects: it builds the command connection, the cluster subscriber's
//! client, and checks at start that the configuration fits the servers it names, so
//! that a wrong CA, a plaintext URL to a TLS port or a cluster named as a single Redis
//! fail with one clear line instead of a silent retry loop.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, PushInfo, TlsCertificates};
use tokio::sync::mpsc;

/// A single command's deadline, and a connection attempt's.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the start-up check waits for each server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's Redis flags.
#[derive(clap::Args, Clone)]
pub struct RedisArgs {
    /// One Redis, e.g. redis://:PASSWORD@127.0.0.1:6379/0, or rediss:// for TLS.
    #[arg(long, env = "ROOMCAST_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis: String,
    /// The seed nodes of a Redis Cluster, comma-separated (redis:// or rediss://), instead
    /// of --redis: rooms are spread over its shards with sharded pub/sub.
    #[arg(
        long,
        env = "ROOMCAST_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis",
        hide_env_values = true
    )]
    pub redis_cluster: Vec<String>,
    /// A PEM file of the CA that signed the Redis servers' certificates (rediss:// only),
    /// for private CAs such as Memorystore's; without it the system's roots are used.
    #[arg(long, env = "ROOMCAST_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
}

/// A checked Redis configuration.
#[derive(Clone)]
pub struct RedisTarget {
    urls: Vec<String>,
    cluster: bool,
    certs: Option<TlsCertificates>,
}

/// The connection every command goes through: multiplexed, reconnecting by itself.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisArgs {
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        let cluster = !self.redis_cluster.is_empty();
        let urls = if cluster { self.redis_cluster.clone() } else { vec![self.redis.clone()] };
        let mut tls = None;
        for url in &urls {
            url.as_str()
                .into_connection_info()
                .map_err(|err| anyhow::anyhow!("invalid Redis URL {}: {err}", without_password(url)))?;
            let secure = url.starts_with("rediss://");
            if *tls.get_or_insert(secure) != secure {
                anyhow::bail!("--redis-cluster mixes redis:// and rediss:// URLs: a cluster is all TLS or none");
            }
        }
        let certs = match &self.redis_ca {
            None => None,
            Some(_) if tls != Some(true) => anyhow::bail!("--redis-ca is set but no Redis URL is rediss:// (TLS)"),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|err| anyhow::anyhow!("cannot read --redis-ca {}: {err}", path.display()))?;
                anyhow::ensure!(
                    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"),
                    "--redis-ca {} holds no PEM certificate",
                    path.display()
                );
                Some(TlsCertificates { client_tls: None, root_cert: Some(pem) })
            }
        };
        Ok(RedisTarget { urls, cluster, certs })
    }
}

impl RedisTarget {
    /// True for a Redis Cluster: keys carry hash tags and rooms use sharded pub/sub.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs with their passwords masked, for logs.
    pub fn describe(&self) -> String {
        self.urls.iter().map(|url| without_password(url)).collect::<Vec<_>>().join(",")
    }

    /// The client of one Redis (for `--redis`, or one seed node to probe).
    pub fn client(&self, url: &str) -> anyhow::Result<redis::Client> {
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
            None => redis::Client::open(url),
        };
        client.map_err(|err| anyhow::anyhow!("invalid Redis URL {}: {err}", without_password(url)))
    }

    /// The single Redis's client; only for `--redis`.
    pub fn single(&self) -> anyhow::Result<redis::Client> {
        let url = self.urls.first().ok_or_else(|| anyhow::anyhow!("no Redis URL given"))?;
        self.client(url)
    }

    fn cluster_client(&self, pushes: Option<mpsc::UnboundedSender<PushInfo>>) -> anyhow::Result<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(self.urls.clone()).retries(2).max_retry_wait(500);
        if let Some(certs) = &self.certs {
            builder = builder.certs(certs.clone());
        }
        if let Some(pushes) = pushes {
            builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(pushes);
        }
        builder.build().map_err(|err| anyhow::anyhow!("invalid Redis Cluster seeds {}: {err}", self.describe()))
    }

    /// A cluster connection, connected in the background, with `pushes` for its pub/sub.
    fn cluster_connection(&self, pushes: Option<mpsc::UnboundedSender<PushInfo>>) -> anyhow::Result<ClusterConnection> {
        let config = ClusterConfig::new().set_connection_timeout(TIMEOUT).set_response_timeout(TIMEOUT);
        Ok(self.cluster_client(pushes)?.get_pending_async_connection_with_config(config))
    }

    /// The cluster subscriber's own connection and the pushes it receives (RESP3).
    pub fn cluster_subscriber(&self) -> anyhow::Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>)> {
        let (pushes, push_rx) = mpsc::unbounded_channel();
        Ok((self.cluster_connection(Some(pushes))?, push_rx))
    }

    /// The command connection, connected lazily: the broker starts while Redis is down.
    pub fn connection(&self) -> anyhow::Result<Connection> {
        if self.cluster {
            let config = ClusterConfig::new().set_connection_timeout(TIMEOUT).set_response_timeout(TIMEOUT);
            return Ok(Connection::Cluster(
                self.cluster_client(None)?.get_pending_async_connection_with_config(config),
            ));
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(TIMEOUT))
            .set_connection_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(self.single()?, config)
            .map(Connection::Single)
            .map_err(|err| anyhow::anyhow!("cannot set up the Redis connection to {}: {err}", self.describe()))
    }

    /// Connects to every URL once, all at once, and checks each is what the flags say (a
    /// cluster node or not). A server that cannot be reached or does not answer is only a
    /// warning, as Redis may come later and an outage must not stop the pods; a definite
    /// refusal (TLS, password, the wrong mode) is a configuration error.
    pub async fn check(&self) -> anyhow::Result<()> {
        let checks = self.urls.iter().map(|url| self.check_one(url));
        futures::future::join_all(checks).await.into_iter().collect()
    }

    async fn check_one(&self, url: &str) -> anyhow::Result<()> {
        let shown = without_password(url);
        let client = self.client(url)?;
        if let Err(err) = reach(client.get_connection_info().addr()).await {
            tracing::warn!(redis = shown, %err, "cannot reach Redis; serving anyway (roomcast_fanout_redis_up = 0) and retrying");
            return Ok(());
        }
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, cluster_enabled(&client)).await {
            Ok(Err(err)) if err.is_timeout() => None,
            Ok(answer) => Some(answer),
            Err(_) => None,
        };
        match answer {
            None => {
                let hint = if url.starts_with("rediss://") {
                    "a TLS client on a plaintext port? use redis:// there"
                } else {
                    "a stopped Redis, or not a Redis port"
                };
                tracing::warn!(
                    redis = shown,
                    "Redis took the connection but did not answer in time ({hint}); serving anyway \
                     (roomcast_fanout_redis_up = 0) and retrying"
                );
                Ok(())
            }
            Some(Err(err)) => anyhow::bail!("Redis at {shown} refused the connection: {err}{}", hint(url, &err)),
            Some(Ok(enabled)) if enabled && !self.cluster => {
                anyhow::bail!("{shown} is a Redis Cluster node: give its nodes with --redis-cluster, not --redis")
            }
            Some(Ok(enabled)) if !enabled && self.cluster => {
                anyhow::bail!("{shown} is not a Redis Cluster node (cluster_enabled:0): use --redis for one Redis")
            }
            Some(Ok(_)) => Ok(()),
        }
    }
}

/// Opens (and drops) a TCP connection to `addr`: does anything listen there?
async fn reach(addr: &redis::ConnectionAddr) -> std::io::Result<()> {
    let (host, port) = match addr {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => (host, *port),
        _ => return Ok(()),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(connected) => connected.map(drop),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

async fn cluster_enabled(client: &redis::Client) -> redis::RedisResult<bool> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// What to check when a connection fails for a reason other than an absent server.
fn hint(url: &str, err: &redis::RedisError) -> &'static str {
    let text = err.to_string().to_lowercase();
    if url.starts_with("rediss://") && (text.contains("certificate") || text.contains("issuer")) {
        " (the server's certificate is not signed by --redis-ca, or by a system root without it)"
    } else if url.starts_with("rediss://") {
        " (is this port TLS? rediss:// needs Redis's --tls-port)"
    } else if err.is_connection_dropped() || err.is_io_error() {
        " (Redis closed the connection at once: if this is a TLS port, use rediss://)"
    } else {
        ""
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The URL with its user and password masked, for messages that reach logs.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(redis: &str, cluster: &[&str], ca: Option<&str>) -> RedisArgs {
        RedisArgs {
            redis: redis.into(),
            redis_cluster: cluster.iter().map(|s| s.to_string()).collect(),
            redis_ca: ca.map(PathBuf::from),
        }
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(without_password("redis://:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(without_password("redis://user:p@ss@cache"), "redis://***@cache");
        assert_eq!(without_password("redis://cache:6379"), "redis://cache:6379");
        let err = args("rediss://:s3cret@cache", &[], Some("/nonexistent/ca.pem")).target().err();
        assert!(err.is_some_and(|e| !e.to_string().contains("s3cret")));
        let err = args("", &["redis://:s3cret@a:1", "nonsense://:s3cret@b"], None).target().err();
        assert!(err.is_some_and(|e| e.to_string().contains("***") && !e.to_string().contains("s3cret")));
    }

    #[test]
    fn a_cluster_is_all_tls_or_none_and_a_ca_needs_tls() {
        let mixed = args("", &["redis://a:1", "rediss://b:2"], None).target().err().map(|e| e.to_string());
        assert!(mixed.is_some_and(|e| e.contains("mixes redis:// and rediss://")));
        let plain_ca = args("redis://a:1", &[], Some("/etc/hostname")).target().err().map(|e| e.to_string());
        assert!(plain_ca.is_some_and(|e| e.contains("no Redis URL is rediss://")));
        let target = args("", &["redis://a:1", "redis://b:2"], None).target().expect("a plain cluster");
        assert!(target.is_cluster());
        assert_eq!(target.describe(), "redis://a:1,redis://b:2");
    }
}
