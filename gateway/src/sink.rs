//! What a room hands each of its members, whatever the front door: the member's history
//! when it joins, then each live message, once, in order.

use roomcast_proto::ChatMessage;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub type MemberId = u64;

/// Where a room hands its member what happens: a `/ws` connection, or a Socket.IO one.
pub trait Sink: Send + Sync + 'static {
    /// The member's history loaded (oldest first, tombstones included).
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool);
    /// A live message; `ws_frame` is its `/ws` encoding, made once per room.
    fn deliver(&self, msg: &ChatMessage, ws_frame: &Utf8Bytes);
    /// The history could not be loaded yet; the room retries.
    fn unavailable(&self, room: &str, message: &str);
}
