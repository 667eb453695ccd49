//! The Socket.IO front door (protocol v5, via socketioxide) at `/socket.io/`.
//!
//! It speaks the original app's events (`join_room`, `send_message`, `create_room`,
//! answered with `joined_room`, `room_message`, `room`) and roomcast's own (`join`,
//! `leave`, `send`, `history`, with acknowledgements). Both feed the same rooms as `/ws`,
//! so every client of a room sees the same messages in the same order.
//! The room map of `create_room` is kept in the store as the system room [`DIRECTORY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use governor::DefaultDirectRateLimiter;
use persister::HistoryQuery;
use roomcast_proto::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::admission::{Admitted, Offer, Rejection, Slot};
use crate::auth::RoomGrant;
use crate::http::PeerAddr;
use crate::metrics::METRICS;
use crate::protocol::{newest_within, visible, Refusal, WireMessage};
use crate::rooms::{MemberId, Sink};
use crate::session::forbidden;
use crate::Core;

/// The system room holding the room map; its name cannot be a client room name.
pub const DIRECTORY: &str = "~rooms";
const PROTOCOL: &str = "socketio";
const SEND_QUEUE: usize = 32;
/// How long a join waits for its socket to count as connected.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registers the namespace and the room directory.
pub fn install(io: &SocketIo, core: Arc<Core>) {
    let directory = Arc::new(Directory { map: Mutex::new(BTreeMap::new()), io: io.clone() });
    core.rooms.join(DIRECTORY, core.next_member_id(), directory.clone(), Some(0));
    let snapshot = directory.clone();
    // Handlers are registered in a middleware, which runs before the client is told it is
    // connected: events it sends right away find their handler.
    // A refused connection gets a connect_error carrying the rejection's code and message.
    let register = async move |socket: SocketRef, Data(auth): Data<Value>| -> Result<(), String> {
        let admitted = admit(&socket, &auth, &core).map_err(|r| format!("{}: {}", r.code, r.message))?;
        on_connect(socket, admitted, core.clone());
        Ok(())
    };
    let connected = async move |socket: SocketRef| {
        if let Some(conn) = socket.extensions.get::<Arc<Conn>>() {
            conn.connected.send_replace(true);
        }
        let _ = socket.emit("room", &snapshot.snapshot());
    };
    io.ns("/", connected.with(register));
}

/// Origin, token and connection limits, as for `/ws`; the token comes in the auth
/// payload (`{token}`) or the query (`?token=`).
fn admit(socket: &SocketRef, auth: &Value, core: &Core) -> Result<Admitted, Rejection> {
    let parts = socket.req_parts();
    let token = auth.get("token").and_then(Value::as_str).map(str::to_owned).or_else(|| query_param(socket, "token"));
    let user = auth.get("user").and_then(Value::as_str).map(str::to_owned).or_else(|| query_param(socket, "user"));
    let offer = Offer {
        ip: parts.extensions.get::<PeerAddr>().map(|p| p.0.ip()),
        origin: parts.headers.get(hyper::header::ORIGIN).and_then(|o| o.to_str().ok()),
        token: token.as_deref(),
        user: user.as_deref(),
    };
    let admitted = core.admission.admit(offer)?;
    // A token's name must be a valid user name: send_message would otherwise fall back
    // to the name the client claims.
    if admitted.authenticated {
        if let Some(Err(refusal)) = admitted.user.as_deref().map(|u| core.limits.check_user(u)) {
            return Err(Rejection::unauthorized(
                "token_invalid",
                format!("the token's sub is not a usable name: {}", refusal.message),
            ));
        }
        if admitted.user.is_none() {
            return Err(Rejection::unauthorized("token_invalid", "the token names no user (sub or name)"));
        }
    }
    Ok(admitted)
}

/// One Socket.IO connection's state, kept in the socket's extensions.
struct Conn {
    core: Arc<Core>,
    member: MemberId,
    /// The user, from the token when there is one (then `send_message`'s username is ignored).
    user: Option<String>,
    authenticated: bool,
    grant: RoomGrant,
    limiter: DefaultDirectRateLimiter,
    /// Given back at disconnect.
    slot: Mutex<Option<Slot>>,
    /// Rooms joined, by which style of events.
    rooms: Mutex<HashMap<String, Style>>,
    sends: mpsc::Sender<SendJob>,
    sent: std::sync::atomic::AtomicU64,
    /// Set once socketioxide counts the socket as connected (it sends the connect packet
    /// first, and until then emits to the socket fail).
    connected: watch::Sender<bool>,
}

