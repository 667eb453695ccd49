//! The send path: a seq from the broker, a durable write, a publish, then the ack.
//! Publishing after the write means nothing reaches a room that the store does not hold.

use persister::{tombstone, StoreError};
use roomcast_proto::ChatMessage;

use crate::rooms::now_millis;
use crate::Core;

/// Attempts at a free seq: each conflict re-seeds the broker's counter from the store.
const ATTEMPTS: usize = 5;
/// Every send is answered (ack or error) within this long of being received, however
/// many wait ahead of it on its connection (docs/RELIABILITY.md).
pub const SEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Unavailable(String),
    #[error("the message could not be stored in time; it may still be stored: resend it with the same client_id")]
    Timeout,
}

impl SendError {
    pub fn code(&self) -> &'static str {
        match self {
            SendError::Unavailable(_) => "unavailable",
            SendError::Timeout => "timeout",
        }
    }
}

impl From<StoreError> for SendError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Timeout => SendError::Timeout,
            other => SendError::Unavailable(other.to_string()),
        }
    }
}

impl From<fanout::BrokerError> for SendError {
    fn from(err: fanout::BrokerError) -> Self {
        match err {
            fanout::BrokerError::Timeout => SendError::Timeout,
            other => SendError::Unavailable(other.to_string()),
        }
    }
}

impl Core {
    /// Stores and publishes one message received at `received`; returns it as stored
    /// (for a repeated `client_id`, the first copy), or `Timeout` at the deadline.
    pub(crate) async fn send(
        &self,
        received: tokio::time::Instant,
        user: &str,
        room: &str,
        text: &str,
        client_id: &str,
    ) -> Result<ChatMessage, SendError> {
        tokio::time::timeout_at(received + SEND_DEADLINE, self.try_send(user, room, text, client_id))
            .await
            .unwrap_or(Err(SendError::Timeout))
    }

    async fn try_send(&self, user: &str, room: &str, text: &str, client_id: &str) -> Result<ChatMessage, SendError> {
        let id = ulid::Ulid::new().to_string();
        let ts = now_millis();
        for _ in 0..ATTEMPTS {
            let Some(seq) = self.broker.next_seq(room).await? else {
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
                tombstone: false,
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
                Err(err) => return Err(err.into()),
            }
        }
        Err(SendError::Unavailable(format!("no free sequence number for room {room} after {ATTEMPTS} attempts")))
    }

    async fn reseed(&self, room: &str) -> Result<(), SendError> {
        let high = self.archive.max_seq(room).await?;
        self.broker.seed(room, high).await?;
        Ok(())
    }
}
