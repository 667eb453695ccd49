//! The front door's settings, shared by `gateway` and `roomcast`: every limit, the
//! authentication, the optional TLS and WebTransport, each a flag and an environment
//! variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::admission::Access;
use crate::auth::Auth;
use crate::jwks::Jwks;
use crate::limits::Limits;
use crate::wt::{Certificate, WebTransportConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct EdgeArgs {
    /// Connections this process holds at once (0: no limit); beyond it, 503 `server_full`.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Connections one client IP may hold at once (0: no limit); beyond it, 429. Behind an
    /// L7 load balancer every client shares its address: set 0 there and limit at the edge.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_IP", default_value_t = Limits::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Frames (Socket.IO events) per second one connection may send; beyond, `rate_limited`.
    #[arg(long, env = "ROOMCAST_FRAMES_PER_SECOND", default_value_t = Limits::default().frames_per_second)]
    pub frames_per_second: u32,
    /// Frames one connection may send in a burst above that rate.
    #[arg(long, env = "ROOMCAST_FRAME_BURST", default_value_t = Limits::default().frame_burst)]
    pub frame_burst: u32,
    /// Sends one user may make per second across all its connections and gateways (a
    /// budget the broker keeps); beyond, `rate_limited`. 0: no user budget.
    #[arg(long, env = "ROOMCAST_USER_SENDS_PER_SECOND", default_value_t = Limits::default().user_sends_per_second)]
    pub user_sends_per_second: f64,
    /// Sends one user may make at once above that rate.
    #[arg(long, env = "ROOMCAST_USER_SEND_BURST", default_value_t = Limits::default().user_send_burst)]
    pub user_send_burst: u32,
    /// Sends one room may take per second from all its members, so that one room cannot
    /// take the whole store; beyond, `rate_limited`. 0: no room budget.
    #[arg(long, env = "ROOMCAST_ROOM_SENDS_PER_SECOND", default_value_t = Limits::default().room_sends_per_second)]
    pub room_sends_per_second: f64,
    /// Sends one room may take at once above that rate.
    #[arg(long, env = "ROOMCAST_ROOM_SEND_BURST", default_value_t = Limits::default().room_send_burst)]
    pub room_send_burst: u32,
    /// While the broker cannot answer for the user and room budgets, sends go unchecked
    /// for this many seconds (counted and logged), then are refused until it answers.
    #[arg(long, env = "ROOMCAST_BUDGET_FAIL_OPEN_SECONDS", default_value_t = Limits::default().budget_fail_open.as_secs_f64())]
    pub budget_fail_open_seconds: f64,
    /// Rooms one connection may be in at once; beyond, `too_many_rooms`.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONNECTION", default_value_t = Limits::default().max_rooms_per_connection)]
    pub max_rooms_per_connection: usize,
    /// Largest text frame answered with `too_large`; frames over 1 MiB close with 1009.
    #[arg(long, env = "ROOMCAST_MAX_FRAME_BYTES", default_value_t = Limits::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Longest message text, in characters.
    #[arg(long, env = "ROOMCAST_MAX_TEXT_CHARS", default_value_t = Limits::default().max_text_chars)]
    pub max_text_chars: usize,
    /// Bytes queued towards one client before it is closed with 4001 (slow consumer).
    #[arg(long, env = "ROOMCAST_SEND_QUEUE_BYTES", default_value_t = Limits::default().send_queue_bytes)]
    pub send_queue_bytes: usize,
    /// Bytes queued towards all /ws clients of this process together (0: no bound). Past
    /// it, a client that is behind (over 1/8 of its own queue) is closed with 4001 as it
    /// is sent more, so the slowest go first and the clients that keep up are not cut.
    #[arg(long, env = "ROOMCAST_SEND_QUEUE_BUDGET_BYTES", default_value_t = Limits::default().send_queue_budget_bytes)]
    pub send_queue_budget_bytes: usize,
    /// /ws sends a ping this often (seconds); a client silent for 2.5 times as long, pongs
    /// included, is closed with 1001.
    #[arg(long, env = "ROOMCAST_PING_SECONDS", default_value_t = 30.0)]
    pub ping_seconds: f64,
    /// Rooms one user may create per minute on one gateway (`create_room`); beyond, `rate_limited`.
    #[arg(long, env = "ROOMCAST_ROOMS_CREATED_PER_MINUTE", default_value_t = Limits::default().rooms_created_per_minute)]
    pub rooms_created_per_minute: u32,
    /// Above this many users in a room, members get presence counts and no lists.
    #[arg(long, env = "ROOMCAST_PRESENCE_LIST_MAX", default_value_t = Limits::default().presence_list_max)]
    pub presence_list_max: usize,
    /// Seconds a user who left a room is still shown in its presence, so that a reload or
    /// a reconnect through another gateway does not flicker.
    #[arg(long, env = "ROOMCAST_PRESENCE_GRACE_SECONDS", default_value_t = Limits::default().presence_grace.as_secs_f64())]
    pub presence_grace_seconds: f64,
    /// HS256 secret (at least 32 bytes) that client JWTs are signed with.
    #[arg(
        long,
        env = "ROOMCAST_AUTH_JWT_SECRET",
        hide_env_values = true,
        conflicts_with_all = ["auth_jwt_public_key", "auth_jwks_url", "auth_jwks_file"]
    )]
    pub auth_jwt_secret: Option<String>,
    /// PEM file of the RSA public key that client JWTs (RS256) are signed for.
    #[arg(long, env = "ROOMCAST_AUTH_JWT_PUBLIC_KEY", conflicts_with_all = ["auth_jwks_url", "auth_jwks_file"])]
    pub auth_jwt_public_key: Option<PathBuf>,
    /// URL of a JWK Set (https://; http:// only inside a trusted network) whose RSA and EC
    /// keys sign client JWTs (RS256/384/512, PS256/384/512, ES256, ES384), each token naming
    /// its key by `kid`. Fetched at start, every --auth-jwks-refresh-seconds, and at once
    /// when a token names a kid not held (at most every 10 s), so the issuer rotates keys
    /// without a restart. A failed fetch keeps the keys held; before the first good one,
    /// tokens are refused.
    #[arg(long, env = "ROOMCAST_AUTH_JWKS_URL", conflicts_with = "auth_jwks_file")]
    pub auth_jwks_url: Option<String>,
    /// A JWK Set file, for use with no issuer to fetch from: read at start (a file that is
    /// missing or holds no usable key stops the start), and again within 5 s of a change
    /// (a mounted Secret, say), so keys rotate without a restart.
    #[arg(long, env = "ROOMCAST_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Seconds between fetches of --auth-jwks-url (1 or more).
    #[arg(long, env = "ROOMCAST_AUTH_JWKS_REFRESH_SECONDS", default_value_t = 300.0)]
    pub auth_jwks_refresh_seconds: f64,
    /// Accept only tokens whose `aud` claim holds this audience.
    #[arg(long, env = "ROOMCAST_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Accept only tokens whose `iss` claim is this issuer.
    #[arg(long, env = "ROOMCAST_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Seconds a connection whose token expired has to send a new one (`refresh`) after it
    /// is asked (`refresh_needed`); then it is closed with 4401.
    #[arg(long, env = "ROOMCAST_AUTH_REFRESH_GRACE_SECONDS", default_value_t = Limits::default().refresh_grace.as_secs_f64())]
    pub auth_refresh_grace_seconds: f64,
    /// Refuse connections without a valid token; user names then come only from tokens.
    #[arg(long, env = "ROOMCAST_AUTH_REQUIRED")]
    pub auth_required: bool,
    /// Browser origins allowed to connect, comma-separated (e.g. https://chat.example.com);
    /// empty allows any. Clients that send no Origin (not browsers) are not affected.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain: serve HTTPS / WSS directly (for deployments without an Ingress).
    #[arg(long, env = "ROOMCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ROOMCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// UDP address of the WebTransport front door (`/wt`, HTTP/3 over QUIC); default the
    /// --listen address, on UDP; `off` turns it off.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_LISTEN")]
    pub webtransport_listen: Option<String>,
    /// PEM certificate chain for WebTransport (default --tls-cert). Without one, `gateway`
    /// serves no WebTransport, and `roomcast` makes a self-signed one valid 10 days.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_CERT", requires = "webtransport_key")]
    pub webtransport_cert: Option<PathBuf>,
    /// PEM private key of --webtransport-cert.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_KEY", requires = "webtransport_cert")]
    pub webtransport_key: Option<PathBuf>,
    /// The WebTransport URL pages are told (`GET /wt/cert-hash`), when it is not the
    /// page's host at the listener's port: behind a UDP load balancer, say.
    #[arg(long, env = "ROOMCAST_WEBTRANSPORT_URL")]
    pub webtransport_url: Option<String>,
}

