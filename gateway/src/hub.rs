//! What every connection of a gateway shares: the broker, the store, the rooms, the
//! limits and admission, readiness, the drain, and the send path (a seq from the broker,
//! a durable write, a publish, then the ack). Publishing after the write means nothing
//! reaches a room that the store does not hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use fanout::{Broker, BrokerError};
use persister::{tombstone, Archive, StoreError};
use rand::Rng;
use roomcast_proto::{now_millis, ChatMessage, UserBan};
use tokio_util::sync::CancellationToken;

use crate::admission::{Access, Admission};
use crate::budgets::Budgets;
use crate::error::ClientError;
use crate::limits::Limits;
use crate::outbox::Budget;
use crate::rooms::Rooms;
use crate::sink::MemberId;

/// Attempts at a free seq: each conflict re-seeds the broker's counter from the store.
const ATTEMPTS: usize = 5;
/// Every send is answered (ack or error) within this long of being received, however
/// many wait ahead of it on its connection (docs/RELIABILITY.md).
pub const SEND_DEADLINE: Duration = Duration::from_secs(15);

/// The reasons a gateway is not ready (what `/readyz` says; admission adds
/// [`crate::admission::FULL`]). Readiness is this pod's own state only: whether it can
/// take more connections. A broker or store outage is shared
/// by every pod, so it shows as `unavailable` answers, the `*_up` gauges and alerts,
/// never as unreadiness, which would empty the load balancer all at once.
pub const STARTING: &str = "starting: the broker link is not up yet";
pub const DRAINING: &str = "draining";

pub(crate) struct Hub {
    pub broker: Arc<dyn Broker>,
    pub archive: Arc<dyn Archive>,
    pub rooms: Arc<Rooms>,
    pub limits: Limits,
    pub admission: Arc<Admission>,
    pub ready: telemetry::Readiness,
    pub lifecycle: Lifecycle,
    /// The bytes queued towards every `/ws` client, bounded.
    pub send_budget: Arc<Budget>,
    /// Rooms created per user, for `--rooms-created-per-minute`.
    pub room_creations: governor::DefaultKeyedRateLimiter<String>,
    /// Where pages find this gateway's WebTransport, once it serves it.
    pub webtransport: std::sync::OnceLock<crate::wt::Offered>,
    /// The budgets each user and each room share across gateways.
    pub budgets: Budgets,
    /// This gateway's id in presence and room signals.
    pub gateway_id: Arc<str>,
    /// The open connections of each named user, for the server API's disconnect.
    kicks: Mutex<HashMap<String, HashMap<MemberId, Arc<Kick>>>>,
    next_member: AtomicU64,
}

/// How the server API reaches one connection: cancelled, with the ban, when its user is
/// removed; every front door waits on it.
#[derive(Default)]
pub(crate) struct Kick {
    fired: CancellationToken,
    ban: OnceLock<UserBan>,
}

impl Kick {
    /// Resolves when the connection's user is removed, with the removal.
    pub async fn removed(&self) -> &UserBan {
        loop {
            self.fired.cancelled().await;
            if let Some(ban) = self.ban.get() {
                return ban;
            }
        }
    }

    fn fire(&self, ban: &UserBan) {
        let _ = self.ban.set(ban.clone());
        self.fired.cancel();
    }
}

/// The gateway's shutdown, in three steps: `closing` stops accepting connections,
/// `draining` closes the open ones at random within the drain window, `stopped` ends
/// the background tasks. Stopping also closes; draining does not stop.
pub(crate) struct Lifecycle {
    pub stopped: CancellationToken,
    pub closing: CancellationToken,
    pub draining: CancellationToken,
    /// The drain window in milliseconds, set when draining starts.
    window_ms: Arc<AtomicU64>,
}

impl Lifecycle {
    fn new() -> Self {
        let stopped = CancellationToken::new();
        let closing = stopped.child_token();
        Self { stopped, closing, draining: CancellationToken::new(), window_ms: Arc::default() }
    }

