//! The Socket.IO front door (protocol v5, via socketioxide) at `/socket.io/`, a codec:
//! events in, operations on the connection core ([`Conn`]), answers out as acks and
//! events.
//!
//! It speaks the original app's events (`join_room`, `send_message`, `create_room`,
//! answered with `joined_room`, `room_message`, `room`) and roomcast's own (`join`,
//! `leave`, `send`, `history`, `presence`, `typing`, `rooms`, with acknowledgements).
//! Both feed the same rooms as `/ws`,
//! so every client of a room sees the same messages in the same order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};

use roomcast_proto::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admitted, Offer, PeerAddr};
use crate::auth::RoomGrant;
use crate::conn::{Conn, SendRequest, Sent, TokenStep};
use crate::directory::{Entry, DIRECTORY};
use crate::error::{ClientError, CloseCode, ConnectError, Malformed};
use crate::hub::Hub;
use crate::metrics::METRICS;
use crate::presence::{Notice, Snapshot};
use crate::protocol::{visible, WireMessage};
use crate::sink::Sink;
use crate::watch::wait_until;
use fanout::Broker;
use roomcast_proto::RoomTouch;

const PROTOCOL: &str = "socketio";
/// Rooms in the original app's `room` map: the directory's first page.
const ROOM_MAP_SIZE: u32 = 100;
/// The Socket.IO group of the clients whose token grants every room: the room map is
/// sent to them in one broadcast.
const EVERY_ROOM: &str = "~every-room";
/// How long a join waits for its socket to count as connected.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registers the namespace and the room directory.
pub fn install(io: &SocketIo, hub: Arc<Hub>) {
    let directory = Arc::new(Directory {
        map: Mutex::new(BTreeMap::new()),
        io: io.clone(),
        broker: hub.broker.clone(),
        refreshes: AtomicU64::new(0),
        applied: Mutex::new(0),
        created: Mutex::new(BTreeMap::new()),
    });
    // Only the newest entries and the live ones: each new entry refreshes the map from
    // the directory, which is bounded, unlike the record of every room ever created.
    hub.rooms.join(DIRECTORY, hub.next_member_id(), None, Arc::new(DirectorySink(directory.clone())), None);
    // Handlers are registered in a middleware, which runs before the client is told it is
    // connected: events it sends right away find their handler.
    // A refused connection gets a connect_error carrying the refusal's code and message.
    let map = directory.clone();
    let register = async move |socket: SocketRef, Data(auth): Data<Value>| -> Result<(), String> {
        let admitted = admit(&socket, &auth, &hub).await.map_err(|err| format!("{}: {err}", err.code()))?;
        on_connect(socket, Conn::open(hub.clone(), PROTOCOL, admitted), map.clone());
        Ok(())
    };
    let connected = async move |socket: SocketRef| {
        let Some(state) = socket.extensions.get::<Arc<Socket>>() else { return };
        state.connected.send_replace(true);
        let grant = state.conn.grant();
        if !grant.is_restricted() {
            socket.join(EVERY_ROOM);
        }
        let _ = socket.emit("room", &directory.snapshot(&grant));
        tokio::spawn(watch_server_side(socket.clone(), state.clone()));
    };
    io.ns("/", connected.with(register));
}

/// The token comes in the auth payload (`{token}`) or the query (`?token=`), the user
/// name likewise.
async fn admit(socket: &SocketRef, auth: &Value, hub: &Hub) -> Result<Admitted, ConnectError> {
    let field =
        |name: &str| auth.get(name).and_then(Value::as_str).map(str::to_owned).or_else(|| query_param(socket, name));
    let (token, user) = (field("token"), field("user"));
    hub.admission.prepare(token.as_deref()).await;
    let parts = socket.req_parts();
    hub.admission.admit(Offer {
        ip: parts.extensions.get::<PeerAddr>().map(|p| p.0.ip()),
        origin: parts.headers.get(hyper::header::ORIGIN).and_then(|o| o.to_str().ok()),
        token: token.as_deref(),
        user: user.as_deref(),
    })
}

