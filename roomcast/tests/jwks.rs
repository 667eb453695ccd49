//! Client tokens checked with a JWK Set that rotates while the server runs: served over
//! HTTP from loopback by the test itself (`--auth-jwks-url`), or read from a file
//! (`--auth-jwks-file`). Keys are ES256 (P-256), made in the test.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{bin, log_dir, metric, start_roomcast, Client};

/// An ES256 signing key and its public JWK, named by `kid`. The P-256 key pair comes
/// from wtransport's self-signed certificate maker, a dependency already.
struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let identity = wtransport::Identity::self_signed_builder()
            .subject_alt_names(["localhost"])
            .from_now_utc()
            .validity_days(1)
            .build()
            .expect("a P-256 key pair");
        let key = EncodingKey::from_ec_pem(identity.private_key().to_secret_pem().as_bytes()).expect("PKCS#8 key");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("its public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self { kid: kid.to_owned(), key, jwk }
    }

    /// A token for `user`, valid 10 minutes, naming this key.
    fn token(&self, user: &str) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &json!({"sub": user, "exp": exp}), &self.key).expect("sign a token")
    }
}

/// A JWK Set of these keys' public halves.
fn set(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()}).to_string()
}

/// What the test's JWKS server answers, and how many requests it had.
struct Served {
    status: u16,
    body: String,
    gets: usize,
}

fn lock(served: &Mutex<Served>) -> MutexGuard<'_, Served> {
    served.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers every request on a free loopback port with `served`, one request per
/// connection, from a thread of its own (so that the test's blocking waits never stall it).
fn serve(served: Arc<Mutex<Served>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the JWKS server");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = answer(tcp, &served);
        }
    });
    port
}

fn answer(mut tcp: TcpStream, served: &Mutex<Served>) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = {
        let mut served = lock(served);
        served.gets += 1;
        (served.status, served.body.clone())
    };
    let reason = if status == 200 { "OK" } else { "Service Unavailable" };
    let length = body.len();
    write!(tcp, "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n")?;
    write!(tcp, "Connection: close\r\n\r\n{body}")?;
    tcp.flush()
}

/// Connects to /ws with a token of `key`, then closes; the refusal ("STATUS body") if refused.
async fn connects(port: u16, key: &SigningKey, user: &str) -> Result<(), String> {
    let base = format!("ws://127.0.0.1:{port}");
    Client::connect_query(&base, user, &format!("token={}", key.token(user))).await?.close().await;
    Ok(())
}

