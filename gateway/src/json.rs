//! roomcast's own JSON protocol (docs/PROTOCOL.md), whatever carries its frames: a
//! WebSocket on `/ws` ([`crate::ws`]) or a WebTransport stream on `/wt` ([`crate::wt`]).
//! Frames in become operations on the connection core ([`Conn`]), their answers go out
//! as frames. The connection's life is here too: silence, the drain, oversized frames,
//! the close.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::admission::Admitted;
use crate::conn::{Conn, SendRequest, Sent, TokenStep};
use crate::error::{ClientError, CloseCode, Malformed};
use crate::hub::Hub;
use crate::outbox::{outbox, Outbox, Wire};
use crate::protocol::{decode, visible, ClientFrame, ServerFrame};
use crate::watch::wait_until;

/// What the transport read from the client.
pub enum Inbound {
    /// One frame (a WebSocket text message, or one line).
    Text(Utf8Bytes),
    /// A frame that is not UTF-8 text.
    Binary,
    /// A frame beyond the hard size limit: the connection closes with 1009.
    TooLarge(String),
    /// Anything else that shows the client is alive (a pong).
    Alive,
    /// An empty line: nothing to answer, but it counts against the frame rate.
    Blank,
    /// The transport gave up on a silent client (QUIC's idle timeout).
    Silent,
    /// The client closed.
    Closed,
    /// The transport failed.
    Failed(String),
}