/// A socket's state, kept in its extensions.
struct Socket {
    conn: Arc<Conn>,
    /// Numbers the client ids of `send_message`s, which carry none of their own.
    sent: AtomicU64,
    /// Set once socketioxide counts the socket as connected (it sends the connect packet
    /// first, and until then emits to the socket fail).
    connected: watch::Sender<bool>,
    /// Cancelled when the socket is gone: ends its token watch.
    gone: CancellationToken,
    /// Set when the server closes the socket: the `disconnects_total` reason.
    closed_by: OnceLock<&'static str>,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// `join_room`: `joined_room` and `room_message` events, the sender excluded.
    Original,
    /// `join`: an ack, then `message` events to everyone, the sender included.
    Roomcast,
}

/// Where an event's answer goes.
enum Reply {
    /// roomcast's events: the ack.
    Ack(AckSender),
    /// The original app's events: an `error` event for a refusal, and the ack if the
    /// client asked for one.
    Original(SocketRef, AckSender),
}

impl Reply {
    fn ack(self, value: &Value) {
        let (Reply::Ack(ack) | Reply::Original(_, ack)) = self;
        let _ = ack.send(value);
    }

    /// An error as an answer: the ack, and for the original app's events the `error` event.
    fn error(self, err: &ClientError, client_id: Option<&str>, room: Option<&str>) {
        if let Reply::Original(socket, _) = &self {
            emit_error(socket, err, room);
        }
        self.ack(&json!({"error": {"code": err.code(), "message": err.to_string()}, "client_id": client_id}));
    }
}

/// The original app's `error` event, `{code, message, room}`: the one place it is built.
fn emit_error(socket: &SocketRef, err: &ClientError, room: Option<&str>) {
    let _ = socket.emit("error", &json!({"code": err.code(), "message": err.to_string(), "room": room}));
}

