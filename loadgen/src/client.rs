//! One load client: a `/ws` connection, a WebTransport session on `/wt` (the same JSON
//! protocol, one frame per line), or a Socket.IO one speaking the original app's events.
//! Socket.IO is spoken directly over Engine.IO's WebSocket transport (packet types `0`,
//! `2`/`3`, `40`, `42`), which is all a chat client needs.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::{AnyDelimiterCodec, FramedRead};

/// Bytes read from a connection at a time: a few fan-out frames.
const READ_BUFFER: usize = 8 * 1024;
/// The longest line a WebTransport client reads (the server's hard frame limit).
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    /// roomcast's `/ws` JSON protocol; every member gets each message, the sender included.
    Ws,
    /// Socket.IO v5 with the original app's events; the sender is not sent its own message.
    Socketio,
    /// roomcast's JSON protocol over WebTransport (`/wt`, QUIC), one frame per line.
    Webtransport,
}

/// What a client cares about in a frame from the server.
pub enum Incoming {
    /// A load message (see [`crate::stats::encode`]): its sender, number and send time.
    Load {
        sender: u32,
        n: u32,
        sent_micros: u64,
    },
    Ack,
    Error(String),
    Other,
}

/// The fields of a `/ws` frame that loadgen reads, borrowed from the frame: a full
/// `serde_json::Value` per delivery would cost more than the server's work for it.
#[derive(serde::Deserialize)]
struct WsFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// The original app's message, the JSON string inside a `room_message` event.
#[derive(serde::Deserialize)]
struct OriginalMessage<'a> {
    #[serde(borrow)]
    message: Cow<'a, str>,
}

fn load_message(text: &str) -> Incoming {
    match crate::stats::decode(text) {
        Some((sender, n, sent_micros)) => Incoming::Load { sender, n, sent_micros },
        None => Incoming::Other,
    }
}

pub struct Client {
    link: Link,
    mode: Mode,
    user: String,
}

enum Link {
    Ws(WebSocketStream<MaybeTlsStream<TcpStream>>),
    Wt(Session),
}

/// A WebTransport session, with its own endpoint (UDP socket) as a browser has, and its
/// one stream.
struct Session {
    connection: wtransport::Connection,
    send: wtransport::SendStream,
    lines: FramedRead<wtransport::RecvStream, AnyDelimiterCodec>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

impl Session {
    async fn open(base: &url::Url, user: &str) -> anyhow::Result<Session> {
        let offered = crate::offer::webtransport(base).await?;
        let builder = wtransport::ClientConfig::builder().with_bind_default();
        let config = match offered.sha256 {
            Some(hash) => builder.with_server_certificate_hashes([hash]).build(),
            None => builder.with_native_certs().build(),
        };
        let endpoint = wtransport::Endpoint::client(config).context("opening a UDP socket for WebTransport")?;
        let mut url = url::Url::parse(&offered.url).with_context(|| format!("the offered URL {}", offered.url))?;
        url.query_pairs_mut().append_pair("user", user);
        let connection = endpoint.connect(url.as_str()).await.with_context(|| format!("connecting to {url}"))?;
        let (send, recv) = match connection.open_bi().await.context("opening the stream")?.await {
            Ok(stream) => stream,
            Err(err) => {
                let closed = tokio::time::timeout(std::time::Duration::from_secs(1), connection.closed()).await;
                bail!("the server ended the session: {}", closed.map_or_else(|_| err.to_string(), |c| c.to_string()));
            }
        };
        let lines = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_LINE);
        Ok(Session { connection, send, lines: FramedRead::new(recv, lines), _endpoint: endpoint })
    }
}

/// WebTransport connects tried again after the server's HTTP/3 layer aborted them.
pub static WT_RETRIES: AtomicU64 = AtomicU64::new(0);
/// Attempts at one WebTransport connect.
const WT_ATTEMPTS: u32 = 3;

