//! A `/ws` connection's outgoing side: a queue bounded in bytes, and the one task that
//! writes it to the socket. A client that stops reading fills its queue and is closed
//! with [`CloseCode::SlowConsumer`], so it never holds up the room. All queues together
//! are bounded too, by the process's [`Budget`]: past it, the clients that are behind
//! are closed first.

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

/// The bytes queued towards every `/ws` client of the process, and their bound. It is
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
    closer: Arc<watch::Sender<Option<CloseFrame>>>,
}

/// The writing half, owned by the writer task.
pub struct Writer {
    pub(crate) frames: mpsc::UnboundedReceiver<Utf8Bytes>,
    ping_every: Duration,
    queued: Arc<AtomicUsize>,
    budget: Arc<Budget>,
    close: watch::Receiver<Option<CloseFrame>>,
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
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool, presence: &Snapshot) {
        self.push_json(ServerFrame::Joined { room, messages: visible(page), truncated, presence }.to_json());
    }

    fn notify(&self, _room: &str, _notice: &Notice, ws_frame: &Utf8Bytes) {
        self.push(ws_frame.clone());
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
        let Writer { mut frames, ping_every, queued, budget, mut close } = self;
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
                sent = write_batch(&mut sink, &mut frames, &queued, &budget, first) => sent,
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
        budget.give(queued.swap(0, Ordering::Relaxed));
    }
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]), then flushes once.
async fn write_batch<S>(
    sink: &mut S,
    frames: &mut mpsc::UnboundedReceiver<Utf8Bytes>,
    queued: &AtomicUsize,
    budget: &Budget,
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
    budget.give(bytes);
    METRICS.frames_sent_ws.increment(count as u64);
    flushed
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
