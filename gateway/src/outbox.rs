//! A `/ws` connection's outgoing side: a queue bounded in bytes, and the one task that
//! writes it to the socket. A client that stops reading fills its queue and is closed
//! with [`CloseCode::SlowConsumer`], so it never holds up the room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::error::{ClientError, CloseCode};
use crate::metrics::METRICS;
use crate::protocol::{visible, ServerFrame};
use crate::sink::Sink;
use crate::watch::wait_until;
use roomcast_proto::ChatMessage;

/// Frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;

/// The sending half, cloned into every room the connection is in.
#[derive(Clone)]
pub struct Outbox {
    frames: mpsc::UnboundedSender<Utf8Bytes>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    closer: Arc<watch::Sender<Option<CloseFrame>>>,
}

/// The writing half, owned by the writer task.
pub struct Writer {
    pub(crate) frames: mpsc::UnboundedReceiver<Utf8Bytes>,
    ping_every: Duration,
    queued: Arc<AtomicUsize>,
    close: watch::Receiver<Option<CloseFrame>>,
}

pub fn outbox(limit: usize, ping_every: Duration) -> (Outbox, Writer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let (closer, close) = watch::channel(None);
    (
        Outbox { frames: tx, queued: queued.clone(), limit, closer: Arc::new(closer) },
        Writer { frames: rx, ping_every, queued, close },
    )
}

impl Outbox {
    /// Queues a frame; false when the connection is closing or just overflowed.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let len = frame.len();
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.limit {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            if self.close(CloseCode::SlowConsumer) {
                METRICS.slow_consumer_disconnects.increment(1);
            }
            return false;
        }
        METRICS.send_queue_bytes.increment(len as f64);
        self.frames.send(frame).is_ok()
    }

    pub fn push_json(&self, json: String) -> bool {
        self.push(Utf8Bytes::from(json))
    }

    /// Asks the writer to close the connection with `code`; true if this call did it.
    pub fn close(&self, code: CloseCode) -> bool {
        self.closer.send_if_modified(|close| {
            if close.is_some() {
                return false;
            }
            *close = Some(CloseFrame { code: WsCloseCode::from(code.code()), reason: code.reason().into() });
            true
        })
    }

    /// The close code asked for, if any.
    pub fn closing(&self) -> Option<CloseCode> {
        let code = self.closer.borrow().as_ref().map(|frame| u16::from(frame.code))?;
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    pub fn closed(&self) -> watch::Receiver<Option<CloseFrame>> {
        self.closer.subscribe()
    }
}

impl Sink for Outbox {
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool) {
        self.push_json(ServerFrame::Joined { room, messages: visible(page), truncated }.to_json());
    }

    fn deliver(&self, _msg: &ChatMessage, ws_frame: &Utf8Bytes) {
        self.push(ws_frame.clone());
    }

    fn unavailable(&self, room: &str, message: &str) {
        let code = ClientError::Unavailable(String::new()).code();
        self.push_json(ServerFrame::Error { code, message, client_id: None, room: Some(room) }.to_json());
    }
}

impl Writer {
    /// Writes queued frames until the queue ends, the socket fails, or a close is asked
    /// for; a close is sent even past a stalled queue, with a 1 s limit. Pings every
    /// `ping_every`, busy or not, so that a live client always has something to answer.
    pub async fn run<S>(self, mut sink: S)
    where
        S: futures::Sink<Message> + Unpin,
    {
        let Writer { mut frames, ping_every, queued, mut close } = self;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = wait_until(&mut close, Option::is_some) => break,
                _ = ping.tick() => {
                    let pinged = tokio::select! {
                        biased;
                        _ = wait_until(&mut close, Option::is_some) => false,
                        sent = sink.send(Message::Ping(Default::default())) => sent.is_ok(),
                    };
                    if !pinged {
                        break;
                    }
                    continue;
                }
                first = frames.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
            };
            let sent = tokio::select! {
                biased;
                _ = wait_until(&mut close, Option::is_some) => break,
                sent = write_batch(&mut sink, &mut frames, &queued, first) => sent,
            };
            if !sent {
                break;
            }
        }
        let frame = close.borrow().clone();
        if let Some(frame) = frame {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        let left = queued.swap(0, Ordering::Relaxed);
        METRICS.send_queue_bytes.decrement(left as f64);
    }
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]), then flushes once.
async fn write_batch<S>(
    sink: &mut S,
    frames: &mut mpsc::UnboundedReceiver<Utf8Bytes>,
    queued: &AtomicUsize,
    first: Utf8Bytes,
) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    let mut bytes = first.len();
    let mut count = 1;
    if sink.feed(Message::Text(first)).await.is_err() {
        return false;
    }
    while count < WRITE_BATCH {
        let Ok(next) = frames.try_recv() else { break };
        bytes += next.len();
        count += 1;
        if sink.feed(Message::Text(next)).await.is_err() {
            return false;
        }
    }
    let flushed = sink.flush().await.is_ok();
    queued.fetch_sub(bytes, Ordering::Relaxed);
    METRICS.send_queue_bytes.decrement(bytes as f64);
    METRICS.frames_sent_ws.increment(count as u64);
    flushed
}
