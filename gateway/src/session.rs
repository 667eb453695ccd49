//! One client connection on `/ws`: reads frames, answers them, and leaves its rooms
//! when it ends. Sends run one at a time per connection, so a client's own messages
//! keep the order it sent them in.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use persister::HistoryQuery;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::admission::{Admitted, Slot};
use crate::auth::RoomGrant;
use crate::metrics::METRICS;
use crate::outbox::{outbox, Outbox, SLOW_CONSUMER};
use crate::protocol::{decode, newest_within, visible, ClientFrame, Refusal, ServerFrame};
use crate::rooms::MemberId;
use crate::Core;

/// Close code sent while draining: the client should reconnect (to another pod).
pub const SERVICE_RESTART: u16 = 1012;
/// Close code for a client that answered nothing, not even a ping, for too long.
pub const GONE: u16 = 1001;
/// Close code for a frame beyond the hard size limit.
pub const TOO_BIG: u16 = 1009;
/// Sends a connection may have waiting; beyond it sends are refused.
const SEND_QUEUE: usize = 32;

struct SendJob {
    received: tokio::time::Instant,
    room: String,
    text: String,
    client_id: String,
}

pub async fn serve<S>(core: Arc<Core>, ws: WebSocketStream<S>, user: String, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let member = core.next_member_id();
    let (outbox, writer) = outbox(core.limits.send_queue_bytes, core.limits.ping_every);
    let (sink, mut stream) = ws.split();
    let writer = tokio::spawn(writer.run(sink));
    let mut session = Session {
        core: core.clone(),
        member,
        user,
        outbox: outbox.clone(),
        rooms: HashSet::new(),
        grant: admitted.rooms,
        limiter: core.limits.frame_limiter(),
        sender: None,
        _slot: admitted.slot,
    };
    core.connection_opened("ws");

    let mut closed = outbox.closed();
    let mut draining = core.draining();
    let drain = async move {
        crate::wait_until(&mut draining, Option::is_some).await;
        let window = (*draining.borrow()).unwrap_or_default();
        let jitter = rand::rng().random_range(0.0..=1.0);
        tokio::time::sleep(window.mul_f64(jitter)).await;
    }
    .fuse();
    tokio::pin!(drain);

    // Reset at every frame from the client, rather than a new timer per frame.
    let silence = core.limits.silence_limit();
    let silent = tokio::time::sleep(silence);
    tokio::pin!(silent);
    let reason = loop {
        tokio::select! {
            _ = &mut silent => {
                outbox.close(GONE, "no frame or pong for too long");
                break "silent";
            }
            _ = crate::wait_until(&mut closed, Option::is_some) => break match outbox.closing() {
                Some(SLOW_CONSUMER) => "slow_consumer",
                Some(SERVICE_RESTART) => "drain",
                _ => "protocol_error",
            },
            _ = &mut drain => {
                outbox.close(SERVICE_RESTART, "server restarting: reconnect");
            }
            frame = stream.next() => {
                silent.as_mut().reset(tokio::time::Instant::now() + silence);
                match frame {
                    None | Some(Ok(Message::Close(_))) => break "client_close",
                    Some(Ok(Message::Text(text))) => session.on_text(&text),
                    Some(Ok(Message::Binary(_))) => session.refuse(Refusal::new(
                        "bad_request", "binary", "binary frames are not part of the protocol; send JSON text",
                    ), None),
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Capacity(err))) => {
                        metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => "too_large").increment(1);
                        tracing::info!(%err, "closing a connection that sent an oversized frame");
                        outbox.close(TOO_BIG, "frame too large");
                        break "protocol_error";
                    }
                    Some(Err(err)) => {
                        tracing::debug!(%err, "connection read failed");
                        break "error";
                    }
                }
            }
        }
    };
    session.leave_all();
    drop(session);
    outbox.close(1000, "bye");
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    core.connection_closed("ws", reason);
}

struct Session {
    core: Arc<Core>,
    member: MemberId,
    user: String,
    outbox: Outbox,
    rooms: HashSet<String>,
    grant: RoomGrant,
    limiter: DefaultDirectRateLimiter,
    /// The send queue and its task, started by the first send: most connections only read.
    sender: Option<Sender>,
    _slot: Slot,
}

