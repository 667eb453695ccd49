//! Sizes and counts a client may use, all with defaults that are safe in public.

use std::num::NonZeroU32;

use crate::error::{ClientError, Malformed};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest text frame answered with an error instead of a close.
    pub max_frame_bytes: usize,
    /// Largest frame read at all; beyond it the connection closes with 1009.
    pub hard_frame_bytes: usize,
    pub max_text_chars: usize,
    pub max_room_chars: usize,
    pub max_user_chars: usize,
    pub max_client_id_bytes: usize,
    pub max_rooms_per_connection: usize,
    /// Messages in a join without `since`, and the default history page.
    pub history_page: u32,
    /// Most messages one join with `since` recovers.
    pub max_recovery: usize,
    /// Bytes queued towards one client before it is disconnected as too slow.
    pub send_queue_bytes: usize,
    /// Bytes queued towards all `/ws` clients together; 0 for no bound (outbox.rs).
    pub send_queue_budget_bytes: usize,
    /// Frames (or Socket.IO events) one connection may send per second, sustained.
    pub frames_per_second: u32,
    /// Frames one connection may send at once above the sustained rate.
    pub frame_burst: u32,
    /// Connections this gateway holds at once; 0 for no limit.
    pub max_connections: usize,
    /// Connections one client IP may hold at once; 0 for no limit.
    pub max_connections_per_ip: usize,
    /// `/ws` pings every this often; a client that sends nothing, not even a pong, for
    /// 2.5 times as long is closed as gone (a peer that vanished without a FIN).
    pub ping_every: std::time::Duration,
    /// Rooms one user may create per minute on this gateway.
    pub rooms_created_per_minute: u32,
    /// Above this many users in a room, members get presence counts and no lists.
    pub presence_list_max: usize,
    /// How long a user who left a room is still shown in its presence.
    pub presence_grace: std::time::Duration,
    /// How long a connection whose token expired has to send a new one.
    pub refresh_grace: std::time::Duration,
    /// Sends one user may make per second across all its connections and gateways, and
    /// at once above that (0 per second: no user budget).
    pub user_sends_per_second: f64,
    pub user_send_burst: u32,
    /// Sends one room may take per second, from all its members, and at once above that
    /// (0 per second: no room budget), so one room cannot take the whole store.
    pub room_sends_per_second: f64,
    pub room_send_burst: u32,
    /// How long sends go unchecked while the broker cannot answer for the budgets.
    pub budget_fail_open: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            hard_frame_bytes: 1024 * 1024,
            max_text_chars: 4000,
            max_room_chars: 64,
            max_user_chars: 32,
            max_client_id_bytes: 64,
            max_rooms_per_connection: 50,
            history_page: 50,
            max_recovery: 5000,
            send_queue_bytes: 1024 * 1024,
            send_queue_budget_bytes: 256 * 1024 * 1024,
            frames_per_second: 20,
            frame_burst: 40,
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            ping_every: std::time::Duration::from_secs(30),
            rooms_created_per_minute: 10,
            presence_list_max: 100,
            presence_grace: std::time::Duration::from_secs(3),
            refresh_grace: std::time::Duration::from_secs(30),
            user_sends_per_second: 30.0,
            user_send_burst: 60,
            room_sends_per_second: 1000.0,
            room_send_burst: 2000,
            budget_fail_open: std::time::Duration::from_secs(30),
        }
    }
}

/// Names are 1..=max characters of `A-Z a-z 0-9 _ . -`.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Limits {
    /// A per-connection rate limiter for [`Limits::frames_per_second`].
    pub fn frame_limiter(&self) -> governor::DefaultDirectRateLimiter {
        let rate = NonZeroU32::new(self.frames_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.frame_burst).unwrap_or(rate);
        governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
    }

    /// How long a `/ws` client may stay silent, pongs included, before it is closed.
    pub fn silence_limit(&self) -> std::time::Duration {
        self.ping_every.mul_f64(2.5)
    }

    /// A limiter of room creations per user.
    pub fn creation_limiter(&self) -> governor::DefaultKeyedRateLimiter<String> {
        let rate = NonZeroU32::new(self.rooms_created_per_minute).unwrap_or(NonZeroU32::MIN);
        governor::RateLimiter::keyed(governor::Quota::per_minute(rate))
    }

    /// The refusal for a frame over the rate.
    pub fn rate_limited(&self) -> ClientError {
        ClientError::RateLimited(format!(
            "more than {} frames per second (burst {}): slow down, then resend what was dropped",
            self.frames_per_second, self.frame_burst
        ))
    }

    pub fn check_room(&self, room: &str) -> Result<(), ClientError> {
        if valid_name(room, self.max_room_chars) {
            Ok(())
        } else {
            Err(ClientError::InvalidRoom { max: self.max_room_chars })
        }
    }

    pub fn check_user(&self, user: &str) -> Result<(), ClientError> {
        if valid_name(user, self.max_user_chars) {
            Ok(())
        } else {
            Err(ClientError::InvalidUser(format!(
                "user names are 1 to {} characters of A-Z a-z 0-9 _ . -",
                self.max_user_chars
            )))
        }
    }

    pub fn check_text(&self, text: &str) -> Result<(), ClientError> {
        let chars = text.chars().count();
        if chars == 0 {
            return Err(ClientError::bad_request(Malformed::Field, "text must not be empty"));
        }
        if chars > self.max_text_chars {
            return Err(ClientError::TooLarge(format!(
                "text is {chars} characters; the limit is {}",
                self.max_text_chars
            )));
        }
        Ok(())
    }

    pub fn check_client_id(&self, client_id: &str) -> Result<(), ClientError> {
        if client_id.is_empty() || client_id.len() > self.max_client_id_bytes {
            return Err(ClientError::bad_request(
                Malformed::Field,
                format!("client_id must be 1 to {} bytes", self.max_client_id_bytes),
            ));
        }
        Ok(())
    }
}
