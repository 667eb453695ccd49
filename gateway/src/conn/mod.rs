//! One client connection, whatever its front door: its user, token grant, rooms, rate
//! limiter and ordered send queue. A front door is a codec: it turns a frame or event
//! into one of these operations and the answer back into a frame. Every check, count and
//! limit is here, so the front doors behave the same by construction.
//!
//! Sends run one at a time per connection, so a client's own messages are stored in the
//! order it sent them; the queue and its task start with the first send, since most
//! connections only read.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use governor::DefaultDirectRateLimiter;
use metrics::{Counter, Histogram};
use persister::HistoryQuery;
use roomcast_proto::{ChatMessage, RoomTouch, UserBan};
use tokio::sync::mpsc;

use crate::admission::{Admitted, Slot};
use crate::auth::RoomGrant;
use crate::directory::{Entry, DIRECTORY, SYSTEM_USER};
use crate::error::{ClientError, Malformed};
use crate::hub::{broker_failed, store_failed, Hub, Kick};
use crate::limits::Limits;
use crate::metrics::METRICS;
use crate::presence::Snapshot;
use crate::protocol::{newest_within, RoomEntry};
use crate::sink::{MemberId, Sink};

/// Sends a connection may have waiting; beyond it sends are refused (`overloaded`).
pub const SEND_QUEUE: usize = 32;

/// A send as the client asked for it.
pub struct SendRequest {
    pub room: String,
    pub text: String,
    /// The idempotency key; one is made up when the client gave none.
    pub client_id: Option<String>,
    /// The name the message claims (the original app's `username`); a token's user, or
    /// else the connection's, wins or stands in.
    pub username: Option<String>,
}

/// The answer to a send: the message as stored, or why not.
pub struct Sent {
    pub client_id: String,
    pub room: String,
    pub result: Result<ChatMessage, ClientError>,
}

/// Where a send's answer goes; called once, in the order the sends were made.
pub type OnSent = Box<dyn FnOnce(Sent) + Send>;

/// A page of the room directory.
pub struct RoomsPage {
    pub rooms: Vec<RoomEntry>,
    pub total: u64,
    /// The offset of the next page, if there is one.
    pub next: Option<u64>,
}

/// Rooms in a directory page when the client asks for no number.
pub const ROOMS_PAGE: u32 = 50;

/// Where a connection's token stands.
struct TokenClock {
    /// The token's `exp` (Unix seconds); None without a token.
    expires_at: Option<u64>,
    /// Set when the client is asked for a new token: the close comes then.
    close_at: Option<tokio::time::Instant>,
    /// Counts refreshes, so that a timer that fired for an older token does nothing.
    generation: u64,
}

/// What a front door does when [`Conn::token_due`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenStep {
    /// Ask the client for a new token (`refresh_needed`).
    RefreshNeeded,
    /// Close the connection (4401): no new token came in time.
    Expired,
}

/// The tokio instant of a Unix time in seconds (now, if it has passed; at most a year
/// ahead, so that a huge `exp` cannot overflow the clock).
fn instant_of(unix_seconds: u64) -> tokio::time::Instant {
    const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let left = std::time::Duration::from_secs(unix_seconds).saturating_sub(now).min(YEAR);
    tokio::time::Instant::now() + left
}

pub struct Conn {
    hub: Arc<Hub>,
    protocol: &'static str,
    member: MemberId,
    user: Option<String>,
    authenticated: bool,
    /// What the token grants; a refresh replaces it.
    grant: Mutex<Arc<RoomGrant>>,
    token: Mutex<TokenClock>,
    /// Wakes `token_due` when a refresh moved the clock.
    token_moved: tokio::sync::Notify,
    limiter: DefaultDirectRateLimiter,
    received: &'static Counter,
    send_duration: &'static Histogram,
    rooms: Mutex<HashSet<String>>,
    sends: OnceLock<SendQueue>,
    /// The connection's place in the admission counts; taken at close.
    slot: Mutex<Option<Slot>>,
    /// Fired when the server API removes the user; none for a connection without a name.
    kick: Option<Arc<Kick>>,
}