fn on_connect(socket: SocketRef, conn: Arc<Conn>, directory: Arc<Directory>) {
    let state = Arc::new(Socket {
        conn,
        sent: AtomicU64::new(0),
        connected: watch::Sender::new(false),
        gone: CancellationToken::new(),
        closed_by: OnceLock::new(),
    });
    socket.extensions.insert(state.clone());

    let s = state.clone();
    socket.on("join_room", move |socket: SocketRef, Data(JoinRoomArgs(room, previous)): Data<JoinRoomArgs>| {
        inline(move || {
            if let Err(err) = s.conn.received() {
                return emit_error(&socket, &err, room.as_deref());
            }
            let Some(room) = room else {
                let message = "join_room(roomId, previousRoomId?) needs a roomId";
                return emit_error(&socket, &s.conn.refused(ClientError::bad_request(Malformed::Field, message)), None);
            };
            if let Some(previous) = previous.filter(|p| *p != room) {
                let _ = s.conn.leave(&previous);
            }
            join(&s, &socket, room, None, Style::Original, None);
        })
    });
    let s = state.clone();
    socket.on("send_message", move |socket: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Original(socket.clone(), ack);
            let payload: OriginalSend = match accept(&s.conn, args, "send_message needs {roomId, message, username}") {
                Ok(payload) => payload,
                Err(err) => return reply.error(&err, None, None),
            };
            // The socket id marks the sender's own messages, which `room_message` skips.
            let client_id = format!("sio:{}:{}", socket.id, s.sent.fetch_add(1, Ordering::Relaxed));
            let request = SendRequest {
                room: payload.room_id,
                text: payload.message,
                client_id: Some(client_id),
                username: Some(payload.username),
            };
            s.conn.send(request, Box::new(move |sent| answer_send(reply, sent)));
        })
    });
    let s = state.clone();
    socket.on("create_room", move |socket: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Original(socket.clone(), ack);
            let payload: CreateRoom = match accept(&s.conn, args, "create_room needs {roomName, roomId?}") {
                Ok(payload) => payload,
                Err(err) => return reply.error(&err, None, None),
            };
            // Like the original server, the new room's id is minted here: the client's
            // `roomId` is the room it is in now, which it leaves for the new one.
            let previous = payload.previous_room_id.or(payload.room_id).filter(|p| !p.is_empty());
            let (state, creator) = (s.clone(), socket.clone());
            let on_created = Box::new(move |created: Result<String, ClientError>| match created {
                Ok(room) => {
                    if let Some(previous) = previous {
                        let _ = state.conn.leave(&previous);
                    }
                    join(&state, &creator, room.clone(), None, Style::Original, None);
                    reply.ack(&json!({"roomId": room}));
                }
                Err(err) => reply.error(&err, None, None),
            });
            s.conn.create_room(&payload.room_name, on_created);
        })
    });
    let s = state.clone();
    socket.on("join", move |socket: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || match accept::<JoinArgs>(&s.conn, args, "join needs {room, since?}") {
            Ok(JoinArgs { room, since }) => join(&s, &socket, room, since, Style::Roomcast, Some(ack)),
            Err(err) => Reply::Ack(ack).error(&err, None, None),
        })
    });
    let s = state.clone();
    socket.on("leave", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            match accept::<LeaveArgs>(&s.conn, args, "leave needs {room}") {
                Ok(LeaveArgs { room }) => match s.conn.leave(&room) {
                    Ok(()) => reply.ack(&json!({"room": room})),
                    Err(err) => reply.error(&err, None, Some(&room)),
                },
                Err(err) => reply.error(&err, None, None),
            }
        })
    });
    let s = state.clone();
    socket.on("send", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            let client_id = args.get("client_id").and_then(Value::as_str).map(str::to_owned);
            match accept::<SendArgs>(&s.conn, args, "send needs {room, text, client_id?}") {
                Ok(SendArgs { room, text, client_id }) => {
                    let request = SendRequest { room, text, client_id, username: None };
                    s.conn.send(request, Box::new(move |sent| answer_send(reply, sent)));
                }
                Err(err) => reply.error(&err, client_id.as_deref(), None),
            }
        })
    });
    let s = state.clone();
    socket.on("history", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            let args: HistoryArgs = match accept(&s.conn, args, "history needs {room, before?, limit?}") {
                Ok(args) => args,
                Err(err) => return reply.error(&err, None, None),
            };
            match s.conn.history(&args.room, args.before, args.limit) {
                Ok(page) => {
                    tokio::spawn(async move {
                        match page.await {
                            Ok(page) => reply.ack(&json!({"room": args.room, "messages": visible(&page)})),
                            Err(err) => reply.error(&err, None, Some(&args.room)),
                        }
                    });
                }
                Err(err) => reply.error(&err, None, Some(&args.room)),
            }
        })
    });
    let s = state.clone();
    socket.on("presence", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            let room = match accept::<RoomArgs>(&s.conn, args, "presence needs {room}") {
                Ok(RoomArgs { room }) => room,
                Err(err) => return reply.error(&err, None, None),
            };
            match s.conn.presence(&room) {
                Ok(presence) => {
                    tokio::spawn(async move {
                        match presence.await {
                            Ok(presence) => reply.ack(&with_room(&room, &presence)),
                            Err(err) => reply.error(&err, None, Some(&room)),
                        }
                    });
                }
                Err(err) => reply.error(&err, None, Some(&room)),
            }
        })
    });
    let s = state.clone();
    socket.on("typing", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            match accept::<RoomArgs>(&s.conn, args, "typing needs {room}") {
                Ok(RoomArgs { room }) => match s.conn.typing(&room) {
                    Ok(()) => reply.ack(&json!({"room": room})),
                    Err(err) => reply.error(&err, None, Some(&room)),
                },
                Err(err) => reply.error(&err, None, None),
            }
        })
    });
    let s = state.clone();
    socket.on("rooms", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            // `rooms()` with no argument asks for the first page.
            let args = if args.is_null() { json!({}) } else { args };
            let RoomsArgs { offset, limit } = match accept(&s.conn, args, "rooms needs {offset?, limit?}") {
                Ok(args) => args,
                Err(err) => return reply.error(&err, None, None),
            };
            let page = s.conn.rooms(offset, limit);
            tokio::spawn(async move {
                match page.await {
                    Ok(page) => {
                        let mut answer = json!({"rooms": page.rooms, "total": page.total});
                        if let Some(next) = page.next {
                            answer["next"] = json!(next);
                        }
                        reply.ack(&answer)
                    }
                    Err(err) => reply.error(&err, None, None),
                }
            });
        })
    });
    let s = state.clone();
    socket.on("refresh", move |socket: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            let reply = Reply::Ack(ack);
            let RefreshArgs { token } = match accept(&s.conn, args, "refresh needs {token}") {
                Ok(args) => args,
                Err(err) => return reply.error(&err, None, None),
            };
            match s.conn.refresh(&token) {
                Ok((exp, left)) => {
                    // The room map follows the new grant, from now on and at once.
                    let grant = s.conn.grant();
                    if grant.is_restricted() {
                        socket.leave(EVERY_ROOM);
                    } else {
                        socket.join(EVERY_ROOM);
                    }
                    let _ = socket.emit("room", &directory.snapshot(&grant));
                    reply.ack(&json!({"exp": exp, "left": left}));
                }
                Err(err) => reply.error(&err, None, None),
            }
        })
    });
    socket.on_disconnect(async move |reason: DisconnectReason| {
        state.gone.cancel();
        let reason = match (state.closed_by.get(), reason) {
            (Some(by), _) => by,
            (None, DisconnectReason::TransportClose | DisconnectReason::ClientNSDisconnect) => "client_close",
            (None, DisconnectReason::ServerNSDisconnect | DisconnectReason::ClosingServer) => "drain",
            _ => "error",
        };
        state.conn.close(reason);
    });
}

