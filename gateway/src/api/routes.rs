//! The server API's endpoints. Each one checks its input with the rules clients are held
//! to (`Limits`), then does what a client's operation does, through the same hub: a
//! posted message takes the send path, so its order, storage and delivery are a client
//! send's. The OpenAPI document is generated from these functions.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use fanout::CONTROL;
use persister::{HistoryQuery, MAX_PAGE};
use roomcast_proto::{now_millis, room_signal, ChatMessage, Deleted, RoomSignal, UserBan};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, CLIENT_ID_PREFIX};
use crate::admission::rfc3339;
use crate::auth::RoomGrant;
use crate::conn::directory_page;
use crate::error::{ClientError, Malformed};
use crate::hub::{broker_failed, store_failed, Hub};
use crate::protocol::RoomEntry;

/// Longest ban the API takes: ten years.
const MAX_BAN_SECONDS: u64 = 10 * 365 * 86_400;
/// Longest disconnect reason, in characters.
const MAX_REASON_CHARS: usize = 200;

type Api = State<Arc<Hub>>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The sender's name, as clients' names are checked (A-Z a-z 0-9 _ . -).
    user: String,
    text: String,
    /// Makes the post idempotent: a retry with the same key (and user and room) answers
    /// the message the first call stored, never a second copy.
    idempotency_key: Option<String>,
}

/// A stored message, as history shows it.
#[derive(Serialize, ToSchema)]
pub struct Message {
    room: String,
    seq: u64,
    id: String,
    user: String,
    text: String,
    /// Unix milliseconds when the message was accepted.
    ts: i64,
    /// Removed by moderation (the text is gone).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

impl From<&ChatMessage> for Message {
    fn from(m: &ChatMessage) -> Self {
        Message {
            room: m.room.clone(),
            seq: m.seq,
            id: m.id.clone(),
            user: m.user.clone(),
            text: m.text.clone(),
            ts: m.ts,
            deleted: m.deleted,
        }
    }
}

/// Checks a room name as clients' are; `~` rooms (the system's own) are refused with it.
fn room_name(hub: &Hub, room: &str) -> Result<(), ApiError> {
    hub.limits.check_room(room).map_err(ApiError::from)
}

/// Stores a message and delivers it to the room, like a client's send.
#[utoipa::path(post, path = "/api/rooms/{room}/messages", tag = "messages",
    params(("room" = String, Path, description = "The room")),
    request_body = PostMessage,
    responses(
        (status = OK, description = "Stored (or, for a repeated idempotency key, stored before)", body = Message),
        (status = BAD_REQUEST, body = super::ErrorBody), (status = UNAUTHORIZED, body = super::ErrorBody),
        (status = SERVICE_UNAVAILABLE, body = super::ErrorBody), (status = GATEWAY_TIMEOUT, body = super::ErrorBody),
    ))]
pub async fn post_message(
    State(hub): Api,
    room: Result<Path<String>, PathRejection>,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> Result<Json<Message>, ApiError> {
    let (Path(room), Json(body)) = (room?, body?);
    room_name(&hub, &room)?;
    hub.limits.check_user(&body.user)?;
    hub.limits.check_text(&body.text)?;
    // Its own namespace: an API key never collides with a browser's client_id.
    let max = hub.limits.max_client_id_bytes - CLIENT_ID_PREFIX.len();
    let key = match body.idempotency_key {
        Some(key) if key.is_empty() || key.len() > max => {
            let message = format!("idempotency_key must be 1 to {max} bytes");
            return Err(ClientError::bad_request(Malformed::Field, message).into());
        }
        Some(key) => key,
        None => ulid::Ulid::new().to_string(),
    };
    let client_id = format!("{CLIENT_ID_PREFIX}{key}");
    let received = tokio::time::Instant::now();
    let stored =
        finish(
            async move { hub.send(received, &body.user, &room, &body.text, &client_id).await.map_err(ApiError::from) },
        )
        .await?;
    Ok(Json(Message::from(&stored)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Messages before this seq (for paging back); the newest without it.
    before: Option<u64>,
    /// At most this many (1 to 1000, default 50).
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct History {
    room: String,
    /// Oldest first; removed messages are shown as removed, sealed holes not at all.
    messages: Vec<Message>,
    /// Ask with `before` = this for the page before, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<u64>,
}

/// A page of a room's history, newest last.
#[utoipa::path(get, path = "/api/rooms/{room}/messages", tag = "messages",
    params(("room" = String, Path, description = "The room"), Page),
    responses(
        (status = OK, body = History),
        (status = NOT_FOUND, description = "The room holds no message", body = super::ErrorBody),
        (status = BAD_REQUEST, body = super::ErrorBody), (status = UNAUTHORIZED, body = super::ErrorBody),
    ))]
pub async fn history(
    State(hub): Api,
    room: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let (Path(room), Query(page)) = (room?, page?);
    room_name(&hub, &room)?;
    let limit = page.limit.unwrap_or(hub.limits.history_page);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ClientError::bad_request(Malformed::Field, format!("limit must be 1 to {MAX_PAGE}")).into());
    }
    let query = HistoryQuery { room: room.clone(), before: page.before, after: None, limit };
    let messages = hub.archive.history(query).await.map_err(store_failed)?;
    if messages.is_empty() && page.before.is_none() {
        return Err(ApiError::not_found("room_not_found", format!("room {room} holds no message")));
    }
    let first = messages.first().map(|m| m.seq);
    let next_before = first.filter(|&seq| seq > 1 && messages.len() == limit as usize);
    let messages = messages.iter().filter(|m| !m.tombstone || m.deleted).map(Message::from).collect();
    Ok(Json(History { room, messages, next_before }))
}

