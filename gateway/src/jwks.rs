//! Client-token keys from a JWK Set (RFC 7517), so that an identity provider can rotate
//! its signing keys without a gateway restart. A token names its key by `kid`. The set
//! comes from `--auth-jwks-url`, fetched at start, every `--auth-jwks-refresh-seconds`, and
//! soon after a token names a kid not held (at most every 10 s); or from `--auth-jwks-file`,
//! read again within 5 s of a change. A failed load keeps the keys held: an identity
//! provider that is down for a while must not lock every client out.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use metrics::{counter, gauge};

/// A token naming a kid not held asks for a load at most this often, so that made-up kids
/// cannot make this server hammer the identity provider.
pub const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(10);
/// How often `--auth-jwks-file` is checked for a change.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// A fetch gives up after this long, so that a stuck server cannot hold the refreshes.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer answers are refused: a key set is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// The algorithms a JWKS key may verify. No HS*: a shared secret is never taken from a set.
pub const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// A key of the set, and the one algorithm it verifies.
pub struct Key {
    pub decoding: DecodingKey,
    pub algorithm: Algorithm,
}

/// The keys held, by kid.
pub type Keys = HashMap<String, Key>;

/// The file's modification time and length, or None while it cannot be read.
type Stamp = Option<(Option<SystemTime>, u64)>;

enum Source {
    Url { url: reqwest::Url, client: reqwest::Client, every: Duration },
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url { url, .. } => write!(f, "--auth-jwks-url {url}"),
            Source::File(path) => write!(f, "--auth-jwks-file {}", path.display()),
        }
    }
}