/// Follows what the server may end a socket for, until it is gone: its token (asks for a
/// new one with `refresh_needed` when it expires, and disconnects it after a
/// `token_expired` event when none came in time) and the server API's removal of its
/// user (a `kicked` event, then disconnect).
async fn watch_server_side(socket: SocketRef, state: Arc<Socket>) {
    let conn = &state.conn;
    loop {
        let step = tokio::select! {
            step = conn.token_due(), if conn.has_token() => step,
            ban = conn.removed() => {
                let close = CloseCode::Kicked;
                let until = (ban.until > 0).then_some(ban.until);
                let kicked = json!({"code": close.code(), "reason": ban.reason, "until": until});
                end(&socket, &state, "kicked", &kicked, close);
                return;
            }
            _ = state.gone.cancelled() => return,
        };
        match step {
            TokenStep::RefreshNeeded => {
                let grace_seconds = conn.hub().limits.refresh_grace.as_secs_f64();
                let _ = socket.emit("refresh_needed", &json!({"grace_seconds": grace_seconds}));
            }
            TokenStep::Expired => {
                let close = CloseCode::TokenExpired;
                end(&socket, &state, "token_expired", &json!({"code": close.code(), "reason": close.reason()}), close);
                return;
            }
        }
    }
}

/// The server ends a socket: the event saying why, then the disconnect.
fn end(socket: &SocketRef, state: &Socket, event: &str, data: &Value, close: CloseCode) {
    let _ = state.closed_by.set(close.disconnect_reason());
    let _ = socket.emit(event, data);
    let _ = socket.clone().disconnect();
}

/// A send's answer: the ack with the stored message's position, or the error.
fn answer_send(reply: Reply, sent: Sent) {
    match sent.result {
        Ok(stored) => reply.ack(&json!({
            "client_id": sent.client_id, "room": sent.room, "seq": stored.seq, "id": stored.id, "ts": stored.ts,
        })),
        Err(err) => reply.error(&err, Some(&sent.client_id), Some(&sent.room)),
    }
}

/// Counts the event and checks the rate, then reads its argument as `T`, or refuses it
/// saying what shape `T` wants.
fn accept<T: serde::de::DeserializeOwned>(conn: &Conn, args: Value, shape: &str) -> Result<T, ClientError> {
    conn.received()?;
    serde_json::from_value(args)
        .map_err(|err| conn.refused(ClientError::bad_request(Malformed::Field, format!("{shape}: {err}"))))
}