/// True when the server closed the connection before the session opened, with a code
/// that is not one of roomcast's (which start at 1000): HTTP/3's own (0x100..=0x110), or
/// 0. wtransport 0.7.2's server driver does so for a small share of connects under load
/// (BENCHMARKS.md, issue 16); a browser reconnects.
fn aborted_by_h3(err: &anyhow::Error) -> bool {
    use wtransport::error::{ConnectingError, ConnectionError};
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ConnectingError>(),
            Some(ConnectingError::ConnectionError(ConnectionError::ApplicationClosed(close)))
                if close.code().into_inner() < 1000
        )
    })
}

impl Client {
    pub async fn connect(base: &url::Url, mode: Mode, user: &str) -> anyhow::Result<Client> {
        if mode == Mode::Webtransport {
            let mut attempt = 1;
            let session = loop {
                match Session::open(base, user).await {
                    Ok(session) => break session,
                    Err(err) if attempt < WT_ATTEMPTS && aborted_by_h3(&err) => {
                        WT_RETRIES.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                    }
                    Err(err) => return Err(err),
                }
            };
            return Ok(Client { link: Link::Wt(session), mode, user: user.to_owned() });
        }
        let mut url = base.clone();
        let scheme = if base.scheme() == "https" || base.scheme() == "wss" { "wss" } else { "ws" };
        url.set_scheme(scheme).map_err(|()| anyhow::anyhow!("cannot use scheme {scheme} for {base}"))?;
        match mode {
            Mode::Ws => {
                url.set_path("/ws");
                url.set_query(Some(&format!("user={user}")));
            }
            Mode::Socketio => {
                url.set_path("/socket.io/");
                url.set_query(Some("EIO=4&transport=websocket"));
            }
            Mode::Webtransport => unreachable!("opened above"),
        }
        // tungstenite zero-fills its whole read buffer before each read: at its 128 KiB
        // default that memset was a third of loadgen's CPU at 400k deliveries/s.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut client = Client { link: Link::Ws(ws), mode, user: user.to_owned() };
        if mode == Mode::Socketio {
            client.expect_prefix("0").await.context("waiting for the Engine.IO open packet")?;
            client.send_text(format!("40{}", json!({"user": user}))).await?;
            client.expect_prefix("40").await.context("waiting for the Socket.IO connect packet")?;
        }
        Ok(client)
    }