impl Conn {
    /// A connection admitted on front door `protocol` (a metric label: `ws`, `socketio`,
    /// `webtransport`).
    pub fn open(hub: Arc<Hub>, protocol: &'static str, admitted: Admitted) -> Arc<Conn> {
        hub.connection_opened(protocol);
        let member = hub.next_member_id();
        Arc::new(Conn {
            kick: admitted.user.as_deref().map(|user| hub.register(user, member)),
            member,
            protocol,
            user: admitted.user,
            authenticated: admitted.authenticated,
            grant: Mutex::new(Arc::new(admitted.rooms)),
            token: Mutex::new(TokenClock { expires_at: admitted.expires_at, close_at: None, generation: 0 }),
            token_moved: tokio::sync::Notify::new(),
            limiter: hub.limits.frame_limiter(),
            received: &METRICS.protocol(protocol).frames_received,
            send_duration: &METRICS.protocol(protocol).send_duration,
            rooms: Mutex::default(),
            sends: OnceLock::new(),
            slot: Mutex::new(Some(admitted.slot)),
            hub,
        })
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Resolves when the server API removes this connection's user, with the removal;
    /// never for a connection without a user name. The front door then closes it (4403).
    pub async fn removed(&self) -> UserBan {
        match &self.kick {
            Some(kick) => kick.removed().await.clone(),
            None => std::future::pending().await,
        }
    }

    /// Counts one frame or event from the client, and checks it against the rate limit.
    pub fn received(&self) -> Result<(), ClientError> {
        self.received.increment(1);
        self.limiter.check().map_err(|_| {
            metrics::counter!("roomcast_gateway_rate_limited_total", "scope" => "connection").increment(1);
            self.refused(self.hub.limits.rate_limited())
        })
    }

    /// Counts a refusal. Every refusal passes here, those of the codecs included.
    pub fn refused(&self, err: ClientError) -> ClientError {
        if let Some(kind) = err.kind() {
            metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => kind).increment(1);
        }
        err
    }

    /// Joins `room`; its history (or what was missed after `since`) and then its live
    /// messages go to `sink`. Joining a room again is a resync from `since`.
    pub fn join(&self, room: &str, since: Option<u64>, sink: Arc<dyn Sink>) -> Result<(), ClientError> {
        {
            // The grant is checked under the rooms lock, which a refresh holds while it
            // swaps the grant and leaves what the new one does not cover.
            let mut rooms = self.joined_rooms();
            self.check_access(room)?;
            if rooms.contains(room) {
                self.hub.rooms.leave(room, self.member);
            } else if rooms.len() >= self.hub.limits.max_rooms_per_connection {
                return Err(self.refused(ClientError::TooManyRooms { max: self.hub.limits.max_rooms_per_connection }));
            }
            rooms.insert(room.to_owned());
        }
        self.hub.rooms.join(room, self.member, self.user.as_deref(), sink, since);
        Ok(())
    }

