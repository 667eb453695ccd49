//! What a room hands each of its members, whatever the front door: the member's history
//! when it joins, then each live message, once, in order; and the room's presence and
//! typing.

use roomcast_proto::ChatMessage;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::presence::{Notice, Snapshot};

pub type MemberId = u64;

/// Where a room hands its member what happens: a `/ws` connection, or a Socket.IO one.
pub trait Sink: Send + Sync + 'static {
    /// The member's history loaded (oldest first, tombstones included), and the room's
    /// presence as its members were last told.
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool, presence: &Snapshot);
    /// A live message; `ws_frame` is its `/ws` encoding, made once per room.
    fn deliver(&self, msg: &ChatMessage, ws_frame: &Utf8Bytes);
    /// A presence batch or a typing signal; `ws_frame` is its `/ws` encoding.
    fn notify(&self, room: &str, notice: &Notice, ws_frame: &Utf8Bytes);
    /// A message this member was sent was removed by moderation: `tombstone` replaced
    /// it; `ws_frame` is the `/ws` `deleted` frame.
    fn deleted(&self, tombstone: &ChatMessage, ws_frame: &Utf8Bytes);
    /// The history could not be loaded yet; the room retries.
    fn unavailable(&self, room: &str, message: &str);
}