impl Conn {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Style>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal for an event over the connection's rate.
    fn over_rate(&self) -> Option<Refusal> {
        self.limiter.check().err().map(|_| self.core.limits.rate_refusal())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// `join_room`: `joined_room` and `room_message` events, the sender excluded.
    Original,
    /// `join`: an ack, then `message` events to everyone, the sender included.
    Roomcast,
}

struct SendJob {
    received: tokio::time::Instant,
    room: String,
    user: String,
    text: String,
    client_id: String,
    ack: AckSender,
    style: Style,
    after: After,
}

impl SendJob {
    /// A send received now.
    fn new(
        room: String,
        user: String,
        text: String,
        client_id: String,
        ack: AckSender,
        style: Style,
        after: After,
    ) -> Self {
        SendJob { received: tokio::time::Instant::now(), room, user, text, client_id, ack, style, after }
    }
}

/// What a stored send is answered with.
enum After {
    /// The ack: the stored message's seq, id and ts.
    Ack,
    /// `create_room`'s entry is stored: the creator leaves `previous` and joins `room`
    /// (`joined_room`, as the original server does), and the ack names the new room.
    JoinCreated { room: String, previous: Option<String> },
}

fn on_connect(socket: SocketRef, admitted: Admitted, core: Arc<Core>) {
    let authenticated = admitted.authenticated;
    let user = admitted.user.filter(|user| core.limits.check_user(user).is_ok());
    let (sends, jobs) = mpsc::channel(SEND_QUEUE);
    let conn = Arc::new(Conn {
        core: core.clone(),
        member: core.next_member_id(),
        user,
        authenticated,
        grant: admitted.rooms,
        limiter: core.limits.frame_limiter(),
        slot: Mutex::new(Some(admitted.slot)),
        rooms: Mutex::new(HashMap::new()),
        sends,
        sent: std::sync::atomic::AtomicU64::new(0),
        connected: watch::Sender::new(false),
    });
    tokio::spawn(send_loop(core.clone(), socket.clone(), jobs));
    socket.extensions.insert(conn.clone());
    core.connection_opened(PROTOCOL);

    let c = conn.clone();
    socket.on("join_room", move |s: SocketRef, Data(JoinRoomArgs(room, previous)): Data<JoinRoomArgs>| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return emit_error(&s, refusal, None);
            }
            if let Some(previous) = previous.filter(|p| c.rooms().get(p).is_some()) {
                leave(&c, &previous);
            }
            match room {
                Some(room) => join(&c, &s, room, None, Style::Original, None),
                None => emit_error(
                    &s,
                    Refusal::new("bad_request", "invalid_field", "join_room(roomId, previousRoomId?) needs a roomId"),
                    None,
                ),
            }
        })
    });
    let c = conn.clone();
    socket.on("send_message", move |s: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return refuse_original(&s, ack, refusal);
            }
            let payload: Result<OriginalSend, _> = serde_json::from_value(args);
            let Ok(payload) = payload else {
                let refusal =
                    Refusal::new("bad_request", "invalid_field", "send_message needs {roomId, message, username}");
                return refuse_original(&s, ack, refusal);
            };
            if !c.grant.allows(&payload.room_id) {
                return refuse_original(&s, ack, forbidden(&payload.room_id));
            }
            if !c.rooms().contains_key(&payload.room_id) {
                let refusal = Refusal::new(
                    "not_joined",
                    "invalid_field",
                    format!("join_room {} before sending to it", payload.room_id),
                );
                return refuse_original(&s, ack, refusal);
            }
            // With a token, the name is the token's, whatever the payload says.
            let username = match (&c.user, c.authenticated) {
                (Some(user), true) => user.clone(),
                _ => payload.username,
            };
            let n = c.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The socket id marks the sender's own messages, which `room_message` skips.
            let client_id = format!("sio:{}:{n}", s.id);
            let (room, text) = (payload.room_id, payload.message);
            queue_send(&c, SendJob::new(room, username, text, client_id, ack, Style::Original, After::Ack));
        })
    });
    let c = conn.clone();
    socket.on("create_room", move |s: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return refuse_original(&s, ack, refusal);
            }
            let payload: Result<CreateRoom, _> = serde_json::from_value(args);
            let Ok(payload) = payload else {
                let refusal = Refusal::new("bad_request", "invalid_field", "create_room needs {roomName, roomId?}");
                return refuse_original(&s, ack, refusal);
            };
            let name = payload.room_name.trim().to_owned();
            if name.is_empty() || name.chars().count() > c.core.limits.max_room_chars {
                let refusal = Refusal::new(
                    "bad_request",
                    "invalid_field",
                    format!("roomName must be 1 to {} characters", c.core.limits.max_room_chars),
                );
                return refuse_original(&s, ack, refusal);
            }
            // Like the original server, the new room's id is minted here: the client's
            // `roomId` is the room it is in now, which it leaves for the new one.
            let room = ulid::Ulid::new().to_string();
            let previous = payload.previous_room_id.or(payload.room_id).filter(|p| !p.is_empty());
            let entry = json!({"roomId": room, "roomName": name}).to_string();
            let client_id = format!("create:{room}");
            let after = After::JoinCreated { room, previous };
            let system = "system".to_owned();
            queue_send(&c, SendJob::new(DIRECTORY.to_owned(), system, entry, client_id, ack, Style::Original, after));
        })
    });
    let c = conn.clone();
    socket.on("join", move |s: SocketRef, Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return ack_error(ack, refusal, None);
            }
            match parse::<JoinArgs>(args, "join needs {room, since?}") {
                Ok(JoinArgs { room, since }) => join(&c, &s, room, since, Style::Roomcast, Some(ack)),
                Err(refusal) => ack_error(ack, refusal, None),
            }
        })
    });
    let c = conn.clone();
    socket.on("leave", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return ack_error(ack, refusal, None);
            }
            let room = args.get("room").and_then(Value::as_str).unwrap_or_default().to_owned();
            leave(&c, &room);
            let _ = ack.send(&json!({"room": room}));
        })
    });
    let c = conn.clone();
    socket.on("send", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return ack_error(ack, refusal, None);
            }
            let args: SendArgs = match parse(args, "send needs {room, text, client_id?}") {
                Ok(args) => args,
                Err(refusal) => return ack_error(ack, refusal, None),
            };
            let client_id = args.client_id.unwrap_or_else(|| ulid::Ulid::new().to_string());
            let Some(user) = c.user.clone() else {
                let refusal = Refusal::new(
                    "invalid_user",
                    "invalid_field",
                    "connect with auth {user: NAME} (or ?user=NAME) to send",
                );
                return ack_error(ack, refusal, Some(&client_id));
            };
            if !c.rooms().contains_key(&args.room) {
                let refusal = Refusal::new(
                    "not_joined",
                    "invalid_field",
                    format!("join room {} before sending to it", args.room),
                );
                return ack_error(ack, refusal, Some(&client_id));
            }
            queue_send(&c, SendJob::new(args.room, user, args.text, client_id, ack, Style::Roomcast, After::Ack));
        })
    });
    let c = conn.clone();
    socket.on("history", move |Data(args): Data<Value>, ack: AckSender| {
        inline(move || {
            if let Some(refusal) = c.over_rate() {
                return ack_error(ack, refusal, None);
            }
            let args: HistoryArgs = match parse(args, "history needs {room, before?, limit?}") {
                Ok(args) => args,
                Err(refusal) => return ack_error(ack, refusal, None),
            };
            if let Err(refusal) = c.core.limits.check_room(&args.room) {
                return ack_error(ack, refusal, None);
            }
            if !c.grant.allows(&args.room) {
                return ack_error(ack, forbidden(&args.room), None);
            }
            let archive = c.core.archive.clone();
            let limit = args.limit.unwrap_or(c.core.limits.history_page);
            let budget = c.core.limits.send_queue_bytes / 2;
            tokio::spawn(async move {
                let query = HistoryQuery { room: args.room.clone(), before: args.before, after: None, limit };
                let reply = match archive.history(query).await {
                    Ok(page) => json!({"room": args.room, "messages": visible(newest_within(&page, budget))}),
                    Err(err) => {
                        json!({"error": {"code": "unavailable", "message": format!("cannot read history: {err}")}})
                    }
                };
                let _ = ack.send(&reply);
            });
        })
    });
    socket.on_disconnect(async move |reason: DisconnectReason| {
        let rooms: Vec<String> = conn.rooms().drain().map(|(room, _)| room).collect();
        for room in rooms {
            conn.core.rooms.leave(&room, conn.member);
        }
        let reason = match reason {
            DisconnectReason::TransportClose | DisconnectReason::ClientNSDisconnect => "client_close",
            DisconnectReason::ServerNSDisconnect | DisconnectReason::ClosingServer => "drain",
            _ => "error",
        };
        conn.core.connection_closed(PROTOCOL, reason);
        conn.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    });
}

