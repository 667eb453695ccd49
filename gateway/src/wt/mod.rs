//! The `/wt` front door: WebTransport (HTTP/3 over QUIC, by wtransport on quinn): the
//! listener, its certificate, and admission of each session as `/ws` admits an upgrade.
//! The first bidirectional stream a client opens carries the JSON protocol
//! ([`crate::json`]) as lines ([`lines`]). Liveness is QUIC's: keep-alives, and an idle
//! timeout instead of the silence timer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wtransport::endpoint::{endpoint_side, IncomingSession};
use wtransport::quinn::TransportConfig;
use wtransport::tls::Sha256DigestFmt;
use wtransport::{Connection, Endpoint, Identity, ServerConfig, VarInt};

use crate::admission::{credentials, Admitted, Offer, FULL};
use crate::error::{CloseCode, ConnectError};
use crate::hub::Hub;
use crate::json;
use crate::limits::Limits;

mod lines;

/// How long a client may take from its first packet to admission, and then to its stream.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// At stop, how long sessions may take to finish closing, then QUIC to send the closes.
const SHUTDOWN: Duration = Duration::from_secs(1);
/// Sessions not yet admitted, at most; beyond, new connections are refused at once.
const MAX_HANDSHAKES: usize = 1024;
/// A session's QUIC keep-alive, at most: below the idle timeout of any client (quinn's
/// default is 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Browsers accept a certificate by hash (`serverCertificateHashes`) only if it is valid
/// for at most two weeks.
const HASHABLE_VALIDITY: i64 = 14 * 86_400;
/// The self-signed certificate's validity, within [`HASHABLE_VALIDITY`].
const SELF_SIGNED_DAYS: u32 = 10;

/// Where the WebTransport certificate comes from.
pub enum Certificate {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Made at start, valid [`SELF_SIGNED_DAYS`] days, for `localhost` (one-process use).
    SelfSigned,
}

/// The settings of the WebTransport front door.
pub struct WebTransportConfig {
    pub listen: SocketAddr,
    pub certificate: Certificate,
    /// What pages are told to connect to, when not this host at `listen`'s port.
    pub url: Option<String>,
}

/// What `GET /wt/cert-hash` tells a page: where to connect, and the certificate's hash
/// when a browser may accept it by hash.
#[derive(Clone, serde::Serialize)]
pub struct Offered {
    pub url: Option<String>,
    pub port: u16,
    pub sha256: Option<String>,
}

/// A bound WebTransport listener.
pub struct WebTransport {
    endpoint: Endpoint<endpoint_side::Server>,
    pub offered: Offered,
}

impl WebTransport {
    pub async fn bind(config: WebTransportConfig, limits: &Limits) -> anyhow::Result<WebTransport> {
        let identity = match &config.certificate {
            Certificate::Files { cert, key } => Identity::load_pemfiles(cert, key).await.with_context(|| {
                format!("cannot load the WebTransport certificate {} and key {}", cert.display(), key.display())
            })?,
            Certificate::SelfSigned => Identity::self_signed_builder()
                .subject_alt_names(["localhost", "127.0.0.1", "::1"])
                .from_now_utc()
                .validity_days(SELF_SIGNED_DAYS)
                .build()
                .context("cannot make a self-signed certificate for WebTransport")?,
        };
        let leaf = identity.certificate_chain().as_slice().first().context("the WebTransport certificate is empty")?;
        let sha256 = hashable(leaf.der()).then(|| leaf.hash().fmt(Sha256DigestFmt::DottedHex).replace(':', ""));
        let server = ServerConfig::builder()
            .with_bind_address(config.listen)
            .with_custom_transport(identity, transport(limits)?)
            .build();
        let endpoint = Endpoint::server(server)
            .with_context(|| format!("cannot bind the WebTransport listener on UDP {}", config.listen))?;
        let port = endpoint.local_addr().context("the WebTransport listener has no address")?.port();
        Ok(WebTransport { endpoint, offered: Offered { url: config.url, port, sha256 } })
    }
}

