//! Test harness: real processes on loopback. Redis (`redis-server`) and the MongoDB-wire
//! server (`secantusd-py`, from `.tools/venv-secantus`, or `ROOMCAST_SECANTUSD`) are
//! started per test on free ports; a missing binary fails the test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::{FramedRead, LinesCodec};

mod redis_servers;
#[allow(unused_imports)]
pub use redis_servers::{openssl, tls_files, Redis, RedisCluster, RedisSetup};

/// A port nothing listens on, never handed out twice in this test process (the OS may
/// offer a just-released port again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>; the binaries sit in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// What to do when a binary or service is missing: these tests need every binary built
/// and real Redis and MongoDB-wire servers, which README's test command provides.
pub const SETUP: &str = "run README's test command, `bash scripts/test.sh`: it installs redis-server and \
SecantusDB, builds every binary, then runs every test (plain `cargo test` builds only roomcast)";

pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is not built: {SETUP}", path.display());
    path
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// A child process killed when dropped, with its output in test-output/logs.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    cmd: Vec<String>,
}

pub fn log_dir() -> PathBuf {
    let dir = repo_root().join("test-output").join("logs");
    std::fs::create_dir_all(&dir).expect("create test-output/logs");
    dir
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Proc {
        let mut cmd = vec![program.display().to_string()];
        cmd.extend(args.iter().cloned());
        let mut proc = Proc { name: name.to_owned(), child: None, cmd };
        proc.start();
        proc
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir().join(format!("{}.log", self.name)))
            .expect("open log");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err} ({:?})", self.name, self.cmd));
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_port(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within {limit:?}; see test-output/logs");
}

pub struct Mongo {
    pub port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.exists())
}

impl Mongo {
    pub fn start(name: &str) -> Mongo {
        let program = std::env::var_os("ROOMCAST_SECANTUSD")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".tools/venv-secantus/bin/secantusd-py"));
        assert!(program.exists(), "{} is not installed: {SETUP}", program.display());
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--storage-path".into(),
            dir.path().display().to_string(),
        ];
        let proc = Proc::spawn(name, &program, &args);
        wait_port(port, "secantusd-py", Duration::from_secs(60));
        Mongo { port, proc, _dir: dir }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.uri()).await.expect("mongodb client")
    }
}

/// persister + N × (fanout, gateway) over one Redis and one MongoDB-wire server.
pub struct Stack {
    pub broker: RedisSetup,
    pub mongo: Mongo,
    pub database: String,
    pub persister: Proc,
    pub persister_port: u16,
    pub fanouts: Vec<Proc>,
    pub gateways: Vec<Proc>,
    pub gateway_ports: Vec<u16>,
    /// Each gateway's server API (key [`API_KEY`]).
    pub api_ports: Vec<u16>,
    pub metrics_ports: HashMap<String, u16>,
}

/// The server API key every test gateway takes.
pub const API_KEY: &str = "test-api-key-0123456789abcdef";

impl Stack {
    pub fn start(test: &str, gateways: usize) -> Stack {
        Stack::start_with(test, gateways, &[])
    }

    /// As [`Stack::start`], with extra flags for the persister; `{mongo}` in them is the
    /// MongoDB-wire server's host:port, and a `--mongodb` among them replaces the default.
    pub fn start_with(test: &str, gateways: usize, persister_args: &[&str]) -> Stack {
        let redis = RedisSetup::Single(Redis::start(&format!("{test}-redis")));
        Stack::start_from(test, gateways, persister_args, None, redis, &[])
    }

    /// As [`Stack::start`], with extra flags for every gateway.
    pub fn start_gateways_with(test: &str, gateways: usize, gateway_args: &[&str]) -> Stack {
        let redis = RedisSetup::Single(Redis::start(&format!("{test}-redis")));
        Stack::start_from(test, gateways, &[], None, redis, gateway_args)
    }

    /// As [`Stack::start`], on the given Redis (TLS, or a cluster).
    pub fn start_on(test: &str, gateways: usize, redis: RedisSetup) -> Stack {
        Stack::start_from(test, gateways, &[], None, redis, &[])
    }

