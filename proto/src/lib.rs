//! roomcast's gRPC contract, generated from `proto/roomcast.proto`.

pub mod dial;

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("roomcast.v1");
}

pub use v1::*;

/// Milliseconds since the Unix epoch: the clock of [`ChatMessage::ts`].
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
