//! The `/wt` front door: WebTransport (HTTP/3 over QUIC, by wtransport on quinn). The
//! first bidirectional stream a client opens carries the JSON protocol ([`crate::json`])
//! as NDJSON: one frame per line, in both directions. Admission is `/ws`'s; liveness is
//! QUIC's (keep-alives, and an idle timeout instead of the silence timer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use wtransport::endpoint::{endpoint_side, IncomingSession, SessionRequest};
use wtransport::tls::Sha256DigestFmt;
use wtransport::{Connection, Endpoint, Identity, SendStream, ServerConfig, VarInt};

use crate::admission::{Offer, FULL};
use crate::error::{CloseCode, ConnectError};
use crate::hub::Hub;
use crate::json::{self, Inbound};
use crate::limits::Limits;
use crate::outbox::Wire;

/// How long a client may take from its first packet to an open stream.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Browsers accept a certificate by hash (`serverCertificateHashes`) only if it is valid
/// for at most two weeks.
const HASHABLE_VALIDITY: i64 = 14 * 86_400;
/// The self-signed certificate's validity, within [`HASHABLE_VALIDITY`].
const SELF_SIGNED_DAYS: u32 = 10;
/// A refused session is accepted, then closed at once with this plus the HTTP status
/// `/ws` answers (4401, 4403, ...), the reason "code: message": a browser sees no status.
const REFUSED_BASE: u32 = 4000;

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
            .with_identity(identity)
            .keep_alive_interval(Some(limits.ping_every))
            .max_idle_timeout(Some(limits.silence_limit()))
            .context("the QUIC idle timeout (2.5 x --ping-seconds) is out of range")?
            .build();
        let endpoint = Endpoint::server(server)
            .with_context(|| format!("cannot bind the WebTransport listener on UDP {}", config.listen))?;
        let port = endpoint.local_addr().context("the WebTransport listener has no address")?.port();
        Ok(WebTransport { endpoint, offered: Offered { url: config.url, port, sha256 } })
    }
}

/// True when the certificate's validity is short enough for `serverCertificateHashes`.
fn hashable(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        let validity = cert.validity();
        validity.not_after.timestamp() - validity.not_before.timestamp() <= HASHABLE_VALIDITY
    })
}

/// Accepts sessions until the gateway closes; open sessions carry on until drained.
pub async fn serve(hub: Arc<Hub>, wt: WebTransport) {
    loop {
        let incoming = tokio::select! {
            incoming = wt.endpoint.accept() => incoming,
            _ = hub.lifecycle.closing.cancelled() => return,
        };
        tokio::spawn(session(hub.clone(), incoming));
    }
}

async fn session(hub: Arc<Hub>, incoming: IncomingSession) {
    let request = match tokio::time::timeout(HANDSHAKE, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => return handshake_failed(&err.to_string()),
        Err(_) => return handshake_failed("timed out"),
    };
    let (path, query) = request.path().split_once('?').unwrap_or((request.path(), ""));
    if path != "/wt" {
        handshake_failed("a path other than /wt");
        return request.not_found().await;
    }
    // Starting or draining: no session. A full gateway is refused by admission itself.
    if hub.ready.not_ready_reason().is_some_and(|why| why != FULL) {
        return request.too_many_requests().await;
    }
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    };
    let (user, token) = (param("user"), param("token"));
    let offer = Offer {
        ip: Some(request.remote_address().ip()),
        origin: request.origin(),
        token: token.as_deref(),
        user: user.as_deref(),
    };
    let admitted = match hub.admission.admit(offer) {
        Ok(admitted) if admitted.user.is_none() => {
            let missing = ConnectError::InvalidUser("a user name is required on /wt: ?user=NAME, or a token".into());
            return refuse(request, &missing).await;
        }
        Ok(admitted) => admitted,
        Err(refused) => return refuse(request, &refused).await,
    };
    let Ok(Ok(connection)) = tokio::time::timeout(HANDSHAKE, request.accept()).await else {
        return handshake_failed("the session could not be accepted");
    };
    let (send, recv) = match tokio::time::timeout(HANDSHAKE, connection.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        _ => {
            connection.close(VarInt::from_u32(CloseCode::Gone.code().into()), b"open a bidirectional stream");
            return handshake_failed("no stream opened");
        }
    };
    // One byte over the hard limit tells an oversized line from one at the limit.
    let lines = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), hub.limits.hard_frame_bytes + 1);
    let incoming = FramedRead::new(recv, lines).map(inbound);
    let wire = WtWire { connection: connection.clone(), send, buffer: BytesMut::new(), lost: 0 };
    json::serve(hub, admitted, incoming, wire, None).await;
}

