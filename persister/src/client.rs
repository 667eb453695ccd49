//! The gateway's view of a remote `persister`: an [`Archive`] over gRPC.

use std::time::Duration;

use async_trait::async_trait;
use roomcast_proto::dial;
use roomcast_proto::persister_client::PersisterClient as Grpc;
use roomcast_proto::{ChatMessage, DeleteRequest, HistoryRequest, MaxSeqRequest, ResolveRequest};
use tonic::transport::Channel;
use tonic::Code;

use crate::archive::{Archive, Written};
use crate::store::{HistoryQuery, StoreError};

/// A write may wait out the persister's own retries (3 s) plus a batch.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct PersisterClient {
    grpc: Grpc<Channel>,
}

impl PersisterClient {
    /// Prepares a lazy connection to `url` (e.g. `http://127.0.0.1:50052`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self { grpc: Grpc::new(dial::channel(url, "persister").map_err(anyhow::Error::msg)?) })
    }
}

fn from_status(status: tonic::Status) -> StoreError {
    match status.code() {
        Code::DeadlineExceeded => StoreError::Timeout,
        Code::ResourceExhausted => StoreError::Overloaded,
        Code::Aborted => StoreError::Conflict,
        Code::InvalidArgument => StoreError::Invalid(status.message().to_owned()),
        _ => StoreError::Unavailable(format!("persister: {}", status.message())),
    }
}

async fn call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, StoreError> {
    dial::call(limit, fut).await.map_err(from_status)
}

#[async_trait]
impl Archive for PersisterClient {
    async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError> {
        let mut grpc = self.grpc.clone();
        let reply = call(WRITE_TIMEOUT, grpc.write(msg)).await?;
        let stored = reply
            .stored
            .ok_or_else(|| StoreError::Unavailable("persister answered a write without the message".into()))?;
        Ok(Written { stored, duplicate: reply.duplicate })
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        let mut grpc = self.grpc.clone();
        let req = HistoryRequest { room: query.room, before: query.before, after: query.after, limit: query.limit };
        Ok(call(READ_TIMEOUT, grpc.history(req)).await?.messages)
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        let mut grpc = self.grpc.clone();
        let req = ResolveRequest { room: room.to_owned(), from, to };
        Ok(call(READ_TIMEOUT, grpc.resolve(req)).await?.messages)
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        let mut grpc = self.grpc.clone();
        Ok(call(READ_TIMEOUT, grpc.max_seq(MaxSeqRequest { room: room.to_owned() })).await?.seq)
    }

    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        let mut grpc = self.grpc.clone();
        Ok(call(WRITE_TIMEOUT, grpc.delete(DeleteRequest { room: room.to_owned(), seq })).await?.deleted)
    }
}
