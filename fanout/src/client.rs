//! The gateway's view of a remote `fanout`: a [`Broker`] over gRPC.

use std::time::Duration;

use async_trait::async_trait;
use roomcast_proto::dial;
use roomcast_proto::fanout_client::FanoutClient as Grpc;
use roomcast_proto::{
    BansRequest, ChatMessage, HeartbeatReply, HeartbeatRequest, NextSeqRequest, PresenceEntry, PresenceRequest,
    RoomSignal, RoomTouch, RoomsReply, RoomsRequest, SeedRequest, SpendReply, SpendRequest, TouchRequest, UserBan,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct FanoutClient {
    grpc: Grpc<Channel>,
}

impl FanoutClient {
    /// Prepares a lazy connection to `url` (e.g. `http://127.0.0.1:50051`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self { grpc: Grpc::new(dial::channel(url, "fanout").map_err(anyhow::Error::msg)?) })
    }
}

fn from_status(method: &str, status: tonic::Status) -> BrokerError {
    match status.code() {
        tonic::Code::DeadlineExceeded => BrokerError::Timeout,
        tonic::Code::Unimplemented => BrokerError::Unsupported(format!("fanout {method}")),
        _ => BrokerError::Unavailable(format!("fanout {method}: {}", status.message())),
    }
}

async fn call<T>(
    method: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, BrokerError> {
    dial::call(CALL_TIMEOUT, fut).await.map_err(|status| from_status(method, status))
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
                        return;
                    }
                }
            }
        });
        Ok(Link { interests, events })
    }

    async fn signal(&self, signal: &RoomSignal) -> Result<(), BrokerError> {
        let mut grpc = self.grpc.clone();
        call("signal", grpc.signal(signal.clone())).await.map(drop)
    }

    async fn presence(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let mut grpc = self.grpc.clone();
        Ok(call("presence", grpc.presence(PresenceRequest { room: room.to_owned() })).await?.entries)
    }

    async fn heartbeat(&self, gateway: &str, gone: bool) -> Result<HeartbeatReply, BrokerError> {
        let mut grpc = self.grpc.clone();
        call("heartbeat", grpc.heartbeat(HeartbeatRequest { gateway: gateway.to_owned(), gone })).await
    }

    async fn touch(&self, rooms: &[RoomTouch]) -> Result<(), BrokerError> {
        let mut grpc = self.grpc.clone();
        call("touch", grpc.touch(TouchRequest { rooms: rooms.to_vec() })).await.map(drop)
    }

    async fn rooms(&self, offset: u32, limit: u32) -> Result<RoomsReply, BrokerError> {
        let mut grpc = self.grpc.clone();
        call("rooms", grpc.rooms(RoomsRequest { offset, limit })).await
    }

    async fn ban(&self, ban: &UserBan) -> Result<(), BrokerError> {
        let mut grpc = self.grpc.clone();
        call("ban", grpc.ban(ban.clone())).await.map(drop)
    }

    async fn spend(&self, spend: &SpendRequest) -> Result<SpendReply, BrokerError> {
        let mut grpc = self.grpc.clone();
        call("spend", grpc.spend(spend.clone())).await
    }

    async fn bans(&self) -> Result<Vec<UserBan>, BrokerError> {
        let mut grpc = self.grpc.clone();
        Ok(call("bans", grpc.bans(BansRequest {})).await?.bans)
    }
}