    /// As [`Stack::start`], with the fanout and persister binaries from `upstream_bins`
    /// (another release's), and this commit's gateways: a rolling upgrade's skew.
    pub fn start_skewed(test: &str, gateways: usize, upstream_bins: &Path) -> Stack {
        let redis = RedisSetup::Single(Redis::start(&format!("{test}-redis")));
        Stack::start_from(test, gateways, &[], Some(upstream_bins), redis, &[])
    }

    fn start_from(
        test: &str,
        gateways: usize,
        persister_args: &[&str],
        upstream_bins: Option<&Path>,
        broker: RedisSetup,
        gateway_args: &[&str],
    ) -> Stack {
        let upstream = |name: &str| upstream_bins.map_or_else(|| bin(name), |dir| dir.join(name));
        let mongo = Mongo::start(&format!("{test}-mongo"));
        let database = format!("roomcast_{test}");
        let mut metrics_ports = HashMap::new();
        let persister_port = free_port();
        let m = free_port();
        metrics_ports.insert("persister".into(), m);
        let persister = Proc::spawn(
            &format!("{test}-persister"),
            &upstream("persister"),
            &[
                "--listen".into(),
                format!("127.0.0.1:{persister_port}"),
                "--metrics-listen".into(),
                format!("127.0.0.1:{m}"),
                "--database".into(),
                database.clone(),
            ]
            .into_iter()
            .chain(if persister_args.contains(&"--mongodb") { vec![] } else { vec!["--mongodb".into(), mongo.uri()] })
            .chain(persister_args.iter().map(|a| a.replace("{mongo}", &format!("127.0.0.1:{}", mongo.port))))
            .collect::<Vec<String>>(),
        );
        let mut stack = Stack {
            broker,
            mongo,
            database,
            persister,
            persister_port,
            fanouts: Vec::new(),
            gateways: Vec::new(),
            gateway_ports: Vec::new(),
            api_ports: Vec::new(),
            metrics_ports,
        };
        let fanout = upstream("fanout");
        for i in 0..gateways {
            stack.add_gateway(test, i, &fanout, gateway_args);
        }
        // Ready means serving (readiness is each process's own state, not its
        // dependencies'): the persister once its indexes exist, a gateway once its broker
        // link is up.
        wait_ready(stack.metrics_ports["persister"], Duration::from_secs(60));
        for port in stack.gateway_ports.clone() {
            wait_ready(port, Duration::from_secs(60));
        }
        stack
    }

    fn add_gateway(&mut self, test: &str, i: usize, fanout: &Path, extra: &[&str]) {
        let fanout_port = free_port();
        let (fm, gm, gport, api) = (free_port(), free_port(), free_port(), free_port());
        self.metrics_ports.insert(format!("fanout-{i}"), fm);
        self.metrics_ports.insert(format!("gateway-{i}"), gm);
        self.fanouts.push(Proc::spawn(
            &format!("{test}-fanout-{i}"),
            fanout,
            &[
                "--listen".into(),
                format!("127.0.0.1:{fanout_port}"),
                "--metrics-listen".into(),
                format!("127.0.0.1:{fm}"),
            ]
            .into_iter()
            .chain(self.broker.fanout_args())
            .collect::<Vec<String>>(),
        ));
        self.gateways.push(Proc::spawn(
            &format!("{test}-gateway-{i}"),
            &bin("gateway"),
            &[
                "--listen".into(),
                format!("127.0.0.1:{gport}"),
                "--metrics-listen".into(),
                format!("127.0.0.1:{gm}"),
                "--fanout".into(),
                format!("http://127.0.0.1:{fanout_port}"),
                "--persister".into(),
                format!("http://127.0.0.1:{}", self.persister_port),
                "--drain-seconds".into(),
                "2".into(),
                "--webtransport-cert".into(),
                webtransport_cert().cert.display().to_string(),
                "--webtransport-key".into(),
                webtransport_cert().key.display().to_string(),
                "--api-listen".into(),
                format!("127.0.0.1:{api}"),
                "--api-key".into(),
                API_KEY.into(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect::<Vec<String>>(),
        ));
        self.gateway_ports.push(gport);
        self.api_ports.push(api);
    }

    /// The stack's one Redis; panics on a cluster stack.
    pub fn redis(&mut self) -> &mut Redis {
        match &mut self.broker {
            RedisSetup::Single(redis) => redis,
            RedisSetup::Cluster(_) => panic!("this stack runs on a Redis Cluster, not one Redis"),
        }
    }

    pub fn ws_url(&self, gateway: usize) -> String {
        format!("ws://127.0.0.1:{}", self.gateway_ports[gateway])
    }

    /// The gateway's WebTransport (UDP, the same port number); [`Client::connect_query`]
    /// takes it like a `ws://` URL.
    pub fn wt_url(&self, gateway: usize) -> String {
        format!("https://127.0.0.1:{}", self.gateway_ports[gateway])
    }

    pub fn persister_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.persister_port)
    }