/// Runs a handler's work now, in the order the events arrived: socketioxide spawns the
/// future a handler returns, so async handlers of one socket may run in any order (and a
/// client's quick sends could be stored out of order). This returns a ready one.
fn inline(work: impl FnOnce()) -> std::future::Ready<()> {
    work();
    std::future::ready(())
}

fn query_param(socket: &SocketRef, name: &str) -> Option<String> {
    let query = socket.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Joins `room` with a sink of `style`; `ack` (roomcast's `join`) gets the history.
fn join(
    state: &Arc<Socket>,
    socket: &SocketRef,
    room: String,
    since: Option<u64>,
    style: Style,
    ack: Option<AckSender>,
) {
    if !*state.connected.borrow() {
        // A client that joins as soon as it gets the connect packet can be here before the
        // socket counts as connected, and a room that answers from memory would emit into
        // the void: the join waits until it is connected.
        let (state, socket, mut connected) = (state.clone(), socket.clone(), state.connected.subscribe());
        tokio::spawn(async move {
            if tokio::time::timeout(CONNECT_WAIT, wait_until(&mut connected, |c| *c)).await.is_ok() {
                join(&state, &socket, room, since, style, ack);
            }
        });
        return;
    }
    let own = format!("sio:{}:", socket.id);
    let sink = SocketSink { socket: socket.clone(), style, join_ack: Mutex::new(ack), own };
    let sink = Arc::new(sink);
    if let Err(err) = state.conn.join(&room, since, sink.clone()) {
        match sink.join_ack.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(ack) => Reply::Ack(ack).error(&err, None, Some(&room)),
            None => emit_error(socket, &err, Some(&room)),
        }
    }
}

/// `join_room(roomId, previousRoomId?)`: one or two arguments. socketioxide hands a
/// handler only the first argument unless the type deserializes as a tuple.
pub(crate) struct JoinRoomArgs(pub(crate) Option<String>, pub(crate) Option<String>);

impl<'de> Deserialize<'de> for JoinRoomArgs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Args;
        impl<'de> serde::de::Visitor<'de> for Args {
            type Value = JoinRoomArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("roomId and an optional previousRoomId")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<JoinRoomArgs, S::Error> {
                let room = seq.next_element::<Option<String>>()?.flatten();
                let previous = seq.next_element::<Option<String>>()?.flatten();
                Ok(JoinRoomArgs(room, previous))
            }
        }
        deserializer.deserialize_tuple(2, Args)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OriginalSend {
    room_id: String,
    message: String,
    username: String,
}

/// `create_room({roomName, roomId?})`: the client's `roomId` is the room it is in now
/// (`""` in none); the original server's own name for it, `previousRoomId`, is read too.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateRoom {
    room_name: String,
    room_id: Option<String>,
    previous_room_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct JoinArgs {
    room: String,
    since: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct SendArgs {
    room: String,
    text: String,
    client_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LeaveArgs {
    room: String,
}

/// `presence({room})` and `typing({room})`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoomArgs {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoomsArgs {
    offset: Option<u32>,
    limit: Option<u32>,
}

/// `refresh({token})`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshArgs {
    token: String,
}

/// A serializable value as an object with `room` added: roomcast's events carry the room.
fn with_room<T: serde::Serialize>(room: &str, value: &T) -> Value {
    let mut value = serde_json::to_value(value).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("room".into(), json!(room));
    }
    value
}

#[derive(Deserialize)]
pub(crate) struct HistoryArgs {
    room: String,
    before: Option<u64>,
    limit: Option<u32>,
}

/// The original app's message, `{message, username, time}`, where `time` is the original
/// server's `${hours}:${minutes}` (no zero padding) of the store's clock, in UTC.
#[derive(serde::Serialize)]
pub(crate) struct OriginalMessage<'a> {
    message: &'a str,
    username: &'a str,
    time: String,
}

impl<'a> From<&'a ChatMessage> for OriginalMessage<'a> {
    fn from(msg: &'a ChatMessage) -> Self {
        let minutes = msg.ts.div_euclid(60_000);
        let time = format!("{}:{}", minutes.div_euclid(60).rem_euclid(24), minutes.rem_euclid(60));
        OriginalMessage { message: &msg.text, username: &msg.user, time }
    }
}

