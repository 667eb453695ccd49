//! A JSON-protocol connection's outgoing side (`/ws` or `/wt`): a queue bounded in bytes,
//! and the one task that writes it to the transport, a [`Wire`]. A client that stops reading fills its queue and is closed
//! with [`CloseCode::SlowConsumer`], so it never holds up the room. All queues together
//! are bounded too, by the process's [`Budget`]: past it, the clients that are behind
//! are closed first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{ClientError, CloseCode};
use crate::metrics::METRICS;
use crate::presence::{Notice, Snapshot};
use crate::protocol::{visible, ServerFrame};
use crate::sink::Sink;
use crate::watch::wait_until;
use roomcast_proto::ChatMessage;

/// Frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;
/// Over the process budget, a client with more than 1/BEHIND of its own limit queued is
/// behind, and closed.
const BEHIND: usize = 8;

/// The bytes queued towards every JSON-protocol client of the process, and their bound. It is
/// enforced on the clients that are behind: a client that keeps up has little queued and
/// is never cut for it, so the bound is soft by at most what those hold.
pub struct Budget {
    queued: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// `limit` 0: no bound.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { queued: AtomicUsize::new(0), limit: if limit == 0 { usize::MAX } else { limit } })
    }

    /// Bytes queued now, for the `roomcast_gateway_send_queue_bytes` gauge.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn take(&self, len: usize) -> usize {
        self.queued.fetch_add(len, Ordering::Relaxed) + len
    }

    fn give(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }
}

/// The sending half, cloned into every room the connection is in.
#[derive(Clone)]
pub struct Outbox {
    frames: mpsc::UnboundedSender<Utf8Bytes>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    budget: Arc<Budget>,
    closer: Arc<watch::Sender<Option<CloseCode>>>,
}

/// The writing half, owned by the writer task.
pub struct Writer {
    pub(crate) frames: mpsc::UnboundedReceiver<Utf8Bytes>,
    ping_every: Duration,
    queued: Arc<AtomicUsize>,
    budget: Arc<Budget>,
    close: watch::Receiver<Option<CloseCode>>,
}

/// The transport under a JSON-protocol connection, as its writer sees it.
pub trait Wire: Send + 'static {
    /// The `protocol` label of the connection's metrics.
    const PROTOCOL: &'static str;
    /// Queues one frame; false once the transport failed.
    fn feed(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send;
    /// Writes out what was fed; false once the transport failed.
    fn flush(&mut self) -> impl Future<Output = bool> + Send;
    /// Called every `ping_every`, busy or not: a WebSocket ping, so that a live client
    /// always has something to answer.
    fn ping(&mut self) -> impl Future<Output = bool> + Send;
    /// Ends the transport, with `code` when the server asked for the close.
    fn close(&mut self, code: Option<CloseCode>) -> impl Future<Output = ()> + Send;
}

pub fn outbox(limit: usize, budget: Arc<Budget>, ping_every: Duration) -> (Outbox, Writer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let (closer, close) = watch::channel(None);
    (
        Outbox { frames: tx, queued: queued.clone(), limit, budget: budget.clone(), closer: Arc::new(closer) },
        Writer { frames: rx, ping_every, queued, budget, close },
    )
}

impl Outbox {
    /// Queues a frame; false when the connection is closing or just overflowed.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let len = frame.len();
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        let total = self.budget.take(len);
        let behind = queued > self.limit / BEHIND;
        if queued > self.limit || (total > self.budget.limit && behind) {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.budget.give(len);
            if self.close(CloseCode::SlowConsumer) {
                METRICS.slow_consumer_disconnects.increment(1);
            }
            return false;
        }
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
            *close = Some(code);
            true
        })
    }

    /// The close code asked for, if any.
    pub fn closing(&self) -> Option<CloseCode> {
        *self.closer.borrow()
    }

    pub fn closed(&self) -> watch::Receiver<Option<CloseCode>> {
        self.closer.subscribe()
    }
}

impl Sink for Outbox {
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool, presence: &Snapshot) {
        self.push_json(ServerFrame::Joined { room, messages: visible(page), truncated, presence }.to_json());
    }

    fn notify(&self, _room: &str, _notice: &Notice, ws_frame: &Utf8Bytes) {
        self.push(ws_frame.clone());
    }

    fn deliver(&self, _msg: &ChatMessage, ws_frame: &Utf8Bytes) {
        self.push(ws_frame.clone());
    }

    fn deleted(&self, _tombstone: &ChatMessage, ws_frame: &Utf8Bytes) {
        self.push(ws_frame.clone());
    }

    fn unavailable(&self, room: &str, message: &str) {
        let code = ClientError::Unavailable(String::new()).code();
        self.push_json(ServerFrame::Error { code, message, client_id: None, room: Some(room) }.to_json());
    }
}

impl Writer {
    /// Writes queued frames until the queue ends, the transport fails, or a close is asked
    /// for; a close is made even past a stalled queue, with a 1 s limit.
    pub async fn run<W: Wire>(self, mut wire: W) {
        let Writer { mut frames, ping_every, queued, budget, mut close } = self;
        let sent = &METRICS.protocol(W::PROTOCOL).frames_sent;
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
                        pinged = wire.ping() => pinged,
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
            let batch = tokio::select! {
                biased;
                _ = wait_until(&mut close, Option::is_some) => break,
                batch = write_batch(&mut wire, &mut frames, first) => batch,
            };
            queued.fetch_sub(batch.bytes, Ordering::Relaxed);
            budget.give(batch.bytes);
            if !batch.written {
                break;
            }
            sent.increment(batch.frames);
        }
        let code = *close.borrow();
        let _ = tokio::time::timeout(Duration::from_secs(1), wire.close(code)).await;
        budget.give(queued.swap(0, Ordering::Relaxed));
    }
}

struct Batch {
    frames: u64,
    bytes: usize,
    written: bool,
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]), then flushes once.
async fn write_batch<W: Wire>(
    wire: &mut W,
    frames: &mut mpsc::UnboundedReceiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> Batch {
    let mut batch = Batch { frames: 1, bytes: first.len(), written: wire.feed(first).await };
    while batch.written && batch.frames < WRITE_BATCH as u64 {
        let Ok(next) = frames.try_recv() else { break };
        batch.bytes += next.len();
        batch.frames += 1;
        batch.written = wire.feed(next).await;
    }
    batch.written = batch.written && wire.flush().await;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_process_budget_the_clients_behind_are_closed_first() {
        let budget = Budget::new(12 * 1024);
        let ping = Duration::from_secs(30);
        // Nobody writes: what is pushed stays queued.
        let (slow, _slow_writer) = outbox(64 * 1024, budget.clone(), ping);
        let (fast, _fast_writer) = outbox(64 * 1024, budget.clone(), ping);
        let kib = || Utf8Bytes::from("x".repeat(1024));
        for _ in 0..10 {
            assert!(slow.push(kib()), "within the budget");
        }
        assert!(fast.push(kib()) && fast.push(kib()));
        assert_eq!(budget.queued(), 12 * 1024);
        // Over the budget: the slow client (10 KiB queued, over 1/8 of its 64 KiB) goes.
        assert!(!slow.push(kib()));
        assert_eq!(slow.closing(), Some(CloseCode::SlowConsumer));
        // The fast one (2 KiB queued) is not cut for the budget.
        assert!(fast.push(kib()));
        assert_eq!(fast.closing(), None);
        assert_eq!(budget.queued(), 13 * 1024, "the refused frame gave its bytes back");
    }
}