#[derive(Serialize, ToSchema)]
pub struct PresenceUser {
    user: String,
    /// Unix milliseconds when the user's first connection joined.
    joined_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Presence {
    room: String,
    count: usize,
    users: Vec<PresenceUser>,
}

/// Who is in a room now, on every gateway.
#[utoipa::path(get, path = "/api/rooms/{room}/presence", tag = "rooms",
    params(("room" = String, Path, description = "The room")),
    responses((status = OK, body = Presence), (status = BAD_REQUEST, body = super::ErrorBody),
        (status = UNAUTHORIZED, body = super::ErrorBody), (status = SERVICE_UNAVAILABLE, body = super::ErrorBody)))]
pub async fn presence(State(hub): Api, room: Result<Path<String>, PathRejection>) -> Result<Json<Presence>, ApiError> {
    let Path(room) = room?;
    room_name(&hub, &room)?;
    let entries = hub.broker.presence(&room).await.map_err(broker_failed)?;
    // A user on several gateways is one user, there since their first connection.
    let mut users: BTreeMap<String, i64> = BTreeMap::new();
    for entry in entries {
        let joined = users.entry(entry.user).or_insert(entry.joined_at);
        *joined = (*joined).min(entry.joined_at);
    }
    let users: Vec<PresenceUser> =
        users.into_iter().map(|(user, joined_at)| PresenceUser { user, joined_at }).collect();
    Ok(Json(Presence { room, count: users.len(), users }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsPage {
    offset: Option<u32>,
    /// At most this many (default 50).
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Rooms {
    rooms: Vec<RoomEntry>,
    total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
}

/// The room directory, most recently active first, with member counts.
#[utoipa::path(get, path = "/api/rooms", tag = "rooms", params(RoomsPage),
    responses((status = OK, body = Rooms), (status = UNAUTHORIZED, body = super::ErrorBody),
        (status = SERVICE_UNAVAILABLE, body = super::ErrorBody)))]
pub async fn rooms(State(hub): Api, page: Result<Query<RoomsPage>, QueryRejection>) -> Result<Json<Rooms>, ApiError> {
    let Query(page) = page?;
    let grant = Arc::new(RoomGrant::default()); // the backend sees every room
    let page = directory_page(hub.broker.clone(), page.offset, page.limit, grant).await?;
    Ok(Json(Rooms { rooms: page.rooms, total: page.total, next_offset: page.next }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// Why: in Socket.IO's `kicked` event, and in the `banned` refusal of reconnects.
    reason: String,
    /// Refuse the user's reconnects for this long.
    ban_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    user: String,
    /// Connections of the user closed by this gateway (the others close theirs).
    closed_here: usize,
    /// RFC 3339 end of the ban, if banned.
    #[serde(skip_serializing_if = "Option::is_none")]
    banned_until: Option<String>,
}

/// Closes every connection of a user, on every gateway (close code 4403), and with
/// `ban_seconds` refuses their reconnects until the ban ends.
#[utoipa::path(post, path = "/api/users/{user}/disconnect", tag = "users",
    params(("user" = String, Path, description = "The user")), request_body = Disconnect,
    responses((status = OK, body = Disconnected), (status = BAD_REQUEST, body = super::ErrorBody),
        (status = UNAUTHORIZED, body = super::ErrorBody), (status = SERVICE_UNAVAILABLE, body = super::ErrorBody)))]
pub async fn disconnect(
    State(hub): Api,
    user: Result<Path<String>, PathRejection>,
    body: Result<Json<Disconnect>, JsonRejection>,
) -> Result<Json<Disconnected>, ApiError> {
    let (Path(user), Json(body)) = (user?, body?);
    hub.limits.check_user(&user)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        let message = format!("reason must be 1 to {MAX_REASON_CHARS} characters");
        return Err(ClientError::bad_request(Malformed::Field, message).into());
    }
    let ban_seconds = body.ban_seconds.unwrap_or(0);
    if ban_seconds > MAX_BAN_SECONDS {
        let message = format!("ban_seconds must be at most {MAX_BAN_SECONDS} (ten years)");
        return Err(ClientError::bad_request(Malformed::Field, message).into());
    }
    let until = if ban_seconds > 0 { now_millis() + i64::try_from(ban_seconds * 1000).unwrap_or(i64::MAX) } else { 0 };
    let ban = UserBan { user: user.clone(), reason: reason.to_owned(), until };
    let closed_here = finish(async move {
        // The ban is kept before anyone is closed, so that no reconnect slips between.
        if until > 0 {
            hub.broker.ban(&ban).await.map_err(broker_failed)?;
        }
        let closed_here = hub.remove_user(&ban);
        let gateway = hub.gateway_id.to_string();
        let signal = RoomSignal { room: CONTROL.to_owned(), gateway, kind: Some(room_signal::Kind::Kick(ban)) };
        hub.broker.signal(&signal).await.map_err(broker_failed)?;
        Ok(closed_here)
    })
    .await?;
    Ok(Json(Disconnected { user, closed_here, banned_until: (until > 0).then(|| rfc3339(until)) }))
}

#[derive(Serialize, ToSchema)]
pub struct Removed {
    /// The tombstone that replaced the message.
    message: Message,
    /// False when the store holds the removal but the room's members could not be told
    /// live (the broker failed): history and joins read from the store show it, but a
    /// gateway's in-memory tail may still show the text; call again to tell them.
    members_told: bool,
}

/// Moderation: replaces a message with a tombstone in the store, and tells the room's
/// members (`deleted`). Its seq stays: order and exactly-once are unchanged.
#[utoipa::path(delete, path = "/api/rooms/{room}/messages/{seq}", tag = "messages",
    params(("room" = String, Path, description = "The room"), ("seq" = u64, Path, description = "The message's seq")),
    responses((status = OK, body = Removed),
        (status = NOT_FOUND, description = "No message at that seq", body = super::ErrorBody),
        (status = BAD_REQUEST, body = super::ErrorBody), (status = UNAUTHORIZED, body = super::ErrorBody),
        (status = SERVICE_UNAVAILABLE, body = super::ErrorBody)))]
pub async fn delete_message(
    State(hub): Api,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Removed>, ApiError> {
    let Path((room, seq)) = path?;
    room_name(&hub, &room)?;
    let (tombstone, members_told) = finish(async move {
        let Some(tombstone) = hub.archive.delete(&room, seq).await.map_err(store_failed)? else {
            return Err(ApiError::not_found("message_not_found", format!("room {room} has no message at seq {seq}")));
        };
        let deleted = Deleted { seq, id: tombstone.id.clone() };
        let signal = RoomSignal {
            room: room.clone(),
            gateway: hub.gateway_id.to_string(),
            kind: Some(room_signal::Kind::Deleted(deleted)),
        };
        let members_told = match hub.broker.signal(&signal).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, room, seq, "message removed in the store, but its room could not be told live");
                false
            }
        };
        Ok((tombstone, members_told))
    })
    .await?;
    Ok(Json(Removed { message: Message::from(&tombstone), members_told }))
}

/// Runs an endpoint's work to its end even when the caller goes away: a send cut off after
/// its seq, or a ban kept with nobody told, would leave the rooms waiting on a hole.
async fn finish<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|err| Err(ClientError::Unavailable(format!("the request's work failed: {err}")).into()))
}