    /// `room`'s presence, as its members were last told; the room must be joined.
    pub fn presence(
        &self,
        room: &str,
    ) -> Result<impl Future<Output = Result<Snapshot, ClientError>> + Send + 'static, ClientError> {
        self.check_joined(room)?;
        let answer = self.hub.rooms.presence(room);
        Ok(async move {
            match answer {
                Some(answer) => {
                    answer.await.map_err(|_| ClientError::Unavailable("the room closed; join again".into()))
                }
                None => Err(ClientError::Unavailable("the room closed; join again".into())),
            }
        })
    }

    /// Tells the other users of `room` that this connection's user is typing.
    pub fn typing(&self, room: &str) -> Result<(), ClientError> {
        self.check_joined(room)?;
        let Some(user) = &self.user else {
            let message = "connect with a user name (?user=NAME, or auth {user}) to signal typing";
            return Err(self.refused(ClientError::InvalidUser(message.into())));
        };
        self.hub.rooms.typing(room, user);
        Ok(())
    }

    /// The rooms this connection's token grants.
    pub fn grant(&self) -> Arc<RoomGrant> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when the connection came with a token (and so can expire and be refreshed).
    pub fn has_token(&self) -> bool {
        self.authenticated
    }

    /// Waits until this connection's token needs a refresh (its `exp`), and after that
    /// until it has run out for good (`exp` + `--auth-refresh-grace-seconds`) unless a
    /// refresh came; never returns for a connection without a token. Each front door
    /// waits on it: the first step asks the client for a new token, the second closes.
    pub async fn token_due(&self) -> TokenStep {
        loop {
            let moved = self.token_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let (expires_at, close_at, generation) = {
                let clock = self.token_clock();
                (clock.expires_at, clock.close_at, clock.generation)
            };
            let Some(expires_at) = expires_at else {
                moved.await;
                continue;
            };
            // The close time is fixed when the client is asked: waiting again (the codec
            // recreates this future on every frame) never moves it.
            let (deadline, step) = match close_at {
                Some(at) => (at, TokenStep::Expired),
                None => (instant_of(expires_at), TokenStep::RefreshNeeded),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let mut clock = self.token_clock();
                    if clock.generation != generation {
                        continue; // a refresh came meanwhile
                    }
                    if step == TokenStep::RefreshNeeded {
                        clock.close_at = Some(tokio::time::Instant::now() + self.hub.limits.refresh_grace);
                    }
                    return step;
                }
                _ = &mut moved => {}
            }
        }
    }

    /// Replaces this connection's token with `token`, which must name the same user: its
    /// `exp` and rooms grant replace the old ones, and joined rooms it does not grant are
    /// left. Answers the new `exp` and the rooms left.
    pub fn refresh(&self, token: &str) -> Result<(u64, Vec<String>), ClientError> {
        let result = self.swap_token(token);
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        metrics::counter!("roomcast_gateway_token_refreshes_total", "result" => outcome).increment(1);
        result
    }

    fn swap_token(&self, token: &str) -> Result<(u64, Vec<String>), ClientError> {
        let identity = self
            .hub
            .admission
            .verify(token)
            .map_err(|err| self.refused(ClientError::TokenInvalid(format!("{}: {err}", err.code()))))?;
        if !self.authenticated || self.user.as_deref() != Some(identity.user.as_str()) {
            let message = match &self.user {
                Some(user) if self.authenticated => {
                    format!("the new token names {}, not this connection's user {user}", identity.user)
                }
                _ => "this connection has no token to refresh: connect with one".to_owned(),
            };
            return Err(self.refused(ClientError::TokenInvalid(message)));
        }
        let left: Vec<String> = {
            let mut rooms = self.joined_rooms();
            let gone: Vec<String> = rooms.iter().filter(|room| !identity.rooms.allows(room)).cloned().collect();
            for room in &gone {
                rooms.remove(room);
                self.hub.rooms.leave(room, self.member);
            }
            *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(identity.rooms);
            gone
        };
        {
            let mut clock = self.token_clock();
            clock.expires_at = Some(identity.expires_at);
            clock.close_at = None;
            clock.generation += 1;
        }
        self.token_moved.notify_waiters();
        Ok((identity.expires_at, left))
    }

    fn token_clock(&self) -> MutexGuard<'_, TokenClock> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A page of the room directory, most recently active first, with member counts;
    /// rooms the token does not grant are left out, so a page may hold fewer than `limit`.
    pub fn rooms(
        &self,
        offset: Option<u32>,
        limit: Option<u32>,
    ) -> impl Future<Output = Result<RoomsPage, ClientError>> + Send + 'static {
        directory_page(self.hub.broker.clone(), offset, limit, self.grant())
    }

    /// Leaves `room`; leaving a room not joined is not an error.
    pub fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.hub.limits.check_room(room).map_err(|err| self.refused(err))?;
        if self.joined_rooms().remove(room) {
            self.hub.rooms.leave(room, self.member);
        }
        Ok(())
    }

    /// Queues a send behind this connection's earlier ones; `on_sent` gets the stored
    /// message, or the refusal or failure, always with the send's `client_id`.
    pub fn send(&self, request: SendRequest, on_sent: OnSent) {
        let client_id = request.client_id.unwrap_or_else(|| ulid::Ulid::new().to_string());
        match self.check_send(&client_id, &request.room, &request.text, request.username) {
            Ok(user) => {
                let mut job = SendJob::new(request.room, user, request.text, client_id, on_sent);
                if !self.authenticated {
                    // A name nobody vouched for spends from its own budget, never from that
                    // of a user who signs in under it.
                    job.budget = format!("~anon:{}", job.user);
                }
                self.queue(job);
            }
            Err(err) => {
                self.send_duration.record(0.0);
                on_sent(Sent { client_id, room: request.room, result: Err(self.refused(err)) });
            }
        }
    }

    /// Creates a room named `name` in the directory, behind this connection's earlier
    /// sends; `on_created` gets the new room's id once its entry is stored, or why not.
    pub fn create_room(&self, name: &str, on_created: Box<dyn FnOnce(Result<String, ClientError>) + Send>) {
        let name = name.trim();
        let max = self.hub.limits.max_room_chars;
        if name.is_empty() || name.chars().count() > max {
            let message = format!("a room name must be 1 to {max} characters");
            return on_created(Err(self.refused(ClientError::bad_request(Malformed::Field, message))));
        }
        let room_id = ulid::Ulid::new().to_string();
        if !self.grant().allows(&room_id) {
            return on_created(Err(self.refused(ClientError::ForbiddenRoom { room: room_id })));
        }
        let creator = match &self.user {
            Some(user) => user.clone(),
            None => format!("~connection-{}", self.member),
        };
        if self.hub.room_creations.check_key(&creator).is_err() {
            let per_minute = self.hub.limits.rooms_created_per_minute;
            let message = format!("at most {per_minute} rooms created per minute: wait, then create it again");
            return on_created(Err(self.refused(ClientError::RateLimited(message))));
        }
        let entry = Entry { room_id: room_id.clone(), room_name: name.to_owned() }.encode();
        let client_id = format!("create:{room_id}");
        let touch = RoomTouch { room: room_id.clone(), name: name.to_owned(), ..Default::default() };
        let on_sent = Box::new(move |sent: Sent| on_created(sent.result.map(|_| room_id)));
        let mut job = SendJob::new(DIRECTORY.to_owned(), SYSTEM_USER.to_owned(), entry, client_id, on_sent);
        job.touch = Some(touch);
        self.queue(job);
    }

    /// A page of `room`'s history before `before` (the newest `limit`, oldest first),
    /// cut to what fits half the send queue so that reading it never makes the client a
    /// slow consumer. The checks are made now; the read when the future runs.
    pub fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<impl Future<Output = Result<Vec<ChatMessage>, ClientError>> + Send + 'static, ClientError> {
        self.check_access(room)?;
        let archive = self.hub.archive.clone();
        let query = HistoryQuery {
            room: room.to_owned(),
            before,
            after: None,
            limit: limit.unwrap_or(self.hub.limits.history_page),
        };
        let budget = self.hub.limits.send_queue_bytes / 2;
        Ok(async move {
            let page = archive.history(query).await.map_err(store_failed)?;
            Ok(newest_within(&page, budget).to_vec())
        })
    }

    /// Ends the connection: leaves its rooms, stops its sends and frees its place. Only
    /// the first call counts.
    pub fn close(&self, reason: &'static str) {
        let Some(slot) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let rooms: Vec<String> = self.joined_rooms().drain().collect();
        for room in rooms {
            self.hub.rooms.leave(&room, self.member);
        }
        if let Some(sends) = self.sends.get() {
            sends.task.abort();
        }
        if let (Some(user), Some(_)) = (&self.user, &self.kick) {
            self.hub.unregister(user, self.member);
        }
        self.hub.connection_closed(self.protocol, reason);
        drop(slot);
    }

    fn joined_rooms(&self) -> MutexGuard<'_, HashSet<String>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A room this connection is in.
    fn check_joined(&self, room: &str) -> Result<(), ClientError> {
        self.check_access(room)?;
        if !self.joined_rooms().contains(room) {
            return Err(self.refused(ClientError::NotJoined { room: room.to_owned() }));
        }
        Ok(())
    }

    /// A valid room name the token grants.
    fn check_access(&self, room: &str) -> Result<(), ClientError> {
        check_fields(&self.hub.limits, room, None, None).map_err(|err| self.refused(err))?;
        if !self.grant().allows(room) {
            return Err(self.refused(ClientError::ForbiddenRoom { room: room.to_owned() }));
        }
        Ok(())
    }

    /// The checks of a send, in the order a client fixes them; returns the sender's name.
    fn check_send(
        &self,
        client_id: &str,
        room: &str,
        text: &str,
        username: Option<String>,
    ) -> Result<String, ClientError> {
        let limits = &self.hub.limits;
        check_fields(limits, room, Some(text), Some(client_id))?;
        if !self.grant().allows(room) {
            return Err(ClientError::ForbiddenRoom { room: room.to_owned() });
        }
        if !self.joined_rooms().contains(room) {
            return Err(ClientError::NotJoined { room: room.to_owned() });
        }
        let user = match (&self.user, self.authenticated) {
            (Some(user), true) => user.clone(),
            _ => username.or_else(|| self.user.clone()).ok_or_else(|| {
                ClientError::InvalidUser("connect with a user name (?user=NAME, or auth {user}) to send".into())
            })?,
        };
        limits.check_user(&user)?;
        if client_id.starts_with(crate::api::CLIENT_ID_PREFIX) {
            let message = format!("client ids starting with {} are the server API's", crate::api::CLIENT_ID_PREFIX);
            return Err(ClientError::bad_request(Malformed::Field, message));
        }
        Ok(user)
    }

    fn queue(&self, job: SendJob) {
        let sends = self.sends.get_or_init(|| SendQueue::start(self.hub.clone(), self.send_duration));
        if let Err(err) = sends.jobs.try_send(job) {
            let (job, error) = match err {
                mpsc::error::TrySendError::Full(job) => (job, ClientError::Overloaded { max: SEND_QUEUE }),
                mpsc::error::TrySendError::Closed(job) => {
                    (job, ClientError::Unavailable("the connection is closing; resend after reconnecting".into()))
                }
            };
            self.send_duration.record(job.received.elapsed());
            (job.on_sent)(Sent { client_id: job.client_id, room: job.room, result: Err(self.refused(error)) });
        }
    }
}

