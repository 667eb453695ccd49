//! The `/ws` front door: WebSocket messages carrying the JSON protocol ([`crate::json`]),
//! one frame per text message. Liveness is WebSocket's own: pings, and a client silent
//! for too long (pongs included) is closed with 1001.

use std::sync::Arc;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::admission::Admitted;
use crate::error::CloseCode;
use crate::hub::Hub;
use crate::json::{self, Inbound};
use crate::outbox::Wire;

/// Serves one upgraded connection until it closes.
pub async fn serve<S>(hub: Arc<Hub>, ws: WebSocketStream<S>, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let incoming = stream.map(|message| match message {
        Ok(Message::Text(text)) => Inbound::Text(text),
        Ok(Message::Binary(_)) => Inbound::Binary,
        Ok(Message::Close(_)) => Inbound::Closed,
        Ok(_) => Inbound::Alive,
        Err(tungstenite::Error::Capacity(err)) => Inbound::TooLarge(err.to_string()),
        Err(err) => Inbound::Failed(err.to_string()),
    });
    let silence = Some(hub.limits.silence_limit());
    json::serve(hub, admitted, incoming, WsWire(sink), silence).await;
}

struct WsWire<S>(SplitSink<WebSocketStream<S>, Message>);

impl<S> Wire for WsWire<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    const PROTOCOL: &'static str = "ws";

    async fn feed(&mut self, frame: Utf8Bytes) -> bool {
        self.0.feed(Message::Text(frame)).await.is_ok()
    }

    async fn flush(&mut self) -> bool {
        self.0.flush().await.is_ok()
    }

    async fn ping(&mut self) -> bool {
        self.0.send(Message::Ping(Default::default())).await.is_ok()
    }

    async fn close(&mut self, code: Option<CloseCode>) {
        if let Some(code) = code {
            let frame = CloseFrame { code: WsCloseCode::from(code.code()), reason: code.reason().into() };
            let _ = self.0.send(Message::Close(Some(frame))).await;
        }
        let _ = self.0.close().await;
    }
}
