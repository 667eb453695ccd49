//! A WebTransport session's one stream as the JSON protocol's transport: one frame per
//! line (`\n`, an optional `\r` before it), both ways. Browsers see no QUIC close code,
//! so before the server closes a session it writes a last line saying why:
//! `{"type":"close","code":C,"reason":R}` (docs/PROTOCOL.md, "WebTransport").

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use wtransport::error::ConnectionError;
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::error::{CloseCode, ConnectError};
use crate::json::Inbound;
use crate::limits::Limits;
use crate::outbox::Wire;
use crate::protocol::ServerFrame;

/// How long the last line of a closing session may take to be acknowledged.
const LAST_LINE: Duration = Duration::from_millis(800);
/// A refused session is closed with this plus the HTTP status `/ws` answers (4401, 4403,
/// ...), the reason "code: message".
const REFUSED_BASE: u32 = 4000;
/// How long a refused session waits for the client's stream, to tell it why.
const REFUSAL_STREAM: Duration = Duration::from_secs(2);
/// The most of its buffer a session keeps between writes.
const KEPT_BUFFER: usize = 64 * 1024;

/// The session's stream as frames in and a [`Wire`] out.
pub fn transport(
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    limits: &Limits,
) -> (impl Stream<Item = Inbound> + Unpin, WtWire) {
    let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), limits.hard_frame_bytes);
    let session = connection.clone();
    let hard_limit = limits.hard_frame_bytes;
    let incoming = FramedRead::new(recv, codec).map(move |line| inbound(line, &session, hard_limit));
    (incoming, WtWire { connection, send, buffer: BytesMut::new(), lost: 0 })
}

/// One line from the client, or why reading stopped.
fn inbound(line: Result<Bytes, AnyDelimiterCodecError>, session: &Connection, hard_limit: usize) -> Inbound {
    match line {
        Ok(line) => {
            let line = if line.ends_with(b"\r") { line.slice(..line.len() - 1) } else { line };
            match Utf8Bytes::try_from(line) {
                Ok(text) if text.trim().is_empty() => Inbound::Blank,
                Ok(text) => Inbound::Text(text),
                Err(_) => Inbound::Binary,
            }
        }
        Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
            Inbound::TooLarge(format!("a line over the hard limit of {hard_limit} bytes"))
        }
        Err(AnyDelimiterCodecError::Io(err)) => {
            match session.quic_connection().close_reason().map(ConnectionError::from) {
                Some(ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed) => Inbound::Closed,
                Some(ConnectionError::TimedOut) => Inbound::Silent,
                _ => Inbound::Failed(err.to_string()),
            }
        }
    }
}

/// Writes `line` and waits for its acknowledgement (at most [`LAST_LINE`]), then closes
/// the session with `code`.
async fn close_with(connection: &Connection, send: &mut SendStream, code: u32, reason: &str) {
    let line = ServerFrame::Close { code, reason }.to_json() + "\n";
    let said = async {
        send.write_all(line.as_bytes()).await.ok()?;
        send.finish().await.ok()
    };
    let _ = tokio::time::timeout(LAST_LINE, said).await;
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Tells a refused session why, on its stream if it opens one in time, then closes it.
pub async fn refuse(connection: Connection, refused: ConnectError) {
    let code = REFUSED_BASE + u32::from(refused.status().as_u16());
    let reason = format!("{}: {refused}", refused.code());
    match tokio::time::timeout(REFUSAL_STREAM, connection.accept_bi()).await {
        Ok(Ok((mut send, _recv))) => close_with(&connection, &mut send, code, &reason).await,
        _ => connection.close(VarInt::from_u32(code), reason.as_bytes()),
    }
}

/// The session's stream, written one line per frame.
pub struct WtWire {
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
        if self.buffer.capacity() > KEPT_BUFFER {
            self.buffer = BytesMut::new();
        }
        written
    }

    /// QUIC keeps the session alive itself; the writer's tick samples its statistics.
    async fn ping(&mut self) -> bool {
        self.sample();
        true
    }

    /// What was written reaches the client before the last line and the close, as on a
    /// WebSocket; a slow consumer's stream is stuck, so it is closed at once.
    async fn close(&mut self, code: Option<CloseCode>) {
        self.sample();
        let code = code.unwrap_or(CloseCode::Normal);
        if code == CloseCode::SlowConsumer {
            self.connection.close(VarInt::from_u32(code.code().into()), code.reason().as_bytes());
        } else {
            close_with(&self.connection, &mut self.send, code.code().into(), code.reason()).await;
        }
    }
}