    async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::Text(text.into())).await.context("sending a frame"),
            Link::Wt(wt) => wt.send.write_all(format!("{text}\n").as_bytes()).await.context("sending a line"),
        }
    }

    /// The next text frame (or line); `None` when the connection ends.
    async fn read(&mut self) -> Option<anyhow::Result<Utf8Bytes>> {
        match &mut self.link {
            Link::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => return Some(Ok(text)),
                    Ok(Message::Close(_)) => return None,
                    Ok(_) => {}
                    Err(err) => return Some(Err(err.into())),
                }
            },
            Link::Wt(wt) => match wt.lines.next().await? {
                Ok(line) => Some(Utf8Bytes::try_from(line).context("a line that is not UTF-8")),
                Err(err) => Some(Err(err.into())),
            },
        }
    }

    async fn expect_prefix(&mut self, prefix: &str) -> anyhow::Result<()> {
        loop {
            match self.read().await {
                Some(Ok(text)) if text.starts_with(prefix) => return Ok(()),
                Some(Ok(text)) if text.as_str() == "2" => self.send_text("3".into()).await?,
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err),
                None => bail!("connection closed"),
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        match self.mode {
            Mode::Ws | Mode::Webtransport => {
                self.send_text(json!({"type": "join", "room": room}).to_string()).await?;
                self.expect_prefix(r#"{"type":"joined""#).await
            }
            Mode::Socketio => {
                self.send_text(format!("42{}", json!(["join_room", room]))).await?;
                self.expect_prefix(r#"42["joined_room""#).await
            }
        }
    }

    pub async fn send(&mut self, room: &str, text: &str, client_id: &str) -> anyhow::Result<()> {
        let frame = match self.mode {
            Mode::Ws | Mode::Webtransport => {
                json!({"type": "send", "room": room, "text": text, "client_id": client_id}).to_string()
            }
            Mode::Socketio => {
                format!("42{}", json!(["send_message", {"roomId": room, "message": text, "username": self.user}]))
            }
        };
        self.send_text(frame).await
    }

    /// The next frame that matters; `None` when the connection ends.
    pub async fn next(&mut self) -> Option<anyhow::Result<Incoming>> {
        loop {
            let text = match self.read().await? {
                Ok(text) => text,
                Err(err) => return Some(Err(err)),
            };
            return Some(Ok(match self.mode {
                Mode::Ws | Mode::Webtransport => parse_ws(&text),
                Mode::Socketio if text.as_str() == "2" => {
                    if let Err(err) = self.send_text("3".into()).await {
                        return Some(Err(err));
                    }
                    continue;
                }
                Mode::Socketio => parse_socketio(&text),
            }));
        }
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

/// How roomcast (and bench's ceiling) begin a message frame, and the key before its text.
const MESSAGE_FRAME: &str = r#"{"type":"message""#;
const TEXT_KEY: &str = r#""text":""#;

fn parse_ws(text: &str) -> Incoming {
    // The fast path for deliveries, nearly every frame of a run: the load header is read
    // straight after the text key (a raw `"text":"` cannot occur inside a JSON string).
    // Frames in another key order take the parser.
    if text.starts_with(MESSAGE_FRAME) {
        return text.find(TEXT_KEY).map_or(Incoming::Other, |at| load_message(&text[at + TEXT_KEY.len()..]));
    }
    let Ok(frame) = serde_json::from_str::<WsFrame>(text) else {
        return Incoming::Error(format!("invalid JSON from server: {text}"));
    };
    match frame.kind.as_ref() {
        "message" => frame.text.as_deref().map_or(Incoming::Other, load_message),
        "ack" => Incoming::Ack,
        "error" => Incoming::Error(format!(
            "{}: {}",
            frame.code.as_deref().unwrap_or("?"),
            frame.message.as_deref().unwrap_or_default()
        )),
        _ => Incoming::Other,
    }
}

fn parse_socketio(text: &str) -> Incoming {
    let Some(payload) = text.strip_prefix("42") else {
        return Incoming::Other;
    };
    // The original server's payload is a JSON string of {message, username, time}.
    if payload.starts_with(r#"["room_message","#) {
        let parsed = serde_json::from_str::<(Cow<str>, Cow<str>)>(payload).ok().and_then(|(_, inner)| {
            serde_json::from_str::<OriginalMessage>(&inner).ok().map(|m| load_message(&m.message))
        });
        return parsed
            .unwrap_or_else(|| Incoming::Error(format!("room_message is not a JSON string of a message: {payload}")));
    }
    if payload.starts_with(r#"["error","#) {
        return Incoming::Error(payload.to_owned());
    }
    Incoming::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_protocols() {
        assert!(matches!(
            parse_ws(r#"{"type":"message","room":"r","seq":4,"text":"lg:1:2:3:xx","ts":5}"#),
            Incoming::Load { sender: 1, n: 2, sent_micros: 3 }
        ));
        assert!(matches!(parse_ws(r#"{"type":"message","text":"hello"}"#), Incoming::Other));
        assert!(matches!(parse_ws(r#"{"seq":4,"text":"lg:1:2:3:","type":"message"}"#), Incoming::Load { n: 2, .. }));
        assert!(
            matches!(parse_ws(r#"{"type":"message","user":"\"text\":\"lg:1:2:3:","text":"hi"}"#), Incoming::Other),
            "a quoted key inside a value is escaped, never taken for the text"
        );
        assert!(matches!(parse_ws(r#"{"type":"ack","seq":1}"#), Incoming::Ack));
        assert!(matches!(parse_ws("nope"), Incoming::Error(_)));
        assert!(matches!(
            parse_socketio(r#"42["room_message","{\"message\":\"lg:7:8:9:\",\"username\":\"u\",\"time\":\"1:5\"}"]"#),
            Incoming::Load { sender: 7, n: 8, sent_micros: 9 }
        ));
        assert!(matches!(parse_socketio(r#"42["room_message",{"message":"hi","username":"u"}]"#), Incoming::Error(_)));
        assert!(matches!(parse_socketio("3"), Incoming::Other));
    }
}
