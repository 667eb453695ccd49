//! The `fanout` gRPC service: any [`Broker`] served to gateways.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use roomcast_proto::fanout_server::Fanout;
use roomcast_proto::{
    BanReply, BansReply, BansRequest, ChatMessage, Event, HeartbeatReply, HeartbeatRequest, Interest, NextSeqReply,
    NextSeqRequest, PresenceReply, PresenceRequest, PublishReply, RoomSignal, RoomsReply, RoomsRequest, SeedReply,
    SeedRequest, SignalReply, SpendReply, SpendRequest, TouchReply, TouchRequest, UserBan,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::{Broker, BrokerError};

pub struct FanoutService {
    broker: Arc<dyn Broker>,
}

impl FanoutService {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }
}

pub(crate) fn to_status(err: BrokerError) -> Status {
    match err {
        BrokerError::Unavailable(msg) => Status::unavailable(msg),
        BrokerError::Timeout => Status::deadline_exceeded("broker did not answer in time"),
        BrokerError::Unsupported(msg) => Status::unimplemented(msg),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Fanout for FanoutService {
    async fn next_seq(&self, req: Request<NextSeqRequest>) -> Result<Response<NextSeqReply>, Status> {
        let seq = self.broker.next_seq(&req.into_inner().room).await.map_err(to_status)?;
        Ok(Response::new(NextSeqReply { seq }))
    }

    async fn seed(&self, req: Request<SeedRequest>) -> Result<Response<SeedReply>, Status> {
        let req = req.into_inner();
        self.broker.seed(&req.room, req.floor).await.map_err(to_status)?;
        Ok(Response::new(SeedReply {}))
    }

    async fn publish(&self, req: Request<ChatMessage>) -> Result<Response<PublishReply>, Status> {
        self.broker.publish(&req.into_inner()).await.map_err(to_status)?;
        Ok(Response::new(PublishReply {}))
    }

    async fn signal(&self, req: Request<RoomSignal>) -> Result<Response<SignalReply>, Status> {
        self.broker.signal(&req.into_inner()).await.map_err(to_status)?;
        Ok(Response::new(SignalReply {}))
    }

    async fn presence(&self, req: Request<PresenceRequest>) -> Result<Response<PresenceReply>, Status> {
        let entries = self.broker.presence(&req.into_inner().room).await.map_err(to_status)?;
        Ok(Response::new(PresenceReply { entries }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.broker.heartbeat(&req.gateway, req.gone).await.map_err(to_status)?))
    }

    async fn touch(&self, req: Request<TouchRequest>) -> Result<Response<TouchReply>, Status> {
        self.broker.touch(&req.into_inner().rooms).await.map_err(to_status)?;
        Ok(Response::new(TouchReply {}))
    }

    async fn rooms(&self, req: Request<RoomsRequest>) -> Result<Response<RoomsReply>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.broker.rooms(req.offset, req.limit).await.map_err(to_status)?))
    }

    async fn ban(&self, req: Request<UserBan>) -> Result<Response<BanReply>, Status> {
        self.broker.ban(&req.into_inner()).await.map_err(to_status)?;
        Ok(Response::new(BanReply {}))
    }

    async fn spend(&self, req: Request<SpendRequest>) -> Result<Response<SpendReply>, Status> {
        Ok(Response::new(self.broker.spend(&req.into_inner()).await.map_err(to_status)?))
    }

    async fn bans(&self, _: Request<BansRequest>) -> Result<Response<BansReply>, Status> {
        Ok(Response::new(BansReply { bans: self.broker.bans().await.map_err(to_status)? }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<Streaming<Interest>>) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut incoming = req.into_inner();
        let link = self.broker.connect().await.map_err(to_status)?;
        let interests = link.interests;
        tokio::spawn(async move {
            while let Some(Ok(interest)) = incoming.next().await {
                if interests.send(interest).await.is_err() {
                    break;
                }
            }
            // Dropping `interests` ends the link: the broker forgets the gateway's rooms.
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(link.events).map(Ok))))
    }
}