/// A session's QUIC limits. Only the first bidirectional stream is read, so each session
/// may open few streams, with small windows; what is sent to it waits in its outbox,
/// bounded by `--send-queue-bytes`, rather than in QUIC's send buffer.
fn transport(limits: &Limits) -> anyhow::Result<TransportConfig> {
    let idle =
        limits.silence_limit().try_into().context("the QUIC idle timeout (2.5 x --ping-seconds) is out of range")?;
    let mut transport = TransportConfig::default();
    transport
        // The session's CONNECT stream and its one stream; HTTP/3's control and QPACK streams.
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(4u32.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((2u32 * 1024 * 1024).into())
        .send_window(u64::try_from(limits.send_queue_bytes).unwrap_or(u64::MAX))
        .datagram_receive_buffer_size(Some(16 * 1024))
        .keep_alive_interval(Some(limits.ping_every.min(KEEP_ALIVE)))
        .max_idle_timeout(Some(idle));
    Ok(transport)
}

/// True when the certificate's validity is short enough for `serverCertificateHashes`.
fn hashable(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        let validity = cert.validity();
        validity.not_after.timestamp() - validity.not_before.timestamp() <= HASHABLE_VALIDITY
    })
}

/// Accepts sessions until the gateway stops; while it drains, new ones are refused at
/// once (a browser falls back, or retries elsewhere). Then closes what is left, and
/// waits for QUIC to send those closes: a process that exits first leaves its clients
/// waiting for their idle timeout.
pub async fn serve(hub: Arc<Hub>, wt: WebTransport) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            incoming = wt.endpoint.accept() => incoming,
            _ = hub.lifecycle.stopped.cancelled() => break,
        };
        let permit = handshakes.clone().try_acquire_owned();
        match permit {
            Ok(permit) if !hub.lifecycle.closing.is_cancelled() => {
                tokio::spawn(session(hub.clone(), incoming, permit));
            }
            _ => {
                handshake_failed("draining, or too many handshakes at once");
                incoming.refuse();
            }
        }
    }
    let finishing = tokio::time::Instant::now() + SHUTDOWN;
    while wt.endpoint.open_connections() > 0 && tokio::time::Instant::now() < finishing {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart = CloseCode::Restart;
    wt.endpoint.close(VarInt::from_u32(restart.code().into()), restart.reason().as_bytes());
    let _ = tokio::time::timeout(SHUTDOWN, wt.endpoint.wait_idle()).await;
}

/// One session: admitted within [`HANDSHAKE`] of its first packet (the permit is held
/// until then), then served until it ends.
async fn session(hub: Arc<Hub>, incoming: IncomingSession, permit: OwnedSemaphorePermit) {
    let Ok(admitted) = tokio::time::timeout(HANDSHAKE, admit(&hub, incoming)).await else {
        return handshake_failed("timed out");
    };
    drop(permit);
    let Some((connection, admitted)) = admitted else { return };
    let (send, recv) = match tokio::time::timeout(HANDSHAKE, connection.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        _ => {
            connection.close(VarInt::from_u32(CloseCode::Gone.code().into()), b"open a bidirectional stream");
            return handshake_failed("no stream opened");
        }
    };
    let (incoming, wire) = lines::transport(connection, send, recv, &hub.limits);
    json::serve(hub, admitted, incoming, wire, None).await;
}

/// The session request checked as `/ws` checks an upgrade; None when it was refused.
async fn admit(hub: &Hub, incoming: IncomingSession) -> Option<(Connection, Admitted)> {
    let request = match incoming.await {
        Ok(request) => request,
        Err(err) => {
            handshake_failed(&err.to_string());
            return None;
        }
    };
    let (path, query) = request.path().split_once('?').unwrap_or((request.path(), ""));
    if path != "/wt" {
        handshake_failed("a path other than /wt");
        request.not_found().await;
        return None;
    }
    // Starting: no session. A full gateway is refused by admission itself.
    if hub.ready.not_ready_reason().is_some_and(|why| why != FULL) {
        request.too_many_requests().await;
        return None;
    }
    let (user, token) = credentials(query);
    hub.admission.prepare(token.as_deref()).await;
    let offer = Offer {
        ip: Some(request.remote_address().ip()),
        origin: request.origin(),
        token: token.as_deref(),
        user: user.as_deref(),
    };
    let refused = match hub.admission.admit(offer) {
        Ok(admitted) if admitted.user.is_some() => {
            let Ok(connection) = request.accept().await else {
                handshake_failed("the session could not be accepted");
                return None;
            };
            return Some((connection, admitted));
        }
        Ok(_) => ConnectError::InvalidUser("a user name is required on /wt: ?user=NAME, or a token".into()),
        Err(refused) => refused,
    };
    if let Ok(connection) = request.accept().await {
        tokio::spawn(lines::refuse(connection, refused));
    }
    None
}

fn handshake_failed(why: &str) {
    tracing::debug!(why, "WebTransport session failed before admission");
    metrics::counter!("roomcast_gateway_webtransport_handshake_failures_total").increment(1);
}
