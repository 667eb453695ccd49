//! What a client is told: why a frame or event was refused, why a connection was refused,
//! and how a connection is closed. A leaf module (it imports nothing of the gateway), so
//! every front door answers with the same codes, and one test holds them to
//! docs/PROTOCOL.md.

use hyper::StatusCode;

/// Why a frame or event could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Json,
    UnknownType,
    Field,
    Binary,
}

/// A refused frame or event, or a send that failed. `code()` goes to the client, `kind()`
/// labels `roomcast_gateway_bad_frames_total`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("{1}")]
    BadRequest(Malformed, String),
    #[error("{0}")]
    TooLarge(String),
    #[error("room names are 1 to {max} characters of A-Z a-z 0-9 _ . -")]
    InvalidRoom { max: usize },
    #[error("{0}")]
    InvalidUser(String),
    #[error("join room {room} before sending to it")]
    NotJoined { room: String },
    #[error("your token does not grant room {room}")]
    ForbiddenRoom { room: String },
    #[error("a connection may be in at most {max} rooms: leave one first")]
    TooManyRooms { max: usize },
    #[error("more than {max} sends are waiting: wait for acks, then resend with the same client_id")]
    Overloaded { max: usize },
    /// Over a rate: the message says which, and what to do.
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the message could not be stored in time; it may still be stored: resend it with the same client_id")]
    Timeout,
    /// A refresh token that cannot replace the connection's.
    #[error("{0}")]
    TokenInvalid(String),
}

impl ClientError {
    pub fn bad_request(why: Malformed, message: impl Into<String>) -> Self {
        ClientError::BadRequest(why, message.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            ClientError::BadRequest(..) => "bad_request",
            ClientError::TooLarge(_) => "too_large",
            ClientError::InvalidRoom { .. } => "invalid_room",
            ClientError::InvalidUser(_) => "invalid_user",
            ClientError::NotJoined { .. } => "not_joined",
            ClientError::ForbiddenRoom { .. } => "forbidden_room",
            ClientError::TooManyRooms { .. } => "too_many_rooms",
            ClientError::Overloaded { .. } => "overloaded",
            ClientError::RateLimited(_) => "rate_limited",
            ClientError::Unavailable(_) => "unavailable",
            ClientError::Timeout => "timeout",
            ClientError::TokenInvalid(_) => "token_invalid",
        }
    }

    /// The HTTP status of this error on the server API.
    pub fn status(&self) -> StatusCode {
        match self {
            ClientError::BadRequest(..)
            | ClientError::InvalidRoom { .. }
            | ClientError::InvalidUser(_)
            | ClientError::NotJoined { .. } => StatusCode::BAD_REQUEST,
            ClientError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ClientError::ForbiddenRoom { .. } | ClientError::TokenInvalid(_) => StatusCode::FORBIDDEN,
            ClientError::TooManyRooms { .. } | ClientError::Overloaded { .. } | ClientError::RateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ClientError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `roomcast_gateway_bad_frames_total` label: None for a failure of the server's
    /// own (those count in `roomcast_gateway_messages_sent_total{result="error"}`).
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            ClientError::BadRequest(Malformed::Json, _) => "invalid_json",
            ClientError::BadRequest(Malformed::UnknownType, _) => "unknown_type",
            ClientError::BadRequest(Malformed::Binary, _) => "binary",
            ClientError::BadRequest(Malformed::Field, _)
            | ClientError::InvalidRoom { .. }
            | ClientError::InvalidUser(_)
            | ClientError::NotJoined { .. } => "invalid_field",
            ClientError::TooLarge(_) => "too_large",
            ClientError::ForbiddenRoom { .. } => "forbidden_room",
            ClientError::TooManyRooms { .. } => "too_many_rooms",
            ClientError::Overloaded { .. } => "overloaded",
            ClientError::RateLimited(_) => "rate_limited",
            ClientError::TokenInvalid(_) => "token_invalid",
            ClientError::Unavailable(_) | ClientError::Timeout => return None,
        })
    }

    /// Every `kind()` label, for putting the series at zero.
    pub const KINDS: &[&str] = &[
        "invalid_json",
        "unknown_type",
        "invalid_field",
        "binary",
        "too_large",
        "forbidden_room",
        "too_many_rooms",
        "overloaded",
        "rate_limited",
        "token_invalid",
    ];
}

