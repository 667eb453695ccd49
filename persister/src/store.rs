//! The backend interface and the rules every backend keeps.

use async_trait::async_trait;
use roomcast_proto::ChatMessage;

/// Most messages one read returns.
pub const MAX_PAGE: u32 = 1000;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes a batch durably and says, per message, what happened. A message whose
    /// `(room, user, client_id)` is already stored is a duplicate: the first copy wins
    /// and the new seq is sealed. A seq owned by a different message is a conflict.
    /// Writing the same message (same id) twice is harmless: it is reported stored.
    async fn write_batch(&self, batch: &[ChatMessage]) -> Result<Vec<WriteOutcome>, StoreError>;
    /// A page of a room's messages, oldest first (tombstones included).
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<ChatMessage>, StoreError>;
    /// Seqs `from..=to` of a room, sealing each missing one with a tombstone.
    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError>;
    /// The highest seq stored for the room, 0 for none.
    async fn max_seq(&self, room: &str) -> Result<u64, StoreError>;
    /// Replaces message `seq` of `room` with its [`removed`] tombstone (moderation) and
    /// answers that tombstone; again for a message already removed; `None` when the room
    /// holds no message there (nothing, or a sealed hole).
    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError>;
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Stored(ChatMessage),
    Duplicate(ChatMessage),
    Conflict,
}

/// Which page of a room: after a seq, before one, or (neither) the newest.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub room: String,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: u32,
}

impl HistoryQuery {
    pub fn limit(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE) as usize
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store did not answer in time")]
    Timeout,
    #[error("the persister's queue is full; retry later")]
    Overloaded,
    #[error("sequence number already taken by another message")]
    Conflict,
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The tombstone that seals `seq` of `room`.
pub fn tombstone(room: &str, seq: u64) -> ChatMessage {
    ChatMessage {
        room: room.to_owned(),
        seq,
        id: format!("sealed:{room}:{seq}"),
        client_id: format!("~sealed:{seq}"),
        tombstone: true,
        ..Default::default()
    }
}

/// The tombstone that replaces `msg` when moderation removes it: the seq, id, user, ts
/// and client id stay (a resend of the same send is still stored once), the text goes.
pub fn removed(msg: &ChatMessage) -> ChatMessage {
    ChatMessage { text: String::new(), tombstone: true, deleted: true, ..msg.clone() }
}

/// What [`Store::delete`] does with what it found at the seq.
pub enum Deletion {
    /// Write this tombstone over the message, and answer it.
    Write(ChatMessage),
    /// Answer this at once: the tombstone already there, or nothing (no message).
    Answer(Option<ChatMessage>),
}

pub fn deletion(found: Option<ChatMessage>) -> Deletion {
    match found {
        Some(msg) if msg.deleted => Deletion::Answer(Some(msg)),
        Some(msg) if !msg.tombstone => Deletion::Write(removed(&msg)),
        _ => Deletion::Answer(None),
    }
}

/// Bounds a resolve range so one request cannot ask for millions of seals.
pub fn check_range(from: u64, to: u64) -> Result<(), StoreError> {
    if from == 0 || to < from || to - from >= u64::from(MAX_PAGE) {
        return Err(StoreError::Invalid(format!(
            "resolve range {from}..={to} must start at 1 and span at most {MAX_PAGE} seqs"
        )));
    }
    Ok(())
}
