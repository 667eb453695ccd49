//! The `persister` gRPC service: a [`Persister`] served to the gateways.

use roomcast_proto::persister_server::Persister as PersisterRpc;
use roomcast_proto::{
    ChatMessage, DeleteReply, DeleteRequest, HistoryReply, HistoryRequest, MaxSeqReply, MaxSeqRequest, ResolveRequest,
    WriteReply,
};
use tonic::{Request, Response, Status};

use crate::archive::{Archive, Persister};
use crate::store::{HistoryQuery, StoreError};

pub struct PersisterService {
    persister: Persister,
}

impl PersisterService {
    pub fn new(persister: Persister) -> Self {
        Self { persister }
    }
}

/// Store errors as gRPC statuses; [`crate::client`] maps them back.
pub(crate) fn to_status(err: StoreError) -> Status {
    match err {
        StoreError::Unavailable(msg) => Status::unavailable(msg),
        StoreError::Timeout => Status::deadline_exceeded("store did not answer in time"),
        StoreError::Overloaded => Status::resource_exhausted(StoreError::Overloaded.to_string()),
        StoreError::Conflict => Status::aborted(StoreError::Conflict.to_string()),
        StoreError::Invalid(msg) => Status::invalid_argument(msg),
    }
}

#[tonic::async_trait]
impl PersisterRpc for PersisterService {
    async fn write(&self, req: Request<ChatMessage>) -> Result<Response<WriteReply>, Status> {
        let written = self.persister.write(req.into_inner()).await.map_err(to_status)?;
        Ok(Response::new(WriteReply { stored: Some(written.stored), duplicate: written.duplicate }))
    }

    async fn history(&self, req: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        let req = req.into_inner();
        let query = HistoryQuery { room: req.room, before: req.before, after: req.after, limit: req.limit };
        let messages = self.persister.history(query).await.map_err(to_status)?;
        Ok(Response::new(HistoryReply { messages }))
    }

    async fn resolve(&self, req: Request<ResolveRequest>) -> Result<Response<HistoryReply>, Status> {
        let req = req.into_inner();
        let messages = self.persister.resolve(&req.room, req.from, req.to).await.map_err(to_status)?;
        Ok(Response::new(HistoryReply { messages }))
    }

    async fn max_seq(&self, req: Request<MaxSeqRequest>) -> Result<Response<MaxSeqReply>, Status> {
        let seq = self.persister.max_seq(&req.into_inner().room).await.map_err(to_status)?;
        Ok(Response::new(MaxSeqReply { seq }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        let req = req.into_inner();
        let deleted = self.persister.delete(&req.room, req.seq).await.map_err(to_status)?;
        Ok(Response::new(DeleteReply { deleted }))
    }
}
