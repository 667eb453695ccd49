//! The gateway's view of a remote `fanout`: a [`Broker`] over gRPC.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use roomcast_proto::fanout_client::FanoutClient as Grpc;
use roomcast_proto::{ChatMessage, NextSeqRequest, SeedRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct FanoutClient {
    grpc: Grpc<Channel>,
}

impl FanoutClient {
    /// Prepares a lazy connection to `url` (e.g. `http://127.0.0.1:50051`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|err| anyhow::anyhow!("invalid fanout URL {url:?}: {err}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self { grpc: Grpc::new(endpoint.connect_lazy()) })
    }
}

/// Runs one upstream call with a deadline, timing it and counting its errors.
async fn call<T, F>(method: &'static str, fut: F) -> Result<T, BrokerError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let result = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => Err(BrokerError::Timeout),
        Ok(Err(status)) => Err(BrokerError::Unavailable(format!("fanout {method}: {}", status.message()))),
        Err(_) => Err(BrokerError::Timeout),
    };
    metrics::histogram!("roomcast_gateway_upstream_request_duration_seconds", "upstream" => "fanout", "method" => method)
        .record(started.elapsed());
    if result.is_err() {
        metrics::counter!("roomcast_gateway_upstream_errors_total", "upstream" => "fanout", "method" => method)
            .increment(1);
    }
    result
}

#[async_trait]
impl Broker for FanoutClient {
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError> {
        let mut grpc = self.grpc.clone();
        let reply = call("next_seq", grpc.next_seq(NextSeqRequest { room: room.to_owned() })).await?;
        Ok(reply.seq)
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        let mut grpc = self.grpc.clone();
        call("seed", grpc.seed(SeedRequest { room: room.to_owned(), floor })).await.map(drop)
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        let mut grpc = self.grpc.clone();
        call("publish", grpc.publish(msg.clone())).await.map(drop)
    }

    async fn connect(&self) -> Result<Link, BrokerError> {
        let (interests, interest_rx) = mpsc::channel(1024);
        let mut grpc = self.grpc.clone();
        let mut stream = call("subscribe", grpc.subscribe(ReceiverStream::new(interest_rx))).await?;
        let (event_tx, events) = mpsc::channel(LINK_CAPACITY);
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        if event_tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::warn!(%status, "fanout subscription stream ended");
                        metrics::counter!("roomcast_gateway_upstream_errors_total", "upstream" => "fanout", "method" => "subscribe")
                            .increment(1);
                        return;
                    }
                }
            }
        });
        Ok(Link { interests, events })
    }
}
