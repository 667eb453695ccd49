//! The broker interface shared by the embedded and the Redis implementations.

use async_trait::async_trait;
use roomcast_proto::{
    ChatMessage, Event, HeartbeatReply, Interest, PresenceEntry, RoomSignal, RoomTouch, RoomsReply, SpendReply,
    SpendRequest, UserBan,
};
use tokio::sync::mpsc;

/// Room fan-out plus per-room sequence numbers, and the ephemeral room state beside
/// them: presence, typing, live gateways and the room directory (see `presence`).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The next sequence number of `room`, or `None` when the broker does not know the
    /// room's counter (a new room, or state lost): seed it from the store, then ask again.
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError>;
    /// Raises `room`'s counter to at least `floor`.
    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError>;
    /// Carries a stored message to every link subscribed to its room.
    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError>;
    /// Opens a link: the subscription channel of one gateway.
    async fn connect(&self) -> Result<Link, BrokerError>;
    /// Carries a signal to every link subscribed to its room; a presence change is also
    /// kept, for [`Broker::presence`].
    async fn signal(&self, signal: &RoomSignal) -> Result<(), BrokerError>;
    /// The presence entries of `room`, of live gateways only.
    async fn presence(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError>;
    /// Keeps `gateway` alive for [`crate::GATEWAY_TTL`], or forgets it when `gone`, and
    /// trims the directory; answers the live gateways and the directory's size.
    async fn heartbeat(&self, gateway: &str, gone: bool) -> Result<HeartbeatReply, BrokerError>;
    /// Marks rooms active now; a non-empty name names the room in the directory.
    async fn touch(&self, rooms: &[RoomTouch]) -> Result<(), BrokerError>;
    /// A page of the directory, most recently active first, with member counts.
    async fn rooms(&self, offset: u32, limit: u32) -> Result<RoomsReply, BrokerError>;
    /// Keeps `ban` until its `until`, for [`Broker::bans`]. Closing the user's connections
    /// is a signal on [`CONTROL`], sent by the caller.
    async fn ban(&self, ban: &UserBan) -> Result<(), BrokerError>;
    /// The bans in force, for a gateway whose link (re)connects.
    async fn bans(&self) -> Result<Vec<UserBan>, BrokerError>;
    /// Takes one send from its user's and its room's budgets (the user's first); answers
    /// which budget it is over, if any (see `budget`).
    async fn spend(&self, spend: &SpendRequest) -> Result<SpendReply, BrokerError>;
}

/// The control room: every gateway's link subscribes it, so a signal there (a
/// [`roomcast_proto::room_signal::Kind::Kick`]) reaches every gateway. Client room names
/// cannot start with `~`.
pub const CONTROL: &str = "~control";

/// One gateway's subscription: it sends [`Interest`]s and receives [`Event`]s.
/// When `events` ends the link is gone, and the gateway must connect again and resync.
pub struct Link {
    pub interests: mpsc::Sender<Interest>,
    pub events: mpsc::Receiver<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker did not answer in time")]
    Timeout,
    /// The broker is of a version without this call (during a rolling upgrade).
    #[error("the broker does not know this call: {0}")]
    Unsupported(String),
}

/// Capacity of a link's event queue. A gateway that falls this far behind has its link
/// closed; it reconnects and re-reads its rooms from the store, so nothing is lost.
pub const LINK_CAPACITY: usize = 65_536;