/// The original server's payloads are JSON *strings* (class-transformer's `serialize`),
/// which its client parses with `deserialize` and `deserializeArray`.
pub(crate) fn serialized<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        tracing::error!(%err, "cannot encode an original app payload");
        "null".to_owned()
    })
}

/// A room's view of one Socket.IO member.
struct SocketSink {
    socket: SocketRef,
    style: Style,
    join_ack: Mutex<Option<AckSender>>,
    /// Prefix of the client ids this socket's `send_message`s carry.
    own: String,
}

impl SocketSink {
    fn emit<T: serde::Serialize + ?Sized>(&self, event: &str, data: &T) {
        METRICS.protocol(PROTOCOL).frames_sent.increment(1);
        if self.socket.emit(event, data).is_err() && self.socket.connected() {
            // Its buffer is full: a slow consumer, closed so it cannot hold up the room.
            METRICS.slow_consumer_disconnects.increment(1);
            let _ = self.socket.clone().disconnect();
        }
    }
}

impl Sink for SocketSink {
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool, presence: &Snapshot) {
        match self.style {
            Style::Original => {
                let messages: Vec<OriginalMessage> = page.iter().filter(|m| !m.tombstone).map(Into::into).collect();
                if self.socket.emit("joined_room", &(room, serialized(&messages))).is_err() {
                    let _ = self.socket.clone().disconnect();
                }
            }
            Style::Roomcast => {
                let reply =
                    json!({"room": room, "messages": visible(page), "truncated": truncated, "presence": presence});
                match self.join_ack.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    Some(ack) => {
                        let _ = ack.send(&reply);
                    }
                    None => self.emit("joined", &reply),
                }
            }
        }
    }

    fn deliver(&self, msg: &ChatMessage, _ws_frame: &Utf8Bytes) {
        match self.style {
            Style::Original if msg.client_id.starts_with(&self.own) => {}
            Style::Original => self.emit("room_message", &serialized(&OriginalMessage::from(msg))),
            Style::Roomcast => match serde_json::to_value(WireMessage::from(msg)) {
                Ok(value) => self.emit("message", &value),
                Err(err) => tracing::error!(%err, "cannot encode a message for Socket.IO"),
            },
        }
    }

    /// Both styles get `deleted` {room, seq, id}: the original app's client ignores
    /// events it does not know, and its history no longer holds the message.
    fn deleted(&self, tombstone: &ChatMessage, _ws_frame: &Utf8Bytes) {
        self.emit("deleted", &json!({"room": tombstone.room, "seq": tombstone.seq, "id": tombstone.id}));
    }

    fn notify(&self, room: &str, notice: &Notice, _ws_frame: &Utf8Bytes) {
        // The original app's client knows none of these events.
        if self.style == Style::Original {
            return;
        }
        match notice {
            Notice::Presence(presence) => self.emit("presence", &with_room(room, presence)),
            Notice::Diff(diff) => self.emit("presence_diff", &with_room(room, diff)),
            Notice::Typing { user } => self.emit("typing", &json!({"room": room, "user": user})),
        }
    }

    fn unavailable(&self, room: &str, message: &str) {
        let code = ClientError::Unavailable(String::new()).code();
        self.emit("error", &json!({"code": code, "message": message, "room": room}));
    }
}

/// The original app's room map, `{roomId: {roomId, name, messages}}`: the directory's
/// first page. A member of [`DIRECTORY`], whose new entries (rooms created on any
/// gateway) make it read the page again and send it to every Socket.IO client.
struct Directory {
    map: Mutex<BTreeMap<String, Value>>,
    io: SocketIo,
    broker: Arc<dyn Broker>,
    /// Numbers the refreshes, so that a slow one never overwrites a newer map.
    refreshes: AtomicU64,
    applied: Mutex<u64>,
    /// The newest created rooms seen here: the map when the directory cannot be read.
    created: Mutex<BTreeMap<String, String>>,
}