/// A page of the room directory (offset 0 and [`ROOMS_PAGE`] rooms by default), with
/// the rooms `grant` does not cover left out: a connection's, or the server API's (all).
pub async fn directory_page(
    broker: Arc<dyn fanout::Broker>,
    offset: Option<u32>,
    limit: Option<u32>,
    grant: Arc<RoomGrant>,
) -> Result<RoomsPage, ClientError> {
    let offset = offset.unwrap_or(0);
    let limit = limit.unwrap_or(ROOMS_PAGE).clamp(1, fanout::MAX_ROOMS_PAGE);
    let reply = broker.rooms(offset, limit).await.map_err(broker_failed)?;
    let end = u64::from(offset) + reply.rooms.len() as u64;
    let rooms = reply
        .rooms
        .into_iter()
        .filter(|r| grant.allows(&r.room))
        .map(|r| RoomEntry {
            name: if r.name.is_empty() { r.room.clone() } else { r.name },
            room: r.room,
            members: r.members,
            active_at: r.active_at,
        })
        .collect();
    Ok(RoomsPage { rooms, total: reply.total, next: (end < reply.total).then_some(end) })
}

/// The checks of what a client wrote into a frame or event, before any state is
/// looked at: the room name, the text and the client id.
pub fn check_fields(
    limits: &Limits,
    room: &str,
    text: Option<&str>,
    client_id: Option<&str>,
) -> Result<(), ClientError> {
    if let Some(client_id) = client_id {
        limits.check_client_id(client_id)?;
    }
    limits.check_room(room)?;
    if let Some(text) = text {
        limits.check_text(text)?;
    }
    Ok(())
}

