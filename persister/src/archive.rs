//! What the gateway asks of the store tier, in-process or over gRPC.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use roomcast_proto::ChatMessage;

use crate::batcher::{Batcher, BatcherConfig};
use crate::store::{HistoryQuery, Store, StoreError, WriteOutcome};

#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Stores `msg` durably. `Err(Conflict)` when its seq belongs to another message.
    async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError>;
    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError>;
    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError>;
    async fn max_seq(&self, room: &str) -> Result<u64, StoreError>;
    /// Replaces message `seq` with its tombstone (moderation); see [`Store::delete`].
    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError>;
}

/// A committed write: the message as stored, and whether it was a repeat of an earlier
/// send (then `stored` is the first copy, and the seq of this write was sealed).
#[derive(Debug, Clone)]
pub struct Written {
    pub stored: ChatMessage,
    pub duplicate: bool,
}

/// The store tier in-process: a batcher in front of a [`Store`].
#[derive(Clone)]
pub struct Persister {
    batcher: Batcher,
    store: Arc<dyn Store>,
}

impl Persister {
    pub fn new(store: Arc<dyn Store>, config: BatcherConfig) -> Self {
        Self { batcher: Batcher::start(store.clone(), config), store }
    }
}

async fn timed<T>(query: &'static str, fut: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = fut.await;
    metrics::histogram!("roomcast_persister_query_duration_seconds", "query" => query).record(started.elapsed());
    result
}

#[async_trait]
impl Archive for Persister {
    async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError> {
        match self.batcher.write(msg).await? {
            WriteOutcome::Stored(stored) => Ok(Written { stored, duplicate: false }),
            WriteOutcome::Duplicate(stored) => Ok(Written { stored, duplicate: true }),
            WriteOutcome::Conflict => Err(StoreError::Conflict),
        }
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        timed("history", self.store.history(&query)).await
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        timed("resolve", self.store.resolve(room, from, to)).await
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        timed("max_seq", self.store.max_seq(room)).await
    }

    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        timed("delete", self.store.delete(room, seq)).await
    }
}