    /// Every stored (non-tombstone) message id of a room, from MongoDB itself.
    pub async fn stored_ids(&self, room: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let client = self.mongo.client().await;
        let coll = client.database(&self.database).collection::<mongodb::bson::Document>("messages");
        let docs: Vec<mongodb::bson::Document> = coll
            .find(mongodb::bson::doc! {"room": room, "tombstone": false})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect");
        docs.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_owned)).collect()
    }
}

pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate for the gateways' WebTransport, made once per test process: ECDSA P-256,
/// valid 10 days, so that clients can accept it by its hash, as browsers do.
pub fn webtransport_cert() -> &'static CertFiles {
    static CERT: std::sync::OnceLock<CertFiles> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let identity = wtransport::Identity::self_signed_builder()
            .subject_alt_names(["localhost", "127.0.0.1"])
            .from_now_utc()
            .validity_days(10)
            .build()
            .expect("self-signed certificate");
        let dir = log_dir().join(format!("wt-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let files = CertFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        let chain: String = identity.certificate_chain().as_slice().iter().map(|c| c.to_pem()).collect();
        std::fs::write(&files.cert, chain).expect("write cert.pem");
        std::fs::write(&files.key, identity.private_key().to_secret_pem()).expect("write key.pem");
        files
    })
}

/// A one-process `roomcast` on free ports with its store in `dir`; `extra` flags are
/// appended. Returns (process, HTTP port, metrics port) once it is ready.
pub fn start_roomcast(name: &str, dir: &Path, extra: &[&str]) -> (Proc, u16, u16) {
    let (port, metrics) = (free_port(), free_port());
    let mut args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics}"),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if !extra.contains(&"--api-listen") {
        // Its default port is one for all: tests run side by side.
        args.extend(["--api-listen".to_owned(), format!("127.0.0.1:{}", free_port())]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::spawn(name, &bin("roomcast"), &args);
    wait_ready(metrics, Duration::from_secs(30));
    (proc, port, metrics)
}

/// A process's resident memory, from /proc (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status")
}

