//! Real `redis-server`s for the tests: one plain, one TLS (a CA and certificate made by
//! `openssl` here), or a 3-primary, 3-replica Redis Cluster made by `redis-cli --cluster
//! create`. The tests talk to them with `redis-cli`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, log_dir, wait_port, Proc, SETUP};

pub struct Redis {
    pub port: u16,
    pub proc: Proc,
    tls: Option<&'static TlsFiles>,
}

/// The broker a test stack's fanouts use.
pub enum RedisSetup {
    Single(Redis),
    Cluster(RedisCluster),
}

impl RedisSetup {
    /// The fanout flags that name it.
    pub fn fanout_args(&self) -> Vec<String> {
        match self {
            RedisSetup::Single(redis) => {
                let mut args = vec!["--redis".to_owned(), redis.url()];
                if let Some(tls) = redis.tls {
                    args.extend(["--redis-ca".to_owned(), tls.ca.display().to_string()]);
                }
                args
            }
            RedisSetup::Cluster(cluster) => cluster.fanout_args(),
        }
    }
}

fn program(name: &str) -> PathBuf {
    super::which(name).unwrap_or_else(|| panic!("{name} is not installed: {SETUP}"))
}

impl Redis {
    pub fn start(name: &str) -> Redis {
        Redis::start_with(name, None, &[])
    }

    /// A Redis that only speaks TLS, with a certificate for 127.0.0.1 signed by
    /// [`tls_files`]'s CA.
    pub fn start_tls(name: &str) -> Redis {
        Redis::start_with(name, Some(tls_files()), &[])
    }

    pub fn start_with(name: &str, tls: Option<&'static TlsFiles>, extra: &[String]) -> Redis {
        let port = free_port();
        // Its own directory: a cluster node writes its nodes.conf there.
        let dir = log_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        let mut args: Vec<String> =
            ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from).into();
        args.extend(["--dir".into(), dir.display().to_string()]);
        match tls {
            None => args.extend(["--port".into(), port.to_string()]),
            Some(tls) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
        }
        args.extend(extra.iter().cloned());
        let proc = Proc::spawn(name, &program("redis-server"), &args);
        wait_port(port, "redis-server", Duration::from_secs(10));
        Redis { port, proc, tls }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill and start again: Redis comes back empty (no persistence), as after a crash.
    pub fn restart(&mut self) {
        self.proc.kill();
        std::thread::sleep(Duration::from_millis(300));
        self.proc.start();
        wait_port(self.port, "redis-server", Duration::from_secs(10));
    }

    /// `redis-cli` against this server; its output, or the error it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(program("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = self.tls {
            cmd.args(["--tls", "--cacert", &tls.ca.display().to_string()]);
        }
        let out = cmd.args(args).output().unwrap_or_else(|err| panic!("cannot run redis-cli: {err}"));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

/// Nodes on loopback: 3 primaries, each with `replicas` replicas. A primary silent for
/// `NODE_TIMEOUT_MS` is failed over to its replica.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

const NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// 3 primaries and 3 replicas, plaintext.
    pub fn start(name: &str) -> RedisCluster {
        RedisCluster::start_with(name, None, 1)
    }

    /// 3 primaries, no replicas, TLS only (clients, the cluster bus), with
    /// [`tls_files`]'s CA.
    pub fn start_tls(name: &str) -> RedisCluster {
        RedisCluster::start_with(name, Some(tls_files()), 0)
    }

    fn start_with(name: &str, tls: Option<&'static TlsFiles>, replicas: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..3 * (1 + replicas))
            .map(|i| {
                // Each node keeps its nodes.conf in its own directory.
                // The bus port is given: by default it is the port + 10,000, which may not exist.
                let mut extra: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    // A replica may always take over (however long its link was down),
                    // and syncs at once instead of waiting for more replicas.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .map(String::from)
                .into();
                if tls.is_some() {
                    extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                }
                Redis::start_with(&format!("{name}-node-{i}"), tls, &extra)
            })
            .collect();
        let mut create = Command::new(program("redis-cli"));
        if let Some(tls) = tls {
            create.args(["--tls", "--cacert", &tls.ca.display().to_string()]);
        }
        create.args(["--cluster", "create"]).args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The fanout flags that name it.
    pub fn fanout_args(&self) -> Vec<String> {
        let mut args = vec!["--redis-cluster".to_owned(), self.seeds()];
        if let Some(tls) = self.nodes.first().and_then(|n| n.tls) {
            args.extend(["--redis-ca".to_owned(), tls.ca.display().to_string()]);
        }
        args
    }

    /// Every running node says `cluster_state:ok`, there are 3 running primaries, and
    /// every running replica's link to its primary is up.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let running: Vec<&Redis> = self.nodes.iter().filter(|n| n.proc.is_running()).collect();
            let ok = running.iter().all(|n| {
                let replication = n.cli(&["INFO", "replication"]);
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            });
            if ok && self.primaries().len() == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster is not healthy after {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn seeds(&self) -> String {
        self.nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
    }

    /// The node index of each running primary and its slot ranges, from a running node's
    /// `CLUSTER SLOTS` view (a killed primary drops out at once, its replica comes in
    /// when promoted).
    pub fn primaries(&self) -> Vec<(usize, Vec<(u16, u16)>)> {
        let Some(any) = self.nodes.iter().find(|n| n.proc.is_running()) else { return Vec::new() };
        // redis-cli prints CLUSTER SLOTS flattened: start, end, then host, port, id per node.
        let lines: Vec<String> = any.cli(&["CLUSTER", "SLOTS"]).lines().map(str::to_owned).collect();
        let mut primaries: Vec<(usize, Vec<(u16, u16)>)> = Vec::new();
        let mut i = 0;
        while i + 4 < lines.len() {
            let (start, end, port) =
                (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>(), lines[i + 3].parse::<u16>());
            if let (Ok(start), Ok(end), Ok(port)) = (start, end, port) {
                if let Some(node) = self.nodes.iter().position(|n| n.port == port && n.proc.is_running()) {
                    match primaries.iter_mut().find(|(n, _)| *n == node) {
                        Some((_, ranges)) => ranges.push((start, end)),
                        None => primaries.push((node, vec![(start, end)])),
                    }
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        primaries
    }

    /// The slot Redis gives `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let any = self.nodes.iter().find(|n| n.proc.is_running()).expect("a running node");
        let reply = any.cli(&["CLUSTER", "KEYSLOT", key]);
        reply.trim().parse().unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {reply:?}"))
    }

    /// The node index of the primary serving `slot`.
    pub fn primary_of(&self, slot: u16) -> usize {
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(start, end)| (*start..=*end).contains(&slot)))
            .map(|(node, _)| node)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }
}

/// A private CA and a server certificate for 127.0.0.1 and localhost, made once per
/// test process with `openssl`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Another CA, which did not sign the server's certificate.
    pub other_ca: PathBuf,
}

pub fn tls_files() -> &'static TlsFiles {
    static FILES: std::sync::OnceLock<TlsFiles> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = log_dir().join(format!("redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the TLS directory");
        let path = |name: &str| dir.join(name);
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write san.ext");
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "redis.key",
                "-out",
                "redis.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "redis.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "redis.pem",
            ],
        );
        TlsFiles { ca: path("ca.pem"), cert: path("redis.pem"), key: path("redis.key"), other_ca: path("other-ca.pem") }
    })
}

fn make_ca(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subject = format!("/CN=roomcast test {name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &key, "-out", &pem, "-subj",
            &subject,
        ],
    );
}

/// `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(program("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run openssl: {err}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