/// A connection's send queue and the task that works through it in order.
struct Sender {
    jobs: mpsc::Sender<SendJob>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    fn on_text(&mut self, text: &str) {
        METRICS.frames_received_ws.increment(1);
        if self.limiter.check().is_err() {
            return self.refuse(self.core.limits.rate_refusal(), None);
        }
        let frame = match decode(text, &self.core.limits) {
            Ok(frame) => frame,
            Err(refusal) => return self.refuse(refusal, None),
        };
        match frame {
            ClientFrame::Join { room, since } => self.join(room, since),
            ClientFrame::Leave { room } => {
                if self.rooms.remove(&room) {
                    self.core.rooms.leave(&room, self.member);
                }
                self.outbox.push_json(ServerFrame::Left { room: &room }.to_json());
            }
            ClientFrame::Send { room, text, client_id } => {
                let client_id = client_id.unwrap_or_else(|| ulid::Ulid::new().to_string());
                if !self.rooms.contains(&room) {
                    let refusal =
                        Refusal::new("not_joined", "invalid_field", format!("join room {room} before sending to it"));
                    return self.refuse(refusal, Some(&client_id));
                }
                let (core, user, outbox) = (&self.core, &self.user, &self.outbox);
                let sender = self.sender.get_or_insert_with(|| {
                    let (jobs, queue) = mpsc::channel(SEND_QUEUE);
                    let task = tokio::spawn(send_loop(core.clone(), user.clone(), outbox.clone(), queue));
                    Sender { jobs, task }
                });
                if let Err(mpsc::error::TrySendError::Full(job)) =
                    sender.jobs.try_send(SendJob { received: tokio::time::Instant::now(), room, text, client_id })
                {
                    let refusal = Refusal::new(
                        "overloaded",
                        "overloaded",
                        format!("more than {SEND_QUEUE} sends are waiting; wait for acks before sending more"),
                    );
                    self.refuse(refusal, Some(&job.client_id));
                }
            }
            ClientFrame::History { room, before, limit } => self.history(room, before, limit),
        }
    }

    fn join(&mut self, room: String, since: Option<u64>) {
        if !self.grant.allows(&room) {
            return self.refuse(forbidden(&room), None);
        }
        if self.rooms.contains(&room) {
            // A repeated join is a resync: leave and join again with the given position.
            self.core.rooms.leave(&room, self.member);
        } else if self.rooms.len() >= self.core.limits.max_rooms_per_connection {
            let message = format!("a connection may be in at most {} rooms", self.core.limits.max_rooms_per_connection);
            return self.refuse(Refusal::new("too_many_rooms", "too_many_rooms", message), None);
        }
        self.core.rooms.join(&room, self.member, Arc::new(self.outbox.clone()), since);
        self.rooms.insert(room);
    }

    fn history(&self, room: String, before: Option<u64>, limit: Option<u32>) {
        if !self.grant.allows(&room) {
            return self.refuse(forbidden(&room), None);
        }
        let archive = self.core.archive.clone();
        let outbox = self.outbox.clone();
        let limit = limit.unwrap_or(self.core.limits.history_page);
        let budget = self.core.limits.send_queue_bytes / 2;
        tokio::spawn(async move {
            let query = HistoryQuery { room: room.clone(), before, after: None, limit };
            let reply = match archive.history(query).await {
                Ok(page) => {
                    ServerFrame::History { room: &room, messages: visible(newest_within(&page, budget)) }.to_json()
                }
                Err(err) => {
                    let message = format!("cannot read history: {err}");
                    ServerFrame::Error { code: "unavailable", message: &message, client_id: None, room: Some(&room) }
                        .to_json()
                }
            };
            outbox.push_json(reply);
        });
    }

    fn refuse(&self, refusal: Refusal, client_id: Option<&str>) {
        metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => refusal.kind).increment(1);
        let frame = ServerFrame::Error { code: refusal.code, message: &refusal.message, client_id, room: None };
        self.outbox.push_json(frame.to_json());
    }

    fn leave_all(&mut self) {
        for room in self.rooms.drain() {
            self.core.rooms.leave(&room, self.member);
        }
    }
}

/// A join or history request for a room the token does not grant.
pub(crate) fn forbidden(room: &str) -> Refusal {
    Refusal::new("forbidden_room", "forbidden_room", format!("your token does not grant room {room}"))
}

async fn send_loop(core: Arc<Core>, user: String, outbox: Outbox, mut jobs: mpsc::Receiver<SendJob>) {
    while let Some(job) = jobs.recv().await {
        let reply = match core.send(job.received, &user, &job.room, &job.text, &job.client_id).await {
            Ok(stored) => {
                metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "acked").increment(1);
                ServerFrame::Ack {
                    client_id: &job.client_id,
                    room: &job.room,
                    seq: stored.seq,
                    id: &stored.id,
                    ts: stored.ts,
                }
                .to_json()
            }
            Err(err) => {
                metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "error").increment(1);
                tracing::warn!(%err, room = %job.room, user = %user, client_id = %job.client_id, "send failed");
                let message = err.to_string();
                ServerFrame::Error {
                    code: err.code(),
                    message: &message,
                    client_id: Some(&job.client_id),
                    room: Some(&job.room),
                }
                .to_json()
            }
        };
        outbox.push_json(reply);
    }
}