/// Why a connection was refused before it was admitted: an HTTP status for `/ws`, a
/// `connect_error` for Socket.IO; both carry `code()` and the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectError {
    #[error("origin {0} is not in this server's allow-list (--allowed-origins)")]
    OriginNotAllowed(String),
    #[error("this server requires a token: connect with ?token=JWT (or Socket.IO auth {{token}})")]
    TokenMissing,
    #[error("{0}")]
    TokenInvalid(String),
    #[error("the token has expired: get a new one")]
    TokenExpired,
    #[error("{0}")]
    InvalidUser(String),
    #[error("this gateway holds its maximum of {0} connections: retry on another")]
    ServerFull(usize),
    #[error("{ip} already has {max} connections, the most one address may hold")]
    TooManyConnections { ip: std::net::IpAddr, max: usize },
    #[error("{user} is banned until {until}: {reason}")]
    Banned { user: String, until: String, reason: String },
}

impl ConnectError {
    pub fn code(&self) -> &'static str {
        match self {
            ConnectError::OriginNotAllowed(_) => "origin_not_allowed",
            ConnectError::TokenMissing => "token_missing",
            ConnectError::TokenInvalid(_) => "token_invalid",
            ConnectError::TokenExpired => "token_expired",
            ConnectError::InvalidUser(_) => "invalid_user",
            ConnectError::ServerFull(_) => "server_full",
            ConnectError::TooManyConnections { .. } => "too_many_connections",
            ConnectError::Banned { .. } => "banned",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::OriginNotAllowed(_) | ConnectError::Banned { .. } => StatusCode::FORBIDDEN,
            ConnectError::TokenMissing | ConnectError::TokenInvalid(_) | ConnectError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ConnectError::InvalidUser(_) => StatusCode::BAD_REQUEST,
            ConnectError::ServerFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConnectError::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Every `code()`, for putting `roomcast_gateway_refused_connections_total` at zero.
    pub const CODES: &[&str] = &[
        "origin_not_allowed",
        "token_missing",
        "token_invalid",
        "token_expired",
        "invalid_user",
        "server_full",
        "too_many_connections",
        "banned",
    ];
}

/// How the server closes a connection (WebSocket close codes, docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The connection ended normally.
    Normal,
    /// The client sent nothing, not even a pong, for too long.
    Gone,
    /// A frame beyond the hard size limit.
    TooBig,
    /// Draining: reconnect (to another pod).
    Restart,
    /// The client fell too far behind.
    SlowConsumer,
    /// The token expired and no new one came within the grace period.
    TokenExpired,
    /// The server API removed the user (`POST /api/users/{user}/disconnect`).
    Kicked,
}

