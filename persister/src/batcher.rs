//! Groups single writes into batches, by group commit: a batch is taken from the queue
//! when a write slot is free, so a message waits for nothing when the store is idle, and
//! messages that arrive while `max_in_flight` batches are being written form the next
//! batch. Batches grow with load and the store sees fewer, larger writes. Under load
//! (writes were already waiting when the slot freed) a batch also waits up to `linger`
//! for company; an idle store never waits. Every caller is answered only
//! after its batch commits. The queue is bounded: when it is full, writes fail at once
//! instead of piling up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::Retryable;
use roomcast_proto::ChatMessage;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::{Store, StoreError, WriteOutcome};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most messages in one batch.
    pub max_batch: usize,
    /// How long a batch that is not full may wait for company, when writes were already
    /// waiting as its slot freed (under load; never when the store was idle).
    pub linger: Duration,
    /// Most messages waiting for a batch.
    pub queue_capacity: usize,
    /// Batches written at once.
    pub max_in_flight: usize,
    /// How long a failing batch is retried before its writers get the error.
    pub retry_for: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            linger: Duration::ZERO,
            queue_capacity: 10_000,
            max_in_flight: 1,
            retry_for: Duration::from_secs(3),
        }
    }
}

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<(ChatMessage, Reply)>,
}

impl Batcher {
    pub fn start(store: Arc<dyn Store>, config: BatcherConfig) -> Self {
        let (queue, rx) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(run(store, config, rx));
        Self { queue }
    }

    /// Queues `msg` and waits until its batch is committed.
    pub async fn write(&self, msg: ChatMessage) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send((msg, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("roomcast_persister_queue_rejections_total").increment(1);
                return Err(StoreError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(StoreError::Unavailable("the batcher has stopped".into()));
            }
        }
        metrics::gauge!("roomcast_persister_queue_depth").set(self.depth() as f64);
        answer.await.map_err(|_| StoreError::Unavailable("the batcher dropped the write".into()))?
    }

    fn depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

async fn run(store: Arc<dyn Store>, config: BatcherConfig, mut rx: mpsc::Receiver<(ChatMessage, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    loop {
        // A slot first: what queues while every slot is busy becomes the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let busy = !rx.is_empty();
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + config.linger;
        while busy && batch.len() < config.max_batch && !config.linger.is_zero() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => batch.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        metrics::gauge!("roomcast_persister_queue_depth").set(rx.len() as f64);
        let store = store.clone();
        let retry_for = config.retry_for;
        tokio::spawn(async move {
            write(store.as_ref(), batch, retry_for).await;
            drop(permit);
        });
    }
}

/// The longest wait between two attempts at a batch.
const RETRY_MAX_DELAY: Duration = Duration::from_millis(800);

async fn write(store: &dyn Store, batch: Vec<(ChatMessage, Reply)>, retry_for: Duration) {
    let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    metrics::histogram!("roomcast_persister_batch_size").record(messages.len() as f64);
    let started = Instant::now();
    let result = (|| store.write_batch(&messages))
        .retry(backoff::exponential(Duration::from_millis(50), RETRY_MAX_DELAY))
        // A delay is at most twice the cap (jitter), so the last attempt starts within
        // `retry_for` plus the cap: 3.8 s by default, inside the gateway's 5 s write limit.
        .when(|_| started.elapsed() + RETRY_MAX_DELAY < retry_for)
        .notify(|err, _| {
            tracing::warn!(%err, batch = messages.len(), "batch write failed; retrying");
            metrics::counter!("roomcast_persister_write_retries_total").increment(1);
        })
        .await;
    metrics::histogram!("roomcast_persister_batch_duration_seconds").record(started.elapsed());
    match result {
        Ok(outcomes) => {
            for (outcome, reply) in outcomes.into_iter().zip(replies) {
                match &outcome {
                    WriteOutcome::Stored(_) => {
                        metrics::counter!("roomcast_persister_documents_written_total").increment(1)
                    }
                    WriteOutcome::Duplicate(_) => metrics::counter!("roomcast_persister_duplicates_total").increment(1),
                    WriteOutcome::Conflict => {
                        metrics::counter!("roomcast_persister_write_errors_total", "kind" => "conflict").increment(1)
                    }
                }
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            tracing::error!(%err, batch = messages.len(), "batch write failed; writers get the error");
            metrics::counter!("roomcast_persister_write_errors_total", "kind" => "unavailable")
                .increment(messages.len() as u64);
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryQuery;
    use std::sync::Mutex;

    /// A store that takes `delay` per batch and records the batch sizes it was given.
    struct Slow {
        delay: Duration,
        sizes: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl Store for Slow {
        async fn write_batch(&self, batch: &[ChatMessage]) -> Result<Vec<WriteOutcome>, StoreError> {
            self.sizes.lock().unwrap_or_else(|p| p.into_inner()).push(batch.len());
            tokio::time::sleep(self.delay).await;
            Ok(batch.iter().cloned().map(WriteOutcome::Stored).collect())
        }
        async fn history(&self, _: &HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
            Ok(Vec::new())
        }
        async fn resolve(&self, _: &str, _: u64, _: u64) -> Result<Vec<ChatMessage>, StoreError> {
            Ok(Vec::new())
        }
        async fn max_seq(&self, _: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn delete(&self, _: &str, _: u64) -> Result<Option<ChatMessage>, StoreError> {
            Ok(None)
        }
    }

    fn msg(seq: u64) -> ChatMessage {
        ChatMessage { room: "r".into(), seq, id: format!("id{seq}"), ..ChatMessage::default() }
    }

    #[tokio::test]
    async fn an_idle_store_gets_each_write_at_once_and_a_busy_one_gets_them_together() {
        let store = Arc::new(Slow { delay: Duration::from_millis(500), sizes: Mutex::new(Vec::new()) });
        let batcher = Batcher::start(store.clone(), BatcherConfig::default());
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.write(msg(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Ten writes while the first batch is being written: they wait, and go as one.
        let rest: Vec<_> = (2..=11)
            .map(|seq| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.write(msg(seq)).await })
            })
            .collect();
        assert!(matches!(first.await, Ok(Ok(WriteOutcome::Stored(_)))));
        for write in rest {
            assert!(matches!(write.await, Ok(Ok(WriteOutcome::Stored(_)))));
        }
        // The first went alone (no linger); the ten queued behind it went as one batch.
        assert_eq!(*store.sizes.lock().unwrap_or_else(|p| p.into_inner()), vec![1, 10]);
    }
}