/// The key set that client tokens are checked with, swapped whole on each good load.
pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<Keys>>,
    /// The text of the set held, so that an unchanged answer is neither parsed nor logged again.
    text: Mutex<Option<String>>,
    /// When a load last succeeded, for the log line of a failed one.
    last_ok: Mutex<Option<SystemTime>>,
    /// Set by a token with an unknown kid, taken by [`Jwks::keep_fresh`].
    wanted: tokio::sync::Notify,
    /// Woken after every load [`Jwks::keep_fresh`] makes, good or not.
    loaded: tokio::sync::Notify,
    last_wanted: Mutex<Option<Instant>>,
    /// `--auth-jwks-file` as last seen.
    stamp: Mutex<Stamp>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Jwks {
    /// `--auth-jwks-file`, read now: a file that is missing or holds no usable key stops
    /// the start, rather than a server that would refuse every token.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let jwks = Self::new(Source::File(path.to_owned()));
        let read = || -> anyhow::Result<(Stamp, String)> {
            let stamp = stamp_of(&std::fs::metadata(path)?);
            Ok((stamp, std::fs::read_to_string(path)?))
        };
        let (stamp, text) = read().with_context(|| format!("cannot read --auth-jwks-file {}", path.display()))?;
        jwks.load(&text).with_context(|| format!("--auth-jwks-file {} cannot be used", path.display()))?;
        *lock(&jwks.stamp) = stamp;
        jwks.record("start", Ok(()));
        Ok(jwks)
    }

    /// `--auth-jwks-url`. Nothing is fetched before [`Jwks::keep_fresh`] runs: until a
    /// fetch succeeds, tokens are refused.
    pub fn from_url(url: &str, every: Duration) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--auth-jwks-url {url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
            "--auth-jwks-url {url:?} must be an http:// or https:// URL"
        );
        if parsed.scheme() == "http" && !matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
            tracing::warn!(
                "--auth-jwks-url {url} is plain HTTP: whoever can change that traffic can make this server trust \
                 their keys; use https:// outside a trusted network"
            );
        }
        // No redirects: one could take an https:// URL to plain HTTP.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("roomcast-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client for --auth-jwks-url")?;
        Ok(Self::new(Source::Url { url: parsed, client, every }))
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            keys: RwLock::default(),
            text: Mutex::default(),
            last_ok: Mutex::default(),
            wanted: tokio::sync::Notify::new(),
            loaded: tokio::sync::Notify::new(),
            last_wanted: Mutex::default(),
            stamp: Mutex::default(),
        }
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks [`Jwks::keep_fresh`] for a load soon, for a token whose kid is not held; at
    /// most once per [`UNKNOWN_KID_EVERY`]. Returns whether it asked.
    pub fn want_refresh(&self) -> bool {
        let mut last = lock(&self.last_wanted);
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        self.wanted.notify_one();
        true
    }

    /// For a token that names `kid`, before it is verified: when the kid is not held and
    /// a load may be asked for now, asks for one and waits for it (at most the fetch's
    /// timeout), so that a token signed with a key its issuer just published is verified
    /// at its first try.
    pub async fn learn(&self, kid: &str) {
        if self.keys().contains_key(kid) {
            return;
        }
        let loaded = self.loaded.notified();
        tokio::pin!(loaded);
        loaded.as_mut().enable();
        if self.want_refresh() {
            let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), loaded).await;
        }
    }

    /// Keeps the keys fresh, for as long as it runs (the gateway's life). A URL is fetched
    /// at once, then every --auth-jwks-refresh-seconds and when asked; a file is read
    /// again when its modification time or length changes, checked every 5 s and when asked.
    pub async fn keep_fresh(self: Arc<Self>) {
        match &self.source {
            Source::Url { url, client, every } => {
                self.refresh(url, client, "start").await;
                loop {
                    let trigger = tokio::select! {
                        () = tokio::time::sleep(*every) => "interval",
                        () = self.wanted.notified() => "unknown_kid",
                    };
                    self.refresh(url, client, trigger).await;
                    self.loaded.notify_waiters();
                }
            }
            Source::File(path) => loop {
                tokio::select! {
                    () = tokio::time::sleep(FILE_CHECK_EVERY) => {}
                    () = self.wanted.notified() => {}
                }
                self.reread(path).await;
                self.loaded.notify_waiters();
            },
        }
    }

    async fn refresh(&self, url: &reqwest::Url, client: &reqwest::Client, trigger: &'static str) {
        let result = match fetch(client, url).await {
            Ok(text) => self.load(&text),
            Err(err) => Err(err),
        };
        self.record(trigger, result);
    }

    async fn reread(&self, path: &Path) {
        let meta = tokio::fs::metadata(path).await;
        let now = meta.as_ref().ok().and_then(stamp_of);
        let changed = std::mem::replace(&mut *lock(&self.stamp), now) != now;
        if !changed {
            return;
        }
        let result = match meta {
            Ok(_) => tokio::fs::read_to_string(path).await.context("cannot read it").and_then(|text| self.load(&text)),
            Err(err) => Err(err).context("cannot read it"),
        };
        self.record("file", result);
    }

    /// Makes the usable keys of `text` the keys held, unless it holds none.
    fn load(&self, text: &str) -> anyhow::Result<()> {
        let mut held = lock(&self.text);
        if held.as_deref() == Some(text) {
            return Ok(());
        }
        let (keys, skipped) = parse(text)?;
        for why in &skipped {
            tracing::warn!(source = %self.source, "a key of the JWKS is not used: {why}");
        }
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        tracing::info!(source = %self.source, ?kids, "JWKS loaded: {} keys", kids.len());
        gauge!("roomcast_gateway_jwks_keys").set(keys.len() as f64);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        *held = Some(text.to_owned());
        Ok(())
    }

    /// Counts a load and, when it failed, says so in one line: what, where, and what is kept.
    fn record(&self, trigger: &'static str, result: anyhow::Result<()>) {
        let label = if result.is_ok() { "ok" } else { "failed" };
        counter!("roomcast_gateway_jwks_refreshes_total", "result" => label, "trigger" => trigger).increment(1);
        let now = SystemTime::now();
        match result {
            Ok(()) => {
                *lock(&self.last_ok) = Some(now);
                let unix = now.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                gauge!("roomcast_gateway_jwks_last_success_timestamp_seconds").set(unix);
            }
            Err(err) => {
                let (held, last_ok) = (self.keys().len(), *lock(&self.last_ok));
                let kept = match last_ok {
                    Some(at) => {
                        let ago = now.duration_since(at).unwrap_or_default().as_secs();
                        format!("keeping {held} keys from the last good load, {ago} s ago")
                    }
                    None => "no keys held yet: tokens are refused until a load succeeds".to_owned(),
                };
                let source = &self.source;
                tracing::warn!(%source, trigger, "cannot load the JWKS from {source}: {err:#}; {kept}");
            }
        }
    }
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    Some((meta.modified().ok(), meta.len()))
}

/// GET `url`: a 200 answer of at most [`MAX_BODY`] bytes, as text.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> anyhow::Result<String> {
    let mut response = client.get(url.clone()).header(reqwest::header::ACCEPT, "application/json").send().await?;
    anyhow::ensure!(response.status() == reqwest::StatusCode::OK, "it answered HTTP {}", response.status());
    let over = || anyhow::anyhow!("its answer is over {} KiB, too long for a key set", MAX_BODY >> 10);
    if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("its answer was cut off")? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).context("its answer is not UTF-8 text")
}

