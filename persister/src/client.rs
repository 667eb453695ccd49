//! The gateway's view of a remote `persister`: an [`Archive`] over gRPC.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use roomcast_proto::persister_client::PersisterClient as Grpc;
use roomcast_proto::{ChatMessage, HistoryRequest, MaxSeqRequest, ResolveRequest};
use tonic::transport::{Channel, Endpoint};
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
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|err| anyhow::anyhow!("invalid persister URL {url:?}: {err}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self { grpc: Grpc::new(endpoint.connect_lazy()) })
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

async fn call<T, F>(method: &'static str, limit: Duration, fut: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, fut).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(from_status(status)),
        Err(_) => Err(StoreError::Timeout),
    };
    metrics::histogram!("roomcast_gateway_upstream_request_duration_seconds", "upstream" => "persister", "method" => method)
        .record(started.elapsed());
    if matches!(result, Err(ref err) if !matches!(err, StoreError::Conflict)) {
        metrics::counter!("roomcast_gateway_upstream_errors_total", "upstream" => "persister", "method" => method)
            .increment(1);
    }
    result
}

#[async_trait]
impl Archive for PersisterClient {
    async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError> {
        let mut grpc = self.grpc.clone();
        let reply = call("write", WRITE_TIMEOUT, grpc.write(msg)).await?;
        let stored = reply
            .stored
            .ok_or_else(|| StoreError::Unavailable("persister answered a write without the message".into()))?;
        Ok(Written { stored, duplicate: reply.duplicate })
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        let mut grpc = self.grpc.clone();
        let req = HistoryRequest { room: query.room, before: query.before, after: query.after, limit: query.limit };
        Ok(call("history", READ_TIMEOUT, grpc.history(req)).await?.messages)
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        let mut grpc = self.grpc.clone();
        let req = ResolveRequest { room: room.to_owned(), from, to };
        Ok(call("resolve", READ_TIMEOUT, grpc.resolve(req)).await?.messages)
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        let mut grpc = self.grpc.clone();
        Ok(call("max_seq", READ_TIMEOUT, grpc.max_seq(MaxSeqRequest { room: room.to_owned() })).await?.seq)
    }
}
