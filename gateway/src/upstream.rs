//! The gateway's metrics for its upstreams: every call to the broker and the store is
//! timed, and its failures counted, by the crate that owns those metrics (this one),
//! whichever client implements the call.

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;
use fanout::{Broker, BrokerError, Link};
use persister::{Archive, HistoryQuery, StoreError, Written};
use roomcast_proto::{
    ChatMessage, HeartbeatReply, PresenceEntry, RoomSignal, RoomTouch, RoomsReply, SpendReply, SpendRequest, UserBan,
};

/// An upstream client, its calls measured as `roomcast_gateway_upstream_*{upstream}`.
pub struct Metered<T> {
    inner: T,
    upstream: &'static str,
}

impl<T> Metered<T> {
    pub fn new(upstream: &'static str, inner: T) -> Self {
        Self { inner, upstream }
    }

    /// Times `call`; `failed` says which of its errors count as upstream errors.
    async fn measure<R, E>(
        &self,
        method: &'static str,
        failed: impl Fn(&E) -> bool,
        call: impl Future<Output = Result<R, E>>,
    ) -> Result<R, E> {
        let started = Instant::now();
        let result = call.await;
        let upstream = self.upstream;
        metrics::histogram!("roomcast_gateway_upstream_request_duration_seconds", "upstream" => upstream, "method" => method)
            .record(started.elapsed());
        if matches!(&result, Err(err) if failed(err)) {
            metrics::counter!("roomcast_gateway_upstream_errors_total", "upstream" => upstream, "method" => method)
                .increment(1);
        }
        result
    }
}

fn any<E>(_: &E) -> bool {
    true
}

#[async_trait]
impl<B: Broker> Broker for Metered<B> {
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError> {
        self.measure("next_seq", any, self.inner.next_seq(room)).await
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        self.measure("seed", any, self.inner.seed(room, floor)).await
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        self.measure("publish", any, self.inner.publish(msg)).await
    }

    async fn connect(&self) -> Result<Link, BrokerError> {
        self.measure("subscribe", any, self.inner.connect()).await
    }

    async fn signal(&self, signal: &RoomSignal) -> Result<(), BrokerError> {
        self.measure("signal", any, self.inner.signal(signal)).await
    }

    async fn presence(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.measure("presence", any, self.inner.presence(room)).await
    }

    async fn heartbeat(&self, gateway: &str, gone: bool) -> Result<HeartbeatReply, BrokerError> {
        self.measure("heartbeat", any, self.inner.heartbeat(gateway, gone)).await
    }

    async fn touch(&self, rooms: &[RoomTouch]) -> Result<(), BrokerError> {
        self.measure("touch", any, self.inner.touch(rooms)).await
    }

    async fn rooms(&self, offset: u32, limit: u32) -> Result<RoomsReply, BrokerError> {
        self.measure("rooms", any, self.inner.rooms(offset, limit)).await
    }

    async fn ban(&self, ban: &UserBan) -> Result<(), BrokerError> {
        self.measure("ban", any, self.inner.ban(ban)).await
    }

    async fn spend(&self, spend: &SpendRequest) -> Result<SpendReply, BrokerError> {
        self.measure("spend", any, self.inner.spend(spend)).await
    }

    async fn bans(&self) -> Result<Vec<UserBan>, BrokerError> {
        self.measure("bans", any, self.inner.bans()).await
    }
}

/// A seq conflict is the send path working as designed, not a failing store.
fn store_failed(err: &StoreError) -> bool {
    !matches!(err, StoreError::Conflict)
}

#[async_trait]
impl<A: Archive> Archive for Metered<A> {
    async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError> {
        self.measure("write", store_failed, self.inner.write(msg)).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        self.measure("history", store_failed, self.inner.history(query)).await
    }

    async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        self.measure("resolve", store_failed, self.inner.resolve(room, from, to)).await
    }

    async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        self.measure("max_seq", store_failed, self.inner.max_seq(room)).await
    }

    async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        self.measure("delete", store_failed, self.inner.delete(room, seq)).await
    }
}