/// Serves one admitted connection until it closes. `silence`: how long the client may
/// send nothing before it is closed with 1001 (None: the transport watches liveness).
pub async fn serve<W: Wire>(
    hub: Arc<Hub>,
    admitted: Admitted,
    incoming: impl Stream<Item = Inbound> + Unpin,
    wire: W,
    silence: Option<Duration>,
) {
    let (outbox, writer) = outbox(hub.limits.send_queue_bytes, hub.send_budget.clone(), hub.limits.ping_every);
    let writer = tokio::spawn(writer.run(wire));
    let conn = Conn::open(hub.clone(), W::PROTOCOL, admitted);
    let reason = read(&conn, &outbox, incoming, silence).await;
    conn.close(reason);
    drop(conn);
    outbox.close(CloseCode::Normal);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Reads frames until the connection ends; returns the `disconnects_total` reason.
async fn read(
    conn: &Arc<Conn>,
    outbox: &Outbox,
    mut incoming: impl Stream<Item = Inbound> + Unpin,
    silence: Option<Duration>,
) -> &'static str {
    let drain = conn.hub().lifecycle.drain_moment().fuse();
    tokio::pin!(drain);
    let mut closed = outbox.closed();
    // Reset at every frame from the client, rather than a new timer per frame.
    let mut silent = silence.map(|limit| Box::pin(tokio::time::sleep(limit)));
    loop {
        tokio::select! {
            _ = async {
                match silent.as_mut() {
                    Some(timer) => timer.await,
                    None => std::future::pending().await,
                }
            } => {
                outbox.close(CloseCode::Gone);
                return CloseCode::Gone.disconnect_reason();
            }
            _ = wait_until(&mut closed, Option::is_some) => {
                return outbox.closing().map_or("protocol_error", CloseCode::disconnect_reason);
            }
            _ = &mut drain => {
                outbox.close(CloseCode::Restart);
            }
            _ = conn.removed() => {
                outbox.close(CloseCode::Kicked);
                return CloseCode::Kicked.disconnect_reason();
            }
            step = conn.token_due(), if conn.has_token() => match step {
                TokenStep::RefreshNeeded => {
                    let grace_seconds = conn.hub().limits.refresh_grace.as_secs_f64();
                    outbox.push_json(ServerFrame::RefreshNeeded { grace_seconds }.to_json());
                }
                TokenStep::Expired => {
                    outbox.close(CloseCode::TokenExpired);
                    return CloseCode::TokenExpired.disconnect_reason();
                }
            },
            frame = incoming.next() => {
                if let (Some(timer), Some(limit)) = (silent.as_mut(), silence) {
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                match frame {
                    None | Some(Inbound::Closed) => return ended(outbox, "client_close"),
                    Some(Inbound::Silent) => return ended(outbox, CloseCode::Gone.disconnect_reason()),
                    Some(Inbound::Text(text)) => on_text(conn, outbox, &text),
                    Some(Inbound::Blank) => {
                        if let Err(err) = conn.received() {
                            reply_error(outbox, err, None, None);
                        }
                    }
                    Some(Inbound::Binary) => {
                        let err = match conn.received() {
                            Err(err) => err,
                            Ok(()) => conn.refused(ClientError::bad_request(
                                Malformed::Binary,
                                "frames are JSON text (UTF-8); binary is not part of the protocol",
                            )),
                        };
                        reply_error(outbox, err, None, None);
                    }
                    Some(Inbound::Alive) => {}
                    Some(Inbound::TooLarge(err)) => {
                        conn.refused(ClientError::TooLarge(err.clone()));
                        tracing::info!(%err, "closing a connection that sent an oversized frame");
                        outbox.close(CloseCode::TooBig);
                        return CloseCode::TooBig.disconnect_reason();
                    }
                    Some(Inbound::Failed(err)) => {
                        tracing::debug!(%err, "connection read failed");
                        return ended(outbox, "error");
                    }
                }
            }
        }
    }
}

/// Why the connection ended: the server's close when it asked for one (the transport may
/// report it first), else `reason`.
fn ended(outbox: &Outbox, reason: &'static str) -> &'static str {
    outbox.closing().map_or(reason, CloseCode::disconnect_reason)
}

/// One text frame: decoded, counted and rate-checked, then applied.
fn on_text(conn: &Arc<Conn>, outbox: &Outbox, text: &str) {
    let decoded = decode(text, conn.hub().limits.max_frame_bytes);
    let client_id = match &decoded {
        Ok(frame) => frame.client_id().map(str::to_owned),
        Err(undecoded) => undecoded.client_id.clone(),
    };
    if let Err(err) = conn.received() {
        return reply_error(outbox, err, client_id.as_deref(), None);
    }
    let frame = match decoded {
        Ok(frame) => frame,
        Err(undecoded) => return reply_error(outbox, conn.refused(undecoded.error), client_id.as_deref(), None),
    };
    match frame {
        ClientFrame::Join { room, since } => {
            if let Err(err) = conn.join(&room, since, Arc::new(outbox.clone())) {
                reply_error(outbox, err, None, Some(&room));
            }
        }
        ClientFrame::Leave { room } => match conn.leave(&room) {
            Ok(()) => {
                outbox.push_json(ServerFrame::Left { room: &room }.to_json());
            }
            Err(err) => reply_error(outbox, err, None, Some(&room)),
        },
        ClientFrame::Send { room, text, client_id } => {
            let outbox = outbox.clone();
            let request = SendRequest { room, text, client_id, username: None };
            conn.send(request, Box::new(move |sent| answer_send(&outbox, sent)));
        }
        ClientFrame::History { room, before, limit } => match conn.history(&room, before, limit) {
            Ok(page) => {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let reply = match page.await {
                        Ok(page) => ServerFrame::History { room: &room, messages: visible(&page) }.to_json(),
                        Err(err) => error_frame(&err, None, Some(&room)),
                    };
                    outbox.push_json(reply);
                });
            }
            Err(err) => reply_error(outbox, err, None, Some(&room)),
        },
        ClientFrame::Presence { room } => match conn.presence(&room) {
            Ok(presence) => {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let reply = match presence.await {
                        Ok(presence) => ServerFrame::Presence { room: &room, presence: &presence }.to_json(),
                        Err(err) => error_frame(&err, None, Some(&room)),
                    };
                    outbox.push_json(reply);
                });
            }
            Err(err) => reply_error(outbox, err, None, Some(&room)),
        },
        ClientFrame::Typing { room } => {
            if let Err(err) = conn.typing(&room) {
                reply_error(outbox, err, None, Some(&room));
            }
        }
        ClientFrame::Refresh { token } => match conn.refresh(&token) {
            Ok((exp, left)) => {
                outbox.push_json(ServerFrame::Refreshed { exp, left: &left }.to_json());
            }
            Err(err) => reply_error(outbox, err, None, None),
        },
        ClientFrame::Rooms { offset, limit } => {
            let (outbox, page) = (outbox.clone(), conn.rooms(offset, limit));
            tokio::spawn(async move {
                let reply = match page.await {
                    Ok(page) => ServerFrame::Rooms { rooms: page.rooms, total: page.total, next: page.next }.to_json(),
                    Err(err) => error_frame(&err, None, None),
                };
                outbox.push_json(reply);
            });
        }
    }
}

fn answer_send(outbox: &Outbox, sent: Sent) {
    let reply = match &sent.result {
        Ok(stored) => ServerFrame::Ack {
            client_id: &sent.client_id,
            room: &sent.room,
            seq: stored.seq,
            id: &stored.id,
            ts: stored.ts,
        }
        .to_json(),
        Err(err) => error_frame(err, Some(&sent.client_id), Some(&sent.room)),
    };
    outbox.push_json(reply);
}

fn reply_error(outbox: &Outbox, err: ClientError, client_id: Option<&str>, room: Option<&str>) {
    outbox.push_json(error_frame(&err, client_id, room));
}

fn error_frame(err: &ClientError, client_id: Option<&str>, room: Option<&str>) -> String {
    let message = err.to_string();
    ServerFrame::Error { code: err.code(), message: &message, client_id, room }.to_json()
}
