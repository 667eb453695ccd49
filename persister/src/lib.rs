//! The store tier. Messages are written in batches, idempotently, and the store's unique
//! `(room, seq)` key decides which message owns a sequence number.
//!
//! [`Store`] is the backend interface, with [`RedbStore`] (embedded, on disk) and
//! [`MongoStore`]. [`Archive`] is what the gateway calls: [`Persister`] in-process
//! (a [`Batcher`] in front of a store) or [`PersisterClient`] over gRPC.

mod archive;
mod batcher;
mod client;
pub mod metrics;
mod mongo_store;
mod redb_store;
mod server;
mod store;

pub use archive::{Archive, Persister, Written};
pub use batcher::{Batcher, BatcherConfig};
pub use client::PersisterClient;
pub use mongo_store::MongoStore;
pub use redb_store::RedbStore;
pub use server::PersisterService;
pub use store::{removed, tombstone, HistoryQuery, Store, StoreError, WriteOutcome, MAX_PAGE};