/// The settings, checked and loaded.
pub struct Edge {
    pub limits: Limits,
    pub access: Access,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Whether a process without a certificate makes one for WebTransport.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SelfSign {
    /// `roomcast`, on one machine: browsers accept it by its hash.
    Allowed,
    /// `gateway`: WebTransport is off without a certificate.
    Never,
}

impl EdgeArgs {
    pub fn load(&self) -> anyhow::Result<Edge> {
        let limits = Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            frames_per_second: self.frames_per_second,
            frame_burst: self.frame_burst,
            max_rooms_per_connection: self.max_rooms_per_connection,
            max_frame_bytes: self.max_frame_bytes,
            max_text_chars: self.max_text_chars,
            send_queue_bytes: self.send_queue_bytes,
            send_queue_budget_bytes: self.send_queue_budget_bytes,
            ping_every: std::time::Duration::try_from_secs_f64(self.ping_seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--ping-seconds must be a positive number of seconds")?,
            rooms_created_per_minute: self.rooms_created_per_minute,
            presence_list_max: self.presence_list_max,
            presence_grace: std::time::Duration::try_from_secs_f64(self.presence_grace_seconds)
                .context("--presence-grace-seconds must be a number of seconds, 0 or more")?,
            refresh_grace: std::time::Duration::try_from_secs_f64(self.auth_refresh_grace_seconds)
                .context("--auth-refresh-grace-seconds must be a number of seconds, 0 or more")?,
            user_sends_per_second: self.user_sends_per_second,
            user_send_burst: self.user_send_burst,
            room_sends_per_second: self.room_sends_per_second,
            room_send_burst: self.room_send_burst,
            budget_fail_open: std::time::Duration::try_from_secs_f64(self.budget_fail_open_seconds)
                .context("--budget-fail-open-seconds must be a number of seconds, 0 or more")?,
            ..Limits::default()
        };
        anyhow::ensure!(limits.frames_per_second > 0, "--frames-per-second must be at least 1");
        for (flag, rate) in [
            ("--user-sends-per-second", limits.user_sends_per_second),
            ("--room-sends-per-second", limits.room_sends_per_second),
        ] {
            anyhow::ensure!(rate.is_finite() && rate >= 0.0, "{flag} must be 0 (no budget) or a positive number");
        }
        anyhow::ensure!(limits.rooms_created_per_minute > 0, "--rooms-created-per-minute must be at least 1");
        anyhow::ensure!(
            limits.max_frame_bytes <= limits.hard_frame_bytes,
            "--max-frame-bytes must be at most {} (frames beyond that close the connection)",
            limits.hard_frame_bytes
        );
        let jwks_every = std::time::Duration::try_from_secs_f64(self.auth_jwks_refresh_seconds)
            .ok()
            .filter(|every| every.as_secs() >= 1)
            .context("--auth-jwks-refresh-seconds must be a number of seconds, 1 or more")?;
        let auth = match (&self.auth_jwt_secret, &self.auth_jwt_public_key, &self.auth_jwks_url, &self.auth_jwks_file) {
            (Some(secret), ..) => Some(Auth::hs256(secret)?),
            (None, Some(key), ..) => Some(Auth::rs256(key)?),
            (None, None, Some(url), _) => Some(Auth::jwks(Arc::new(Jwks::from_url(url, jwks_every)?))),
            (None, None, None, Some(file)) => Some(Auth::jwks(Arc::new(Jwks::from_file(file)?))),
            (None, None, None, None) => None,
        };
        const KEYS: &str = "--auth-jwt-secret, --auth-jwt-public-key, --auth-jwks-url or --auth-jwks-file";
        anyhow::ensure!(
            auth.is_some() || (self.auth_audience.is_none() && self.auth_issuer.is_none()),
            "--auth-audience and --auth-issuer need {KEYS} to check tokens with"
        );
        let auth = auth.map(|auth| auth.trusting(self.auth_audience.as_deref(), self.auth_issuer.as_deref()));
        anyhow::ensure!(auth.is_some() || !self.auth_required, "--auth-required needs {KEYS} to check tokens with");
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        let access = Access { auth, auth_required: self.auth_required, allowed_origins };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key).context("cannot set up TLS")?),
            _ => None,
        };
        Ok(Edge { limits, access, tls })
    }

    /// The WebTransport front door's settings, or None when it is off. `listen` is the
    /// TCP front door's address, the default.
    pub fn webtransport(&self, listen: SocketAddr, self_sign: SelfSign) -> anyhow::Result<Option<WebTransportConfig>> {
        let listen = match self.webtransport_listen.as_deref().map(str::trim) {
            Some("off") => return Ok(None),
            None | Some("") => listen,
            Some(addr) => addr.parse().with_context(|| {
                format!("--webtransport-listen {addr:?} is not an address (like 0.0.0.0:8080) nor `off`")
            })?,
        };
        let files = match (&self.webtransport_cert, &self.webtransport_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => self.tls_cert.as_ref().zip(self.tls_key.as_ref()),
        };
        let certificate = match (files, self_sign) {
            (Some((cert, key)), _) => Certificate::Files { cert: cert.clone(), key: key.clone() },
            (None, SelfSign::Allowed) => Certificate::SelfSigned,
            (None, SelfSign::Never) => return Ok(None),
        };
        if let Some(url) = &self.webtransport_url {
            anyhow::ensure!(
                url.starts_with("https://"),
                "--webtransport-url {url:?} must be an https:// URL (WebTransport runs over TLS)"
            );
        }
        Ok(Some(WebTransportConfig { listen, certificate, url: self.webtransport_url.clone() }))
    }
}