/// An event's argument as `T`, or a refusal saying what shape `T` wants.
fn parse<T: serde::de::DeserializeOwned>(args: Value, shape: &str) -> Result<T, Refusal> {
    serde_json::from_value(args).map_err(|err| Refusal::new("bad_request", "invalid_field", format!("{shape}: {err}")))
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
pub(crate) struct HistoryArgs {
    room: String,
    before: Option<u64>,
    limit: Option<u32>,
}

fn join(conn: &Arc<Conn>, socket: &SocketRef, room: String, since: Option<u64>, style: Style, ack: Option<AckSender>) {
    if !*conn.connected.borrow() {
        // A client that joins as soon as it gets the connect packet can be here before the
        // socket counts as connected, and a room that answers from memory would emit into
        // the void: the join waits until it is connected.
        let (conn, socket, mut connected) = (conn.clone(), socket.clone(), conn.connected.subscribe());
        tokio::spawn(async move {
            if tokio::time::timeout(CONNECT_WAIT, crate::wait_until(&mut connected, |c| *c)).await.is_ok() {
                join(&conn, &socket, room, since, style, ack);
            }
        });
        return;
    }
    if let Err(refusal) = conn.core.limits.check_room(&room) {
        return match ack {
            Some(ack) => ack_error(ack, refusal, None),
            None => emit_error(socket, refusal, None),
        };
    }
    if !conn.grant.allows(&room) {
        return match ack {
            Some(ack) => ack_error(ack, forbidden(&room), None),
            None => emit_error(socket, forbidden(&room), None),
        };
    }
    let mut rooms = conn.rooms();
    if rooms.contains_key(&room) {
        conn.core.rooms.leave(&room, conn.member);
    } else if rooms.len() >= conn.core.limits.max_rooms_per_connection {
        drop(rooms);
        let refusal = Refusal::new(
            "too_many_rooms",
            "too_many_rooms",
            format!("a connection may be in at most {} rooms", conn.core.limits.max_rooms_per_connection),
        );
        return match ack {
            Some(ack) => ack_error(ack, refusal, None),
            None => emit_error(socket, refusal, None),
        };
    }
    rooms.insert(room.clone(), style);
    drop(rooms);
    let sink =
        SocketSink { socket: socket.clone(), style, join_ack: Mutex::new(ack), own: format!("sio:{}:", socket.id) };
    conn.core.rooms.join(&room, conn.member, Arc::new(sink), since);
}

fn leave(conn: &Conn, room: &str) {
    if conn.rooms().remove(room).is_some() {
        conn.core.rooms.leave(room, conn.member);
    }
}

/// Checks a send and queues it on the connection's ordered send queue.
fn queue_send(conn: &Conn, job: SendJob) {
    metrics::counter!("roomcast_gateway_frames_received_total", "protocol" => PROTOCOL).increment(1);
    let checks = if job.room == DIRECTORY { Ok(()) } else { conn.core.limits.check_room(&job.room) }
        .and_then(|()| conn.core.limits.check_user(&job.user))
        .and_then(|()| conn.core.limits.check_text(&job.text));
    if let Err(refusal) = checks {
        return ack_error(job.ack, refusal, Some(&job.client_id));
    }
    if let Err(mpsc::error::TrySendError::Full(job)) = conn.sends.try_send(job) {
        let refusal = Refusal::new(
            "overloaded",
            "overloaded",
            format!("more than {SEND_QUEUE} sends are waiting; wait for acks"),
        );
        ack_error(job.ack, refusal, Some(&job.client_id));
    }
}

async fn send_loop(core: Arc<Core>, socket: SocketRef, mut jobs: mpsc::Receiver<SendJob>) {
    while let Some(job) = jobs.recv().await {
        match core.send(job.received, &job.user, &job.room, &job.text, &job.client_id).await {
            Ok(stored) => {
                metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "acked").increment(1);
                match job.after {
                    After::Ack => {
                        let _ = job.ack.send(&json!({"client_id": job.client_id, "room": job.room, "seq": stored.seq, "id": stored.id, "ts": stored.ts}));
                    }
                    After::JoinCreated { room, previous } => {
                        if let Some(conn) = socket.extensions.get::<Arc<Conn>>() {
                            if let Some(previous) = previous {
                                leave(&conn, &previous);
                            }
                            join(&conn, &socket, room.clone(), None, Style::Original, None);
                        }
                        let _ = job.ack.send(&json!({"roomId": room}));
                    }
                }
            }
            Err(err) => {
                metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "error").increment(1);
                tracing::warn!(%err, room = %job.room, user = %job.user, client_id = %job.client_id, "send failed");
                let error = json!({"code": err.code(), "message": err.to_string()});
                if job.style == Style::Original {
                    let _ = socket
                        .emit("error", &json!({"code": err.code(), "message": err.to_string(), "room": job.room}));
                }
                let _ = job.ack.send(&json!({"error": error, "client_id": job.client_id}));
            }
        }
    }
}

