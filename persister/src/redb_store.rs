//! The embedded store: redb on local disk, for the one-process `roomcast`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{Database, ReadableTable, TableDefinition};
use roomcast_proto::ChatMessage;

use crate::store::{check_range, deletion, tombstone, Deletion, HistoryQuery, Store, StoreError, WriteOutcome};

/// (room, seq) -> the encoded message.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// "room\x1fuser\x1fclient_id" -> seq: each client send is stored once.
const CLIENTS: TableDefinition<&str, u64> = TableDefinition::new("clients");

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) the database file `dir/messages.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|err| anyhow::anyhow!("cannot create data directory {}: {err}", dir.display()))?;
        let path = dir.join("messages.redb");
        let db = Database::create(&path).map_err(|err| {
            anyhow::anyhow!("cannot open store {}: {err} (is another roomcast using it?)", path.display())
        })?;
        let txn = db.begin_write().map_err(fail)?;
        txn.open_table(MESSAGES).map_err(fail)?;
        txn.open_table(CLIENTS).map_err(fail)?;
        txn.commit().map_err(fail)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking redb work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|err| StoreError::Unavailable(format!("store task failed: {err}")))?
    }
}

fn fail(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redb: {err}"))
}

fn decode(bytes: &[u8]) -> Result<ChatMessage, StoreError> {
    ChatMessage::decode(bytes).map_err(|err| StoreError::Unavailable(format!("corrupt record: {err}")))
}

fn client_key(msg: &ChatMessage) -> String {
    format!("{}\u{1f}{}\u{1f}{}", msg.room, msg.user, msg.client_id)
}

#[async_trait]
impl Store for RedbStore {
    async fn write_batch(&self, batch: &[ChatMessage]) -> Result<Vec<WriteOutcome>, StoreError> {
        let batch = batch.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(fail)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            {
                let mut messages = txn.open_table(MESSAGES).map_err(fail)?;
                let mut clients = txn.open_table(CLIENTS).map_err(fail)?;
                for msg in batch {
                    let key = client_key(&msg);
                    let first_seq = clients.get(key.as_str()).map_err(fail)?.map(|v| v.value());
                    if let Some(first_seq) = first_seq {
                        let first = messages
                            .get((msg.room.as_str(), first_seq))
                            .map_err(fail)?
                            .map(|v| v.value().to_vec())
                            .ok_or_else(|| {
                                StoreError::Unavailable(format!("client index points at missing seq {first_seq}"))
                            })?;
                        let first = decode(&first)?;
                        if first.id == msg.id {
                            outcomes.push(WriteOutcome::Stored(first));
                            continue;
                        }
                        if messages.get((msg.room.as_str(), msg.seq)).map_err(fail)?.is_none() {
                            let seal = tombstone(&msg.room, msg.seq).encode_to_vec();
                            messages.insert((msg.room.as_str(), msg.seq), seal.as_slice()).map_err(fail)?;
                        }
                        outcomes.push(WriteOutcome::Duplicate(first));
                        continue;
                    }
                    let taken = messages.get((msg.room.as_str(), msg.seq)).map_err(fail)?.map(|v| v.value().to_vec());
                    if let Some(taken) = taken {
                        let taken = decode(&taken)?;
                        outcomes.push(if taken.id == msg.id {
                            WriteOutcome::Stored(taken)
                        } else {
                            WriteOutcome::Conflict
                        });
                        continue;
                    }
                    messages.insert((msg.room.as_str(), msg.seq), msg.encode_to_vec().as_slice()).map_err(fail)?;
                    clients.insert(key.as_str(), msg.seq).map_err(fail)?;
                    outcomes.push(WriteOutcome::Stored(msg));
                }
            }
            txn.commit().map_err(fail)?;
            Ok(outcomes)
        })
        .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        let query = query.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let messages = txn.open_table(MESSAGES).map_err(fail)?;
            let room = query.room.as_str();
            let limit = query.limit();
            let mut page = Vec::with_capacity(limit);
            if let Some(after) = query.after {
                let upper = query.before.unwrap_or(u64::MAX);
                for entry in messages.range((room, after.saturating_add(1))..(room, upper)).map_err(fail)?.take(limit) {
                    page.push(decode(entry.map_err(fail)?.1.value())?);
                }
            } else {
                let upper = query.before.unwrap_or(u64::MAX);
                for entry in messages.range((room, 0)..(room, upper)).map_err(fail)?.rev().take(limit) {
                    page.push(decode(entry.map_err(fail)?.1.value())?);
                }
                page.reverse();
            }
            Ok(page)
        })
        .await
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        check_range(from, to)?;
        let room = room.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(fail)?;
            let mut resolved = Vec::new();
            {
                let mut messages = txn.open_table(MESSAGES).map_err(fail)?;
                for seq in from..=to {
                    let found = messages.get((room.as_str(), seq)).map_err(fail)?.map(|v| v.value().to_vec());
                    match found {
                        Some(bytes) => resolved.push(decode(&bytes)?),
                        None => {
                            let seal = tombstone(&room, seq);
                            messages.insert((room.as_str(), seq), seal.encode_to_vec().as_slice()).map_err(fail)?;
                            resolved.push(seal);
                        }
                    }
                }
            }
            txn.commit().map_err(fail)?;
            Ok(resolved)
        })
        .await
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        let room = room.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let messages = txn.open_table(MESSAGES).map_err(fail)?;
            let last = messages.range((room.as_str(), 0)..=(room.as_str(), u64::MAX)).map_err(fail)?.next_back();
            Ok(match last {
                Some(entry) => entry.map_err(fail)?.0.value().1,
                None => 0,
            })
        })
        .await
    }

    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        let room = room.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(fail)?;
            let answer = {
                let mut messages = txn.open_table(MESSAGES).map_err(fail)?;
                let found = messages.get((room.as_str(), seq)).map_err(fail)?.map(|v| v.value().to_vec());
                match deletion(found.as_deref().map(decode).transpose()?) {
                    Deletion::Write(removed) => {
                        messages.insert((room.as_str(), seq), removed.encode_to_vec().as_slice()).map_err(fail)?;
                        Some(removed)
                    }
                    Deletion::Answer(answer) => answer,
                }
            };
            txn.commit().map_err(fail)?;
            Ok(answer)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, id: &str, client_id: &str) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: id.into(),
            user: "u".into(),
            text: "t".into(),
            ts: 1,
            client_id: client_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn write_rules_history_and_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let outcomes = store
            .write_batch(&[msg(1, "a", "c1"), msg(1, "a", "c1"), msg(2, "b", "c1"), msg(1, "x", "c9")])
            .await
            .expect("write");
        assert_eq!(outcomes[0], WriteOutcome::Stored(msg(1, "a", "c1")));
        assert_eq!(outcomes[1], WriteOutcome::Stored(msg(1, "a", "c1")), "same message twice is harmless");
        assert_eq!(outcomes[2], WriteOutcome::Duplicate(msg(1, "a", "c1")), "same client send: first copy wins");
        assert_eq!(outcomes[3], WriteOutcome::Conflict, "seq 1 belongs to another message");
        assert_eq!(store.max_seq("r").await.expect("max"), 2, "the duplicate's seq is sealed");

        store.write_batch(&[msg(3, "c", "c3"), msg(5, "e", "c5")]).await.expect("write");
        let page = |before, after, limit| HistoryQuery { room: "r".into(), before, after, limit };
        let seqs = |v: Vec<ChatMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.history(&page(None, None, 2)).await.expect("newest")), vec![3, 5]);
        assert_eq!(seqs(store.history(&page(Some(3), None, 10)).await.expect("before")), vec![1, 2]);
        assert_eq!(seqs(store.history(&page(None, Some(2), 10)).await.expect("after")), vec![3, 5]);
        let resolved = store.resolve("r", 3, 5).await.expect("resolve");
        assert_eq!(
            resolved.iter().map(|m| (m.seq, m.tombstone)).collect::<Vec<_>>(),
            vec![(3, false), (4, true), (5, false)]
        );
        assert!(store.resolve("r", 0, 5).await.is_err(), "seqs start at 1");

        let removed = store.delete("r", 3).await.expect("delete").expect("seq 3 is a message");
        assert!(removed.deleted && removed.tombstone && removed.text.is_empty() && removed.id == "c");
        assert_eq!(
            store.delete("r", 3).await.expect("again"),
            Some(removed.clone()),
            "deleting twice answers the same"
        );
        assert_eq!(store.delete("r", 4).await.expect("sealed"), None, "a sealed hole is no message");
        assert_eq!(store.delete("r", 9).await.expect("beyond"), None);
        let newest = store.history(&page(None, None, 10)).await.expect("history");
        assert_eq!(newest.iter().find(|m| m.seq == 3), Some(&removed), "history shows the tombstone");
        let resend = store.write_batch(&[msg(6, "f", "c3")]).await.expect("resend of a removed send");
        assert_eq!(resend, vec![WriteOutcome::Duplicate(removed)], "a removed send is still stored once");

        drop(store);
        let reopened = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.max_seq("r").await.expect("max"), 6, "data survives a reopen");
    }
}