impl Directory {
    /// The map as `grant` may see it.
    fn snapshot(&self, grant: &RoomGrant) -> Value {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Value::Object(map.iter().filter(|(room, _)| grant.allows(room)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Sends the map to every client: once to those whose token grants every room (the
    /// [`EVERY_ROOM`] group), and filtered to each of the others.
    async fn send(&self) {
        let everything = self.snapshot(&RoomGrant::default());
        if let Some(everyone) = self.io.of("/") {
            let _ = everyone.to(EVERY_ROOM).emit("room", &everything).await;
        }
        for socket in self.io.sockets() {
            let Some(state) = socket.extensions.get::<Arc<Socket>>() else { continue };
            if state.conn.grant().is_restricted() {
                let _ = socket.emit("room", &self.snapshot(&state.conn.grant()));
            }
        }
    }

    /// Enters `created` in the directory at their creation time (after a restart of the
    /// embedded broker the directory is empty), then reads the first page and sends it.
    fn refresh(self: &Arc<Self>, created: Vec<RoomTouch>) {
        {
            let mut known = self.created.lock().unwrap_or_else(|p| p.into_inner());
            for touch in &created {
                known.insert(touch.room.clone(), touch.name.clone());
            }
            // Room ids are ULIDs: the smallest are the oldest.
            while known.len() > ROOM_MAP_SIZE as usize {
                known.pop_first();
            }
        }
        let directory = self.clone();
        let refresh = self.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            if !created.is_empty() {
                if let Err(err) = directory.broker.touch(&created).await {
                    tracing::warn!(%err, "cannot enter created rooms in the directory");
                }
            }
            let rooms: Vec<(String, String)> = match directory.broker.rooms(0, ROOM_MAP_SIZE).await {
                Ok(page) => page.rooms.into_iter().map(|r| (r.room, r.name)).collect(),
                Err(err) => {
                    tracing::warn!(%err, "cannot read the room directory; the room map holds the rooms created lately");
                    directory.created.lock().unwrap_or_else(|p| p.into_inner()).clone().into_iter().collect()
                }
            };
            let map: BTreeMap<String, Value> = rooms
                .into_iter()
                .map(|(room, name)| {
                    let name = if name.is_empty() { room.clone() } else { name };
                    // The original server's entry shape; its client reads `name`.
                    (room.clone(), json!({"roomId": room, "name": name, "messages": []}))
                })
                .collect();
            {
                let mut applied = directory.applied.lock().unwrap_or_else(|p| p.into_inner());
                if *applied > refresh {
                    return;
                }
                *applied = refresh;
                *directory.map.lock().unwrap_or_else(|p| p.into_inner()) = map;
            }
            directory.send().await;
        });
    }
}

fn created(msg: &ChatMessage) -> Option<RoomTouch> {
    let Entry { room_id, room_name } = Entry::decode(&msg.text)?;
    Some(RoomTouch { room: room_id, name: room_name, at: msg.ts, keepalive: false })
}

/// A sink for the directory room: it needs the `Arc` to refresh from a task.
struct DirectorySink(Arc<Directory>);

impl Sink for DirectorySink {
    fn joined(&self, _room: &str, page: &[ChatMessage], _truncated: bool, _presence: &Snapshot) {
        self.0.refresh(page.iter().filter(|m| !m.tombstone).filter_map(created).collect());
    }

    fn deliver(&self, msg: &ChatMessage, _ws_frame: &Utf8Bytes) {
        if let Some(touch) = created(msg) {
            // Entered in the directory by its creator already; kept here for the fallback.
            self.0.created.lock().unwrap_or_else(|p| p.into_inner()).insert(touch.room, touch.name);
            self.0.refresh(Vec::new());
        }
    }

    /// Never called: the server API removes no messages of `~` rooms.
    fn deleted(&self, _tombstone: &ChatMessage, _ws_frame: &Utf8Bytes) {}

    fn notify(&self, _room: &str, _notice: &Notice, _ws_frame: &Utf8Bytes) {}

    fn unavailable(&self, _room: &str, message: &str) {
        tracing::warn!(message, "room directory not loaded yet");
    }
}