struct SendJob {
    received: tokio::time::Instant,
    room: String,
    user: String,
    text: String,
    client_id: String,
    on_sent: OnSent,
    /// A room to enter in the directory before the send (a created room).
    touch: Option<RoomTouch>,
    /// The user budget the send spends from.
    budget: String,
}

impl SendJob {
    fn new(room: String, user: String, text: String, client_id: String, on_sent: OnSent) -> Self {
        let budget = user.clone();
        SendJob { received: tokio::time::Instant::now(), room, user, text, client_id, on_sent, touch: None, budget }
    }
}

/// A connection's send queue, and the task that works through it in order.
struct SendQueue {
    jobs: mpsc::Sender<SendJob>,
    task: tokio::task::JoinHandle<()>,
}

impl SendQueue {
    fn start(hub: Arc<Hub>, duration: &'static Histogram) -> Self {
        let (jobs, queue) = mpsc::channel(SEND_QUEUE);
        SendQueue { jobs, task: tokio::spawn(run_sends(hub, queue, duration)) }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_sends(hub: Arc<Hub>, mut jobs: mpsc::Receiver<SendJob>, duration: &'static Histogram) {
    while let Some(job) = jobs.recv().await {
        // A created room enters the directory first, so that whoever learns of it from
        // its stored entry finds it there. The stored entry is what counts: a broker
        // without a directory (an older fanout) does not stop the creation.
        if let Some(touch) = &job.touch {
            if let Err(err) = hub.broker.touch(std::slice::from_ref(touch)).await {
                crate::metrics::presence_failed("announce");
                tracing::warn!(%err, room = %touch.room, "cannot enter a created room in the directory");
            }
        }
        let result = match job.touch {
            Some(_) => hub.send(job.received, &job.user, &job.room, &job.text, &job.client_id).await,
            None => hub.client_send(job.received, &job.budget, &job.user, &job.room, &job.text, &job.client_id).await,
        };
        duration.record(job.received.elapsed());
        match &result {
            Ok(_) => metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "acked").increment(1),
            // A refusal, like the connection's own frame limit: not a failed send, and no
            // log line per flooded message.
            Err(err @ ClientError::RateLimited(_)) => {
                metrics::counter!("roomcast_gateway_bad_frames_total", "kind" => err.kind().unwrap_or("rate_limited"))
                    .increment(1);
            }
            Err(err) => {
                metrics::counter!("roomcast_gateway_messages_sent_total", "result" => "error").increment(1);
                tracing::warn!(%err, room = %job.room, user = %job.user, client_id = %job.client_id, "send failed");
            }
        }
        (job.on_sent)(Sent { client_id: job.client_id, room: job.room, result });
    }
}

#[cfg(test)]
pub(crate) mod tests;