    pub fn drain(&self, window: Duration) {
        self.window_ms.store(u64::try_from(window.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.closing.cancel();
        self.draining.cancel();
    }

    /// Resolves at this connection's moment to close: a random point of the drain window
    /// once draining, so that clients do not all reconnect at once.
    pub fn drain_moment(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (draining, window_ms) = (self.draining.clone().cancelled_owned(), self.window_ms.clone());
        async move {
            draining.await;
            let window = Duration::from_millis(window_ms.load(Ordering::Relaxed));
            let jitter = rand::rng().random_range(0.0..=1.0);
            tokio::time::sleep(window.mul_f64(jitter)).await;
        }
    }
}

impl Hub {
    pub fn new(
        broker: Arc<dyn Broker>,
        archive: Arc<dyn Archive>,
        rooms: Arc<Rooms>,
        limits: Limits,
        access: Access,
        gateway_id: Arc<str>,
    ) -> Self {
        let ready = telemetry::Readiness::new("roomcast_gateway_ready", &[STARTING]);
        Self {
            broker,
            archive,
            rooms,
            admission: Arc::new(Admission::new(access, limits.clone(), ready.clone())),
            send_budget: Budget::new(limits.send_queue_budget_bytes),
            room_creations: limits.creation_limiter(),
            budgets: Budgets::new(&limits),
            webtransport: std::sync::OnceLock::new(),
            gateway_id,
            kicks: Mutex::default(),
            limits,
            ready,
            lifecycle: Lifecycle::new(),
            next_member: AtomicU64::new(1),
        }
    }

    pub fn next_member_id(&self) -> MemberId {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections held now: those with a place in admission.
    pub fn connections(&self) -> usize {
        self.admission.open()
    }

    /// Registers a connection of `user`, which [`Hub::remove_user`] reaches.
    pub fn register(&self, user: &str, member: MemberId) -> Arc<Kick> {
        let kick = Arc::new(Kick::default());
        self.kicks().entry(user.to_owned()).or_default().insert(member, kick.clone());
        // A ban that came between this connection's admission and now: `remove_user` keeps
        // the ban before it reads the registrations, this reads the bans after registering,
        // so one of the two always sees the other.
        if let Some(ban) = self.admission.ban_of(user) {
            kick.fire(&ban);
        }
        kick
    }

    pub fn unregister(&self, user: &str, member: MemberId) {
        let mut kicks = self.kicks();
        if let Some(conns) = kicks.get_mut(user) {
            conns.remove(&member);
            if conns.is_empty() {
                kicks.remove(user);
            }
        }
    }

    /// A removal from the control room: the ban is kept for admission, and every
    /// connection of the user here is closed. Answers how many were.
    pub fn remove_user(&self, ban: &UserBan) -> usize {
        self.admission.ban(ban);
        let conns = self.kicks().remove(&ban.user).unwrap_or_default();
        for kick in conns.values() {
            kick.fire(ban);
        }
        if !conns.is_empty() {
            tracing::info!(user = %ban.user, reason = %ban.reason, connections = conns.len(), "user removed by the server API");
        }
        conns.len()
    }

    fn kicks(&self) -> MutexGuard<'_, HashMap<String, HashMap<MemberId, Arc<Kick>>>> {
        self.kicks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connection_opened(&self, protocol: &'static str) {
        metrics::counter!("roomcast_gateway_connects_total", "protocol" => protocol).increment(1);
        metrics::gauge!("roomcast_gateway_connections", "protocol" => protocol).increment(1.0);
    }

    pub fn connection_closed(&self, protocol: &'static str, reason: &'static str) {
        metrics::counter!("roomcast_gateway_disconnects_total", "protocol" => protocol, "reason" => reason)
            .increment(1);
        metrics::gauge!("roomcast_gateway_connections", "protocol" => protocol).decrement(1.0);
    }

    /// Stores and publishes one message received at `received`; returns it as stored
    /// (for a repeated `client_id`, the first copy), or `Timeout` at the deadline.
    pub async fn send(
        &self,
        received: tokio::time::Instant,
        user: &str,
        room: &str,
        text: &str,
        client_id: &str,
    ) -> Result<ChatMessage, ClientError> {
        tokio::time::timeout_at(received + SEND_DEADLINE, self.try_send(user, room, text, client_id))
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// As [`Hub::send`], for a client: its user's and its room's budgets first (the
    /// server API's posts are the backend's, and are not budgeted).
    pub async fn client_send(
        &self,
        received: tokio::time::Instant,
        budget: &str,
        user: &str,
        room: &str,
        text: &str,
        client_id: &str,
    ) -> Result<ChatMessage, ClientError> {
        let send = async {
            self.budgets.spend(self.broker.as_ref(), budget, room).await?;
            self.try_send(user, room, text, client_id).await
        };
        tokio::time::timeout_at(received + SEND_DEADLINE, send).await.unwrap_or(Err(ClientError::Timeout))
    }

    async fn try_send(&self, user: &str, room: &str, text: &str, client_id: &str) -> Result<ChatMessage, ClientError> {
        let id = ulid::Ulid::new().to_string();
        let ts = now_millis();
        for _ in 0..ATTEMPTS {
            let Some(seq) = self.broker.next_seq(room).await.map_err(broker_failed)? else {
                self.reseed(room).await?;
                continue;
            };
            let msg = ChatMessage {
                room: room.to_owned(),
                seq,
                id: id.clone(),
                user: user.to_owned(),
                text: text.to_owned(),
                ts,
                client_id: client_id.to_owned(),
                ..Default::default()
            };
            match self.archive.write(msg).await {
                Ok(written) => {
                    // A repeat sealed its new seq: publish the seal so rooms move past it.
                    let publish = if written.duplicate { tombstone(room, seq) } else { written.stored.clone() };
                    if let Err(err) = self.broker.publish(&publish).await {
                        // Stored is what counts: rooms fill the hole from the store.
                        tracing::warn!(%err, room, seq, "publish failed after the write; rooms will fill it from the store");
                    }
                    return Ok(written.stored);
                }
                Err(StoreError::Conflict) => {
                    tracing::info!(room, seq, "seq already taken (broker lost its counter?); re-seeding");
                    self.reseed(room).await?;
                }
                Err(err) => return Err(store_failed(err)),
            }
        }
        Err(ClientError::Unavailable(format!("no free sequence number for room {room} after {ATTEMPTS} attempts")))
    }

    async fn reseed(&self, room: &str) -> Result<(), ClientError> {
        let high = self.archive.max_seq(room).await.map_err(store_failed)?;
        self.broker.seed(room, high).await.map_err(broker_failed)
    }
}

pub(crate) fn store_failed(err: StoreError) -> ClientError {
    match err {
        StoreError::Timeout => ClientError::Timeout,
        other => ClientError::Unavailable(other.to_string()),
    }
}

pub(crate) fn broker_failed(err: BrokerError) -> ClientError {
    match err {
        BrokerError::Timeout => ClientError::Timeout,
        other => ClientError::Unavailable(other.to_string()),
    }
}