/// Waits until `done`, for at most `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {limit:?}; see test-output/logs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refreshes(metrics: u16, result: &str, trigger: &str) -> f64 {
    metric(metrics, &format!("roomcast_gateway_jwks_refreshes_total{{result=\"{result}\",trigger=\"{trigger}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_follows_a_key_rotation_and_outlives_its_server() {
    let (a, b, c) = (SigningKey::new("a"), SigningKey::new("b"), SigningKey::new("c"));
    let served = Arc::new(Mutex::new(Served { status: 200, body: set(&[&a]), gets: 0 }));
    let url = format!("http://127.0.0.1:{}/jwks.json", serve(served.clone()));
    let _ = std::fs::remove_file(log_dir().join("jwks-url.log"));
    let dir = tempfile::tempdir().expect("tempdir");
    // The default interval (300 s): every fetch after the first is one a token asked for.
    let (_proc, port, metrics) = start_roomcast("jwks-url", dir.path(), &["--auth-jwks-url", &url, "--auth-required"]);
    let gets = || lock(&served).gets;
    wait_until("key fetched at start", support::WAIT, || metric(metrics, "roomcast_gateway_jwks_keys") == 1.0).await;
    assert_eq!(refreshes(metrics, "ok", "start"), 1.0);
    connects(port, &a, "ada").await.expect("a token of the key served");

    // A rotation: b is published beside a. The first b token names a kid the server does not
    // hold: the set is fetched again at once, and the token verified with it, at its first try.
    lock(&served).body = set(&[&a, &b]);
    connects(port, &b, "bo").await.expect("kid b, verified at its first try");
    assert_eq!(refreshes(metrics, "ok", "unknown_kid"), 1.0);
    connects(port, &a, "ada").await.expect("kid a, still published");
    assert_eq!((gets(), metric(metrics, "roomcast_gateway_jwks_keys")), (2, 2.0), "fetched at start and for kid b");

    // Made-up kids do not make the server fetch more than once per 10 s.
    for _ in 0..5 {
        let refused = connects(port, &c, "eve").await.expect_err("kid c is never published");
        assert!(refused.contains("asked for less than 10 s ago"), "{refused}");
    }
    assert_eq!(gets(), 2, "kid c within 10 s of kid b asked for no fetch");

    // The JWKS server fails. Once 10 s have passed, kid c asks for a fetch, which gets a 503:
    // the keys held are kept, and the failure is counted and said in one line.
    lock(&served).status = 503;
    let deadline = Instant::now() + Duration::from_secs(15);
    while gets() < 3 {
        assert!(Instant::now() < deadline, "no fetch for kid c 15 s after the last one");
        connects(port, &c, "eve").await.expect_err("kid c is never published");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until("failed fetch counted", Duration::from_secs(5), || refreshes(metrics, "failed", "unknown_kid") == 1.0)
        .await;
    connects(port, &a, "ada").await.expect("kid a, kept through the failure");
    connects(port, &b, "bo").await.expect("kid b, kept through the failure");
    assert_eq!(metric(metrics, "roomcast_gateway_jwks_keys"), 2.0);
    let log = std::fs::read_to_string(log_dir().join("jwks-url.log")).expect("roomcast's log");
    let said: Vec<&str> = log.lines().filter(|line| line.contains("cannot load the JWKS")).collect();
    assert_eq!(said.len(), 1, "one line per failed fetch: {said:#?}");
    let line = said[0];
    assert!(line.contains(&url) && line.contains("HTTP 503") && line.contains("keeping 2 keys"), "{line}");
}

/// Replaces the file whole, as a Kubernetes volume does: a reader never sees half of it.
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write the new key set");
    std::fs::rename(&next, path).expect("move it in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let (a, b) = (SigningKey::new("a"), SigningKey::new("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    replace_file(&file, &set(&[&a]));
    let path = file.to_str().expect("a UTF-8 path");
    let (_proc, port, metrics) =
        start_roomcast("jwks-file", &dir.path().join("data"), &["--auth-jwks-file", path, "--auth-required"]);
    connects(port, &a, "ada").await.expect("a token of the key in the file");

    // A rotation without a restart: the file now holds b alone. No token asks for it: the
    // server notices the change by itself, within its 5 s check.
    replace_file(&file, &set(&[&b]));
    wait_until("file read again", Duration::from_secs(7), || refreshes(metrics, "ok", "file") == 1.0).await;
    connects(port, &b, "bo").await.expect("kid b, from the new file");
    let refused = connects(port, &a, "ada").await.expect_err("kid a is retired");
    assert!(refused.contains("kid \"a\" is not among this server's 1 keys"), "{refused}");

    // A broken file is counted, and the keys held are kept.
    replace_file(&file, "{\"keys\": [");
    wait_until("broken file counted", Duration::from_secs(7), || refreshes(metrics, "failed", "file") == 1.0).await;
    connects(port, &b, "bo").await.expect("kid b, kept");
}

#[test]
fn a_jwks_file_that_is_not_a_key_set_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, "<html>a login page</html>").expect("write");
    let path = file.to_str().expect("a UTF-8 path");
    let run = |args: &[&str]| {
        let out = Command::new(bin("roomcast"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("ROOMCAST_AUTH_JWT_SECRET")
            .env_remove("ROOMCAST_AUTH_JWT_PUBLIC_KEY")
            .env_remove("ROOMCAST_AUTH_JWKS_URL")
            .env_remove("ROOMCAST_AUTH_JWKS_FILE")
            .output()
            .expect("run roomcast");
        assert!(!out.status.success(), "roomcast started with {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&["--auth-jwks-file", path, "--auth-required"]);
    assert!(said.contains(path) && said.contains("not a JWK Set"), "{said}");
    let secret = "s".repeat(32);
    let said = run(&["--auth-jwks-url", "https://idp.example/jwks.json", "--auth-jwt-secret", secret.as_str()]);
    assert!(said.contains("cannot be used with"), "one source of keys: {said}");
}
