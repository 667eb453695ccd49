//! The MongoDB store, through the official driver only, so it runs on MongoDB, Atlas or
//! any wire-compatible server.
//!
//! Documents are keyed by message id, with unique indexes on `(room, seq)` (one message
//! per position) and `(room, user, client_id)` (one copy per client send).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Collection, IndexModel};
use roomcast_proto::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::store::{check_range, deletion, tombstone, Deletion, HistoryQuery, Store, StoreError, WriteOutcome};

const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct MongoStore {
    messages: Collection<Doc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    #[serde(rename = "_id")]
    id: String,
    room: String,
    seq: i64,
    user: String,
    text: String,
    ts: i64,
    client_id: String,
    #[serde(default)]
    tombstone: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

impl From<&ChatMessage> for Doc {
    fn from(m: &ChatMessage) -> Self {
        Doc {
            id: m.id.clone(),
            room: m.room.clone(),
            seq: seq_to_i64(m.seq),
            user: m.user.clone(),
            text: m.text.clone(),
            ts: m.ts,
            client_id: m.client_id.clone(),
            tombstone: m.tombstone,
            deleted: m.deleted,
        }
    }
}

impl From<Doc> for ChatMessage {
    fn from(d: Doc) -> Self {
        ChatMessage {
            room: d.room,
            seq: u64::try_from(d.seq).unwrap_or_default(),
            id: d.id,
            user: d.user,
            text: d.text,
            ts: d.ts,
            client_id: d.client_id,
            tombstone: d.tombstone,
            deleted: d.deleted,
        }
    }
}

/// BSON has no unsigned 64-bit integer; seqs stay far below i64::MAX.
fn seq_to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn fail(err: mongodb::error::Error) -> StoreError {
    if matches!(*err.kind, ErrorKind::ServerSelection { .. }) {
        StoreError::Unavailable(format!("MongoDB unreachable: {err}"))
    } else {
        StoreError::Unavailable(format!("MongoDB: {err}"))
    }
}

impl MongoStore {
    /// Connects to `uri` and uses `database.messages`. Writes wait for a majority and the
    /// journal: an acknowledged message must survive a crash.
    pub async fn connect(uri: &str, database: &str) -> anyhow::Result<Self> {
        let mut options =
            ClientOptions::parse(uri).await.map_err(|err| anyhow::anyhow!("invalid MongoDB URI: {err}"))?;
        options.app_name = Some("roomcast-persister".into());
        options.server_selection_timeout = Some(Duration::from_secs(3));
        options.connect_timeout = Some(Duration::from_secs(3));
        options.write_concern = Some(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build());
        let client = mongodb::Client::with_options(options)
            .map_err(|err| anyhow::anyhow!("cannot create MongoDB client: {err}"))?;
        Ok(Self { messages: client.database(database).collection("messages") })
    }

    /// Creates the unique indexes the write rules depend on. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = |name: &str| IndexOptions::builder().unique(true).name(name.to_owned()).build();
        self.messages
            .create_indexes([
                IndexModel::builder().keys(doc! {"room": 1, "seq": 1}).options(unique("room_seq")).build(),
                IndexModel::builder()
                    .keys(doc! {"room": 1, "user": 1, "client_id": 1})
                    .options(unique("room_user_client"))
                    .build(),
            ])
            .await
            .map_err(fail)?;
        Ok(())
    }

    async fn find_one(&self, filter: mongodb::bson::Document) -> Result<Option<ChatMessage>, StoreError> {
        Ok(self.messages.find_one(filter).await.map_err(fail)?.map(ChatMessage::from))
    }

    async fn find_page(
        &self,
        filter: mongodb::bson::Document,
        ascending: bool,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let docs: Vec<Doc> = self
            .messages
            .find(filter)
            .sort(doc! {"seq": if ascending { 1 } else { -1 }})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(fail)?
            .try_collect()
            .await
            .map_err(fail)?;
        let mut page: Vec<ChatMessage> = docs.into_iter().map(ChatMessage::from).collect();
        if !ascending {
            page.reverse();
        }
        Ok(page)
    }

    /// Decides the outcome of one message whose insert hit a unique index.
    async fn settle_duplicate(&self, msg: &ChatMessage) -> Result<WriteOutcome, StoreError> {
        if let Some(same) = self.find_one(doc! {"_id": &msg.id}).await? {
            return Ok(WriteOutcome::Stored(same));
        }
        let first = self.find_one(doc! {"room": &msg.room, "user": &msg.user, "client_id": &msg.client_id}).await?;
        if let Some(first) = first {
            self.insert_ignoring_duplicates(vec![Doc::from(&tombstone(&msg.room, msg.seq))]).await?;
            return Ok(WriteOutcome::Duplicate(first));
        }
        Ok(WriteOutcome::Conflict)
    }

    /// Inserts unordered; returns the indexes that hit a unique index.
    async fn insert_ignoring_duplicates(&self, docs: Vec<Doc>) -> Result<HashSet<usize>, StoreError> {
        match self.messages.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(HashSet::new()),
            Err(err) => match *err.kind {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors: Some(ref errors),
                    write_concern_error: None,
                    ..
                }) if errors.iter().all(|e| e.code == DUPLICATE_KEY) => Ok(errors.iter().map(|e| e.index).collect()),
                _ => Err(fail(err)),
            },
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn write_batch(&self, batch: &[ChatMessage]) -> Result<Vec<WriteOutcome>, StoreError> {
        let duplicates = self.insert_ignoring_duplicates(batch.iter().map(Doc::from).collect()).await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, msg) in batch.iter().enumerate() {
            outcomes.push(if duplicates.contains(&index) {
                self.settle_duplicate(msg).await?
            } else {
                WriteOutcome::Stored(msg.clone())
            });
        }
        Ok(outcomes)
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        let mut range = doc! {};
        if let Some(after) = query.after {
            range.insert("$gt", seq_to_i64(after));
        }
        if let Some(before) = query.before {
            range.insert("$lt", seq_to_i64(before));
        }
        let filter = if range.is_empty() {
            doc! {"room": &query.room}
        } else {
            doc! {"room": &query.room, "seq": range}
        };
        self.find_page(filter, query.after.is_some(), query.limit()).await
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        check_range(from, to)?;
        let range = doc! {"room": room, "seq": {"$gte": seq_to_i64(from), "$lte": seq_to_i64(to)}};
        let span = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        let found = self.find_page(range.clone(), true, span).await?;
        let present: HashSet<u64> = found.iter().map(|m| m.seq).collect();
        let seals: Vec<Doc> =
            (from..=to).filter(|seq| !present.contains(seq)).map(|seq| Doc::from(&tombstone(room, seq))).collect();
        if seals.is_empty() {
            return Ok(found);
        }
        // A seal that hits the index lost a race with a real write: read back what won.
        self.insert_ignoring_duplicates(seals).await?;
        self.find_page(range, true, span).await
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        let last = self.find_page(doc! {"room": room}, false, 1).await?;
        Ok(last.first().map(|m| m.seq).unwrap_or(0))
    }

    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        let found = self.find_one(doc! {"room": room, "seq": seq_to_i64(seq)}).await?;
        match deletion(found) {
            Deletion::Write(removed) => {
                // Only a message still shown is replaced: a concurrent delete changes nothing.
                let filter = doc! {"_id": &removed.id, "tombstone": false};
                let update = doc! {"$set": {"text": "", "tombstone": true, "deleted": true}};
                self.messages.update_one(filter, update).await.map_err(fail)?;
                Ok(Some(removed))
            }
            Deletion::Answer(answer) => Ok(answer),
        }
    }
}