/// One line from the client: a frame, an empty line (ignored), or why reading stopped.
fn inbound(line: Result<Bytes, AnyDelimiterCodecError>) -> Inbound {
    match line {
        Ok(line) => {
            let line = if line.ends_with(b"\r") { line.slice(..line.len() - 1) } else { line };
            match Utf8Bytes::try_from(line) {
                Ok(text) if text.trim().is_empty() => Inbound::Alive,
                Ok(text) => Inbound::Text(text),
                Err(_) => Inbound::Binary,
            }
        }
        Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
            Inbound::TooLarge("a line over the 1 MiB hard limit".into())
        }
        Err(AnyDelimiterCodecError::Io(err)) => Inbound::Failed(err.to_string()),
    }
}

/// Admits nothing: the session opens only to be closed with the refusal's code, which
/// a browser can read (`WebTransport.closed`), unlike an HTTP status.
async fn refuse(request: SessionRequest, refused: &ConnectError) {
    if let Ok(Ok(connection)) = tokio::time::timeout(HANDSHAKE, request.accept()).await {
        let code = REFUSED_BASE + u32::from(refused.status().as_u16());
        connection.close(VarInt::from_u32(code), format!("{}: {refused}", refused.code()).as_bytes());
    }
}

fn handshake_failed(why: &str) {
    tracing::debug!(why, "WebTransport session failed before admission");
    metrics::counter!("roomcast_gateway_webtransport_handshake_failures_total").increment(1);
}

/// The session's first bidirectional stream, written one line per frame.
struct WtWire {
    connection: Connection,
    send: SendStream,
    buffer: BytesMut,
    /// Lost packets already counted.
    lost: u64,
}

impl WtWire {
    /// Records QUIC's view of the path: its RTT, and the packets lost since last time.
    fn sample(&mut self) {
        let path = self.connection.quic_connection().stats().path;
        metrics::histogram!("roomcast_gateway_webtransport_rtt_seconds").record(path.rtt.as_secs_f64());
        let lost = path.lost_packets.saturating_sub(self.lost);
        self.lost = path.lost_packets;
        metrics::counter!("roomcast_gateway_webtransport_lost_packets_total").increment(lost);
    }
}

impl Wire for WtWire {
    const PROTOCOL: &'static str = "webtransport";

    async fn feed(&mut self, frame: Utf8Bytes) -> bool {
        self.buffer.extend_from_slice(frame.as_bytes());
        self.buffer.extend_from_slice(b"\n");
        true
    }

    async fn flush(&mut self) -> bool {
        let written = self.send.write_all(&self.buffer).await.is_ok();
        self.buffer.clear();
        written
    }

    /// QUIC keeps the session alive itself; the writer's tick samples its statistics.
    async fn ping(&mut self) -> bool {
        self.sample();
        true
    }

    /// Closes the whole session at once, unsent lines included, as a WebSocket close does
    /// past a stalled queue.
    async fn close(&mut self, code: Option<CloseCode>) {
        self.sample();
        let code = code.unwrap_or(CloseCode::Normal);
        self.connection.close(VarInt::from_u32(code.code().into()), code.reason().as_bytes());
    }
}