/// One sample of a counter or gauge from a Prometheus /metrics page: the sum over every
/// series whose name and labels start with `prefix` (e.g. `name{reason="x"`).
pub fn metric(port: u16, prefix: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("GET /metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Blocks until GET /readyz answers 200.
pub fn wait_ready(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_get(port, "/readyz").map(|(status, _)| status == 200).unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("port {port} did not become ready within {limit:?}; see test-output/logs");
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// One server API call over HTTP/1.0: `key` as `Authorization: apikey KEY`, `body` as
/// JSON. Answers the status and the JSON body (`Null` when it is not JSON).
pub fn api_call(port: u16, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server API");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if let Some(key) = key {
        head += &format!("Authorization: apikey {key}\r\n");
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        head += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    }
    write!(stream, "{head}\r\n{body}").expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A server API call with [`API_KEY`] and a JSON body.
pub fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_call(port, method, path, Some(API_KEY), body.map(|b| b.to_string()).as_deref())
}

/// A JSON-protocol client, on `/ws` or `/wt`, that records everything it receives.
pub struct Client {
    pub user: String,
    link: Link,
    /// Every frame received, in order.
    pub frames: Vec<Value>,
}

enum Link {
    Ws(WebSocketStream<MaybeTlsStream<TokioTcp>>),
    Wt(WtLink),
}

/// A WebTransport session and its one stream, read line by line.
pub struct WtLink {
    connection: wtransport::Connection,
    send: wtransport::SendStream,
    lines: FramedRead<wtransport::RecvStream, LinesCodec>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

/// A WebTransport session's end: its close code and reason, or why it failed.
pub fn wt_close(err: &wtransport::error::ConnectionError) -> (u32, String) {
    match err {
        wtransport::error::ConnectionError::ApplicationClosed(close) => (
            u32::try_from(close.code().into_inner()).unwrap_or(u32::MAX),
            String::from_utf8_lossy(close.reason()).into_owned(),
        ),
        other => (0, other.to_string()),
    }
}

/// A refused WebTransport session: the last line it was sent, and its close code and
/// reason. Panics if the session was admitted.
pub async fn wt_refusal(port: u16, query: &str) -> (Value, u32, String) {
    let mut link = WtLink::connect(port, query).await.expect("the session opens before it is refused");
    link.write(b"{\"type\":\"rooms\"}\n").await.ok();
    let mut last = Value::Null;
    while let Ok(Some(Ok(line))) = tokio::time::timeout(WAIT, link.lines.next()).await {
        last = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(last["type"], "close", "a refused session is sent nothing but its close: {last}");
    }
    let closed = tokio::time::timeout(WAIT, link.connection.closed()).await.expect("the refused session closes");
    let (code, reason) = wt_close(&closed);
    (last, code, reason)
}

/// The certificate hash the server at `port` offers on `GET /wt/cert-hash`.
fn offered_hash(port: u16) -> Result<wtransport::tls::Sha256Digest, String> {
    let (status, body) = http_get(port, "/wt/cert-hash").map_err(|err| format!("GET /wt/cert-hash: {err}"))?;
    if status != 200 {
        return Err(format!("GET /wt/cert-hash answered {status}: {body}"));
    }
    let offered: Value = serde_json::from_str(&body).map_err(|err| format!("/wt/cert-hash: {err}: {body}"))?;
    let hex = offered["sha256"].as_str().ok_or_else(|| format!("/wt/cert-hash has no sha256: {body}"))?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|err| format!("/wt/cert-hash sha256 {hex:?}: {err}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| format!("/wt/cert-hash sha256 {hex:?} is not 32 bytes"))?;
    Ok(wtransport::tls::Sha256Digest::new(bytes))
}

impl WtLink {
    /// Opens a session to `https://127.0.0.1:port/wt?{query}` and its stream (a refused
    /// session is opened too, then closed: see [`wt_refusal`]).
    pub async fn connect(port: u16, query: &str) -> Result<WtLink, String> {
        let hash = offered_hash(port)?;
        let config =
            wtransport::ClientConfig::builder().with_bind_default().with_server_certificate_hashes([hash]).build();
        let endpoint = wtransport::Endpoint::client(config).map_err(|err| err.to_string())?;
        let url = format!("https://127.0.0.1:{port}/wt?{query}");
        let connection = match endpoint.connect(&url).await {
            Ok(connection) => connection,
            Err(wtransport::error::ConnectingError::ConnectionError(err)) => {
                let (code, reason) = wt_close(&err);
                return Err(format!("{code} {reason}"));
            }
            Err(err) => return Err(format!("connect {url}: {err}")),
        };
        let opened = connection.open_bi().await.map_err(|err| err.to_string())?.await;
        let (send, recv) = match opened {
            Ok(stream) => stream,
            Err(err) => {
                let (code, reason) = wt_close(&connection.closed().await);
                return Err(format!("{code} {reason} ({err})"));
            }
        };
        let lines = FramedRead::new(recv, LinesCodec::new_with_max_length(4 << 20));
        Ok(WtLink { connection, send, lines, _endpoint: endpoint })
    }

    /// Writes raw bytes on the stream (a line is the caller's to end with `\n`).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send.write_all(bytes).await.map_err(|err| err.to_string())
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

impl Client {
    pub async fn connect(base: &str, user: &str) -> Client {
        Client::connect_query(base, user, &format!("user={user}"))
            .await
            .unwrap_or_else(|err| panic!("connect {base} as {user}: {err}"))
    }

    /// Connects from the local address `source` (any of 127/8) to 127.0.0.1:`port`.
    pub async fn connect_from(source: &str, port: u16, user: &str) -> Result<Client, String> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{source}:0").parse().expect("source address")).expect("bind the source address");
        let tcp = socket.connect(addr(port)).await.map_err(|err| err.to_string())?;
        let url = format!("ws://127.0.0.1:{port}/ws?user={user}");
        match tokio_tungstenite::client_async(&url, MaybeTlsStream::Plain(tcp)).await {
            Ok((ws, _)) => Ok(Client { user: user.to_owned(), link: Link::Ws(ws), frames: Vec::new() }),
            Err(err) => Err(refusal(err)),
        }
    }

    /// Connects to `/ws?{query}`, or `/wt?{query}` when `base` is `https://127.0.0.1:PORT`
    /// ([`Stack::wt_url`]); the error carries the refusal's HTTP status and body (`/ws`).
    pub async fn connect_query(base: &str, name: &str, query: &str) -> Result<Client, String> {
        if let Some(port) = base.strip_prefix("https://127.0.0.1:") {
            let port = port.parse().map_err(|_| format!("{base}: no port"))?;
            let link = WtLink::connect(port, query).await?;
            return Ok(Client { user: name.to_owned(), link: Link::Wt(link), frames: Vec::new() });
        }
        let url = format!("{base}/ws?{query}");
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => Ok(Client { user: name.to_owned(), link: Link::Ws(ws), frames: Vec::new() }),
            Err(err) => Err(refusal(err)),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::Text(value.to_string().into())).await.expect("send frame"),
            Link::Wt(wt) => wt.write(format!("{value}\n").as_bytes()).await.expect("send line"),
        }
    }

    /// A raw WebSocket message (`/ws` only).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match &mut self.link {
            Link::Ws(ws) => ws.send(msg).await,
            Link::Wt(_) => panic!("send_raw is for /ws clients; use wt() for raw lines"),
        }
    }

    /// The WebTransport link (`/wt` clients only), for raw lines.
    pub fn wt(&mut self) -> &mut WtLink {
        match &mut self.link {
            Link::Wt(wt) => wt,
            Link::Ws(_) => panic!("{} is a /ws client", self.user),
        }
    }

    pub async fn join(&mut self, room: &str, since: Option<u64>) -> Vec<Value> {
        let frame = match since {
            Some(since) => json!({"type": "join", "room": room, "since": since}),
            None => json!({"type": "join", "room": room}),
        };
        self.send_json(frame).await;
        let joined = self.wait_for(|f| f["type"] == "joined" && f["room"] == room).await;
        joined["messages"].as_array().cloned().unwrap_or_default()
    }

    pub async fn send(&mut self, room: &str, text: &str, client_id: &str) {
        self.send_json(json!({"type": "send", "room": room, "text": text, "client_id": client_id})).await;
    }

    /// Reads until a frame matches; panics after [`WAIT`].
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.frames.iter().find(|f| pred(f)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.next_frame()).await.unwrap_or_else(|_| {
                panic!(
                    "{}: timed out waiting for a frame; last frames: {:?}",
                    self.user,
                    self.frames.iter().rev().take(5).collect::<Vec<_>>()
                )
            });
            match frame {
                Some(frame) => {
                    let hit = pred(&frame);
                    self.frames.push(frame.clone());
                    if hit {
                        return frame;
                    }
                }
                None => panic!("{}: connection closed while waiting", self.user),
            }
        }
    }

    /// Reads until `count` frames received match; panics after [`WAIT`].
    pub async fn wait_for_count(&mut self, pred: impl Fn(&Value) -> bool, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.frames.iter().filter(|f| pred(f)).count() < count {
            match tokio::time::timeout_at(deadline, self.next_frame()).await {
                Ok(Some(frame)) => self.frames.push(frame),
                Ok(None) => panic!("{}: connection closed while waiting for {count} frames", self.user),
                Err(_) => panic!("{}: timed out waiting for {count} frames", self.user),
            }
        }
    }

    /// The next JSON frame, or None when the connection ends.
    pub async fn next_frame(&mut self) -> Option<Value> {
        let text = match &mut self.link {
            Link::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => break text.to_string(),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            Link::Wt(wt) => wt.lines.next().await?.ok()?,
        };
        Some(serde_json::from_str(&text).expect("server sent invalid JSON"))
    }

    /// Reads until the connection closes; returns the close code (a WebTransport
    /// session's application close code).
    pub async fn wait_close(&mut self) -> Option<u32> {
        let deadline = tokio::time::Instant::now() + WAIT;
        if let Link::Wt(_) = self.link {
            while let Some(frame) =
                tokio::time::timeout_at(deadline, self.next_frame()).await.expect("timed out waiting for close")
            {
                self.frames.push(frame);
            }
            let Link::Wt(wt) = &self.link else { unreachable!() };
            let closed = tokio::time::timeout_at(deadline, wt.connection.closed()).await.expect("session close");
            return Some(wt_close(&closed).0).filter(|code| *code != 0);
        }
        let Link::Ws(ws) = &mut self.link else { unreachable!() };
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next()).await.expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u32::from(u16::from(f.code))),
                Some(Ok(Message::Text(text))) => {
                    if let Ok(v) = serde_json::from_str(&text) {
                        self.frames.push(v);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until this client has `count` message frames for `room`.
    pub async fn wait_messages(&mut self, room: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.messages(room).len() < count {
            match tokio::time::timeout_at(deadline, self.next_frame()).await {
                Ok(Some(frame)) => self.frames.push(frame),
                Ok(None) => {
                    panic!("{}: connection closed with {} of {count} messages", self.user, self.messages(room).len())
                }
                Err(_) => panic!("{}: timed out with {} of {count} messages", self.user, self.messages(room).len()),
            }
        }
    }

    /// Reads whatever arrives within `quiet`, to catch duplicates that come late.
    pub async fn settle(&mut self, quiet: Duration) {
        while let Ok(Some(frame)) = tokio::time::timeout(quiet, self.next_frame()).await {
            self.frames.push(frame);
        }
    }

    /// (seq, id) of every live message frame received for `room`, in arrival order.
    pub fn messages(&self, room: &str) -> Vec<(u64, String)> {
        self.frames
            .iter()
            .filter(|f| f["type"] == "message" && f["room"] == room)
            .map(|f| (f["seq"].as_u64().expect("seq"), f["id"].as_str().expect("id").to_owned()))
            .collect()
    }

    /// The ids of this client's live messages for `room`, asserting their seqs strictly
    /// increase (so no duplicate and no reordering).
    pub fn ordered_ids(&self, room: &str) -> Vec<String> {
        let messages = self.messages(room);
        for pair in messages.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{}: seq {} came after {} in room {room}", self.user, pair[1].0, pair[0].0);
        }
        messages.into_iter().map(|(_, id)| id).collect()
    }

    pub fn acks(&self) -> Vec<Value> {
        self.frames.iter().filter(|f| f["type"] == "ack").cloned().collect()
    }

    pub fn errors(&self) -> Vec<Value> {
        self.frames.iter().filter(|f| f["type"] == "error").cloned().collect()
    }

    pub async fn close(self) {
        match self.link {
            Link::Ws(mut ws) => {
                let _ = ws.close(None).await;
            }
            Link::Wt(wt) => wt.connection.close(wtransport::VarInt::from_u32(1000), b"bye"),
        }
    }
}

/// A refused upgrade as "STATUS body", or the error.
fn refusal(err: tokio_tungstenite::tungstenite::Error) -> String {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            format!("{} {}", response.status().as_u16(), body.trim())
        }
        err => err.to_string(),
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