/// The usable keys of a JWK Set, and why each other key is not used. A key that cannot
/// be used is skipped, so that one odd key does not take the others down; a set with no
/// usable key is an error.
fn parse(text: &str) -> anyhow::Result<(Keys, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(text).context("it is not a JWK Set (a JSON object {\"keys\": [...]})")?;
    let (mut keys, mut skipped) = (Keys::new(), Vec::new());
    for (n, jwk) in set.keys.into_iter().enumerate() {
        match usable(jwk) {
            Ok((kid, key)) => match keys.entry(kid) {
                Entry::Vacant(slot) => {
                    slot.insert(key);
                }
                Entry::Occupied(taken) => skipped.push(format!("key {n}: kid {:?} is an earlier key's", taken.key())),
            },
            Err(why) => skipped.push(format!("key {n}: {why}")),
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() { "its keys list is empty".to_owned() } else { skipped.join("; ") };
        anyhow::bail!("it holds no key this server can use (RSA or EC, with a kid): {why}");
    }
    Ok((keys, skipped))
}

/// A key and its kid, or why it cannot be used.
fn usable(value: serde_json::Value) -> Result<(String, Key), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|err| format!("it is not a JWK this server reads ({err})"))?;
    let Some(kid) = jwk.common.key_id.clone().filter(|kid| !kid.is_empty()) else {
        return Err("it has no kid, by which tokens name their key".into());
    };
    let named = jwk.common.key_algorithm;
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "{kid:?} is a shared secret (kty oct): a key set is published, and a secret in it would let anyone \
                 who reads it sign tokens"
            ));
        }
        _ if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) => {
            return Err(format!("{kid:?} is for encryption (use enc), not for signatures"));
        }
        AlgorithmParameters::RSA(rsa) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('='));
            let bits = n.map_or(0, |n| n.len() * 8);
            if bits < 2048 {
                return Err(format!("{kid:?} is an RSA key of {bits} bits; this server takes 2048 or more"));
            }
            match named {
                // Some identity providers name no alg; RS256 is what they sign with.
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(other) => return Err(format!("{kid:?} is an RSA key for {other:?}, not an RS* or PS* signature")),
            }
        }
        AlgorithmParameters::EllipticCurve(ec) => match (&ec.curve, named) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            (curve, alg) => {
                let alg = alg.map_or_else(|| "no alg".to_owned(), |alg| format!("alg {alg:?}"));
                return Err(format!(
                    "{kid:?} is an EC key on {curve:?} with {alg}; this server takes P-256 (ES256) and P-384 (ES384)"
                ));
            }
        },
        _ => return Err(format!("{kid:?} is neither an RSA nor an EC key, the kinds this server takes")),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|err| format!("{kid:?} cannot be read: {err}"))?;
    Ok((kid, Key { decoding, algorithm }))
}