impl CloseCode {
    #[cfg(test)]
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::Gone,
        CloseCode::TooBig,
        CloseCode::Restart,
        CloseCode::SlowConsumer,
        CloseCode::TokenExpired,
        CloseCode::Kicked,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Gone => 1001,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
            CloseCode::SlowConsumer => 4001,
            CloseCode::TokenExpired => 4401,
            CloseCode::Kicked => 4403,
        }
    }

    /// The close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::Gone => "no frame or pong for too long",
            CloseCode::TooBig => "frame too large",
            CloseCode::Restart => "server restarting: reconnect",
            CloseCode::SlowConsumer => "slow consumer: send queue full",
            CloseCode::TokenExpired => "token expired: reconnect with a new token",
            CloseCode::Kicked => "removed by the server",
        }
    }

    /// The `reason` label of `roomcast_gateway_disconnects_total` for a close by the server.
    pub fn disconnect_reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "client_close",
            CloseCode::Gone => "silent",
            CloseCode::TooBig => "protocol_error",
            CloseCode::Restart => "drain",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Kicked => "kicked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each client error. The match below has no wildcard: a new variant does
    /// not compile until it is listed here, and then the test holds it to the docs.
    fn every_client_error() -> Vec<ClientError> {
        let all = vec![
            ClientError::bad_request(Malformed::Json, "x"),
            ClientError::TooLarge("x".into()),
            ClientError::InvalidRoom { max: 64 },
            ClientError::InvalidUser("x".into()),
            ClientError::NotJoined { room: "r".into() },
            ClientError::ForbiddenRoom { room: "r".into() },
            ClientError::TooManyRooms { max: 1 },
            ClientError::Overloaded { max: 1 },
            ClientError::RateLimited(String::new()),
            ClientError::Unavailable("x".into()),
            ClientError::Timeout,
            ClientError::TokenInvalid("x".into()),
        ];
        for error in &all {
            match error {
                ClientError::BadRequest(..)
                | ClientError::TooLarge(_)
                | ClientError::InvalidRoom { .. }
                | ClientError::InvalidUser(_)
                | ClientError::NotJoined { .. }
                | ClientError::ForbiddenRoom { .. }
                | ClientError::TooManyRooms { .. }
                | ClientError::Overloaded { .. }
                | ClientError::RateLimited(_)
                | ClientError::Unavailable(_)
                | ClientError::Timeout
                | ClientError::TokenInvalid(_) => {}
            }
        }
        all
    }

    fn every_connect_error() -> Vec<ConnectError> {
        let all = vec![
            ConnectError::OriginNotAllowed("o".into()),
            ConnectError::TokenMissing,
            ConnectError::TokenInvalid("x".into()),
            ConnectError::TokenExpired,
            ConnectError::InvalidUser("x".into()),
            ConnectError::ServerFull(1),
            ConnectError::TooManyConnections { ip: [127, 0, 0, 1].into(), max: 1 },
            ConnectError::Banned { user: "u".into(), until: "t".into(), reason: "r".into() },
        ];
        for error in &all {
            match error {
                ConnectError::OriginNotAllowed(_)
                | ConnectError::TokenMissing
                | ConnectError::TokenInvalid(_)
                | ConnectError::TokenExpired
                | ConnectError::InvalidUser(_)
                | ConnectError::ServerFull(_)
                | ConnectError::TooManyConnections { .. }
                | ConnectError::Banned { .. } => {}
            }
        }
        all
    }

    /// The first column of the markdown table that follows `heading` in PROTOCOL.md,
    /// without backticks.
    fn documented(heading: &str) -> Vec<String> {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let start = doc.find(heading).unwrap_or_else(|| panic!("PROTOCOL.md has no {heading:?}"));
        doc[start..]
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .filter_map(|line| line.split('|').nth(1))
            .map(|cell| cell.trim().trim_matches('`').to_owned())
            .collect()
    }

    fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
        items.sort();
        items.dedup();
        items
    }

    #[test]
    fn client_error_codes_are_the_documented_ones() {
        let codes = sorted(every_client_error().iter().map(|e| e.code().to_owned()).collect());
        assert_eq!(codes, sorted(documented("## Error codes")));
    }

    #[test]
    fn connect_error_codes_are_the_documented_ones() {
        let codes = sorted(every_connect_error().iter().map(|e| e.code().to_owned()).collect());
        assert_eq!(codes, sorted(documented("## Refused at connect")));
        assert_eq!(codes, sorted(ConnectError::CODES.iter().map(|c| c.to_string()).collect()));
    }

    #[test]
    fn every_bad_frame_kind_is_zeroed() {
        let kinds = sorted(every_client_error().iter().filter_map(ClientError::kind).collect());
        let mut zeroed = ClientError::KINDS.to_vec();
        zeroed.sort();
        assert!(kinds.iter().all(|k| zeroed.contains(k)), "{kinds:?} not all in {zeroed:?}");
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        let codes = sorted(CloseCode::ALL.iter().map(|c| c.code().to_string()).collect());
        assert_eq!(codes, sorted(documented("## Close codes")));
    }
}