fn ack_error(ack: AckSender, refusal: Refusal, client_id: Option<&str>) {
    metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => refusal.kind).increment(1);
    let _ = ack.send(&json!({"error": {"code": refusal.code, "message": refusal.message}, "client_id": client_id}));
}

/// A refused `send_message` or `create_room`: the original app's `error` event, and the
/// same error as the ack for clients that asked for one.
fn refuse_original(socket: &SocketRef, ack: AckSender, refusal: Refusal) {
    let _ = ack.send(&json!({"error": {"code": refusal.code, "message": &refusal.message}}));
    emit_error(socket, refusal, None);
}

fn emit_error(socket: &SocketRef, refusal: Refusal, room: Option<&str>) {
    metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => refusal.kind).increment(1);
    let _ = socket.emit("error", &json!({"code": refusal.code, "message": refusal.message, "room": room}));
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
        METRICS.frames_sent_socketio.increment(1);
        if self.socket.emit(event, data).is_err() && self.socket.connected() {
            // Its buffer is full: a slow consumer, closed so it cannot hold up the room.
            metrics::counter!("roomcast_gateway_slow_consumer_disconnects_total").increment(1);
            let _ = self.socket.clone().disconnect();
        }
    }
}

impl Sink for SocketSink {
    fn joined(&self, room: &str, page: &[ChatMessage], truncated: bool) {
        match self.style {
            Style::Original => {
                let messages: Vec<OriginalMessage> = page.iter().filter(|m| !m.tombstone).map(Into::into).collect();
                if self.socket.emit("joined_room", &(room, serialized(&messages))).is_err() {
                    let _ = self.socket.clone().disconnect();
                }
            }
            Style::Roomcast => {
                let reply = json!({"room": room, "messages": visible(page), "truncated": truncated});
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

    fn unavailable(&self, room: &str, message: &str) {
        self.emit("error", &json!({"code": "unavailable", "message": message, "room": room}));
    }
}

/// The room map: a member of [`DIRECTORY`] that folds its messages into
/// `{roomId: {name}}` and sends the map to every Socket.IO client when it changes.
struct Directory {
    map: Mutex<BTreeMap<String, Value>>,
    io: SocketIo,
}

impl Directory {
    fn snapshot(&self) -> Value {
        Value::Object(self.map.lock().unwrap_or_else(|p| p.into_inner()).clone().into_iter().collect())
    }

    fn add(&self, msg: &ChatMessage) -> bool {
        let Ok(entry) = serde_json::from_str::<Value>(&msg.text) else {
            return false;
        };
        let (Some(id), Some(name)) = (entry["roomId"].as_str(), entry["roomName"].as_str()) else {
            return false;
        };
        // The original server's entry shape; its client reads `name`.
        let entry = json!({"roomId": id, "name": name, "messages": []});
        self.map.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_owned()).or_insert(entry);
        true
    }

    fn broadcast(&self) {
        let (io, map) = (self.io.clone(), self.snapshot());
        tokio::spawn(async move {
            let _ = io.emit("room", &map).await;
        });
    }
}

impl Sink for Directory {
    fn joined(&self, _room: &str, page: &[ChatMessage], _truncated: bool) {
        let mut added = false;
        for message in page.iter().filter(|m| !m.tombstone) {
            added |= self.add(message);
        }
        if added {
            self.broadcast();
        }
    }

    fn deliver(&self, msg: &ChatMessage, _ws_frame: &Utf8Bytes) {
        if self.add(msg) {
            self.broadcast();
        }
    }

    fn unavailable(&self, _room: &str, message: &str) {
        tracing::warn!(message, "room directory not loaded yet");
    }
}