/// Keys and tokens for tests, with no crate beyond the gateway's own: a P-256 key pair
/// from the WebTransport self-signed certificate maker, its public JWK from jsonwebtoken.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::Jwks;

    pub struct TestKey {
        pub key: EncodingKey,
        pub jwk: Jwk,
    }

    impl TestKey {
        /// A new ES256 key named `kid`.
        pub fn new(kid: &str) -> Self {
            let identity = wtransport::Identity::self_signed_builder()
                .subject_alt_names(["localhost"])
                .from_now_utc()
                .validity_days(1)
                .build()
                .expect("a P-256 key pair");
            let pem = identity.private_key().to_secret_pem();
            let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("a PKCS#8 P-256 key");
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("its public JWK");
            jwk.common.key_id = Some(kid.to_owned());
            Self { key, jwk }
        }

        /// A token with `claims`, its header naming `kid` (None: no kid).
        pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
        }
    }

    /// A JWK Set of these keys' public halves.
    pub fn set(keys: &[&TestKey]) -> String {
        serde_json::json!({"keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()}).to_string()
    }

    /// A key store holding the JWK Set `text`.
    pub fn holding(text: &str) -> Arc<Jwks> {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        Arc::new(Jwks::from_file(file.path()).expect("a usable set"))
    }

    /// Makes the JWK Set `text` the one `jwks` holds, as a load from its source does.
    pub fn replace(jwks: &Jwks, text: &str) {
        jwks.load(text).expect("a usable set");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{set, TestKey};
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn only_signature_keys_with_a_kid_are_held() {
        let a = TestKey::new("a");
        let mut no_kid = TestKey::new("x").jwk;
        no_kid.common.key_id = None;
        let mut for_encryption = TestKey::new("e").jwk;
        for_encryption.common.public_key_use = Some(PublicKeyUse::Encryption);
        let secret = serde_json::json!({"kty": "oct", "kid": "s", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldA"});
        let unknown = serde_json::json!({"kty": "AKP", "kid": "w", "alg": "ML-DSA-44", "pub": "AAAA"});
        let text = serde_json::json!({"keys": [a.jwk, no_kid, for_encryption, secret, unknown, a.jwk]}).to_string();
        let (keys, skipped) = parse(&text).expect("a set with one usable key");
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(keys["a"].algorithm, Algorithm::ES256);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped[0].contains("no kid") && skipped[1].contains("encryption"), "{skipped:?}");
        assert!(skipped[2].contains("shared secret") && skipped[4].contains("earlier key"), "{skipped:?}");
    }

    #[test]
    fn rsa_keys_verify_their_named_algorithm_or_rs256() {
        // The RSA public key of RFC 7517, appendix A.1 (2048 bits).
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE\
                 CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Q\
                 vzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6\
                 WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let text = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "plain", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "pss", "alg": "PS384", "use": "sig", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "mislabelled", "alg": "ES256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": short, "e": "AQAB"}
        ]});
        let (keys, skipped) = parse(&text.to_string()).expect("two usable keys");
        assert_eq!((keys["plain"].algorithm, keys["pss"].algorithm), (Algorithm::RS256, Algorithm::PS384));
        assert_eq!(keys.len(), 2);
        assert!(skipped[0].contains("for ES256") && skipped[1].contains("1024 bits"), "{skipped:?}");
    }

    #[test]
    fn a_set_file_that_cannot_be_used_stops_the_start_naming_the_file() {
        let garbage = file("<html>not a key set</html>");
        let err = format!("{:#}", Jwks::from_file(garbage.path()).err().expect("not JSON"));
        assert!(err.contains(&garbage.path().display().to_string()) && err.contains("not a JWK Set"), "{err}");
        let secrets_only = file(r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#);
        let err = format!("{:#}", Jwks::from_file(secrets_only.path()).err().expect("no usable key"));
        assert!(err.contains("holds no key this server can use") && err.contains("shared secret"), "{err}");
        let missing = garbage.path().with_extension("missing");
        let err = format!("{:#}", Jwks::from_file(&missing).err().expect("no file"));
        assert!(err.contains("cannot read --auth-jwks-file"), "{err}");
    }

    #[test]
    fn a_bad_set_keeps_the_keys_held() {
        let (a, b) = (TestKey::new("a"), TestKey::new("b"));
        let held = file(&set(&[&a]));
        let jwks = Jwks::from_file(held.path()).expect("a good file");
        assert!(jwks.load("{\"keys\": []}").is_err());
        assert!(jwks.load("not json").is_err());
        assert_eq!(jwks.keys().keys().collect::<Vec<_>>(), ["a"]);
        jwks.load(&set(&[&b])).expect("a good set");
        assert_eq!(jwks.keys().keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn unknown_kids_ask_for_a_refresh_at_most_every_10_s() {
        let jwks = Jwks::from_file(file(&set(&[&TestKey::new("a")])).path()).expect("a good file");
        assert!(jwks.want_refresh(), "the first unknown kid asks");
        assert!(!jwks.want_refresh(), "the next ones, within 10 s, do not");
        *lock(&jwks.last_wanted) = Instant::now().checked_sub(UNKNOWN_KID_EVERY);
        assert!(jwks.want_refresh(), "10 s later, one asks again");
    }

    #[tokio::test]
    async fn an_unreachable_url_fails_by_name_and_keeps_the_keys_held() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let url = format!("http://127.0.0.1:{port}/jwks.json");
        let jwks = Jwks::from_url(&url, Duration::from_secs(300)).expect("a URL");
        assert!(jwks.keys().is_empty(), "nothing is fetched before keep_fresh");
        jwks.load(&set(&[&TestKey::new("a")])).expect("a good set");
        let Source::Url { url: parsed, client, .. } = &jwks.source else { panic!("a URL source") };
        let err = format!("{:#}", fetch(client, parsed).await.expect_err("nothing listens there"));
        assert!(err.contains(&url), "{err}");
        jwks.refresh(parsed, client, "interval").await;
        assert_eq!(jwks.keys().len(), 1, "the keys held are kept");
        assert!(Jwks::from_url("ftp://keys.example/jwks.json", Duration::from_secs(1)).is_err());
        assert!(Jwks::from_url("keys.example/jwks.json", Duration::from_secs(1)).is_err());
    }
}
