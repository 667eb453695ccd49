//! The rooms that have members on this gateway, one task each.
//!
//! A room task puts the broker's deliveries back into seq order, hands each message to
//! every member exactly once, and fills holes from the store: a seq that stays missing
//! for [`GAP_TIMEOUT`] is read from the store, and sealed there if nobody stored it.
//! Joining members are registered before their history is read, so every message is
//! either in that history or delivered live after it, and per-member `last` seqs drop
//! the overlap.
//!
//! The room reads the store once when it starts here, however many members join while
//! that read runs, and then keeps its recent [`Tail`] in memory: a join, or a `since`
//! recovery, that the tail covers reads nothing from the store.
//!
//! The room task also keeps the room's [`Presence`]: it tells members in batches and
//! announces this gateway's users through the [`Announcer`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fanout::{Broker, BrokerError};
use persister::{removed, Archive, HistoryQuery, StoreError, MAX_PAGE};
use roomcast_proto::{now_millis, room_signal, ChatMessage, Interest, PresenceEntry, RoomSignal, RoomTouch};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::limits::Limits;
use crate::metrics::{presence_failed, METRICS};
use crate::presence::{Notice, Presence, PresenceConfig, Snapshot, TICK};
use crate::protocol::{notice_frame, wire_size, ServerFrame, WireMessage};
use crate::signals::{nobody_here, Announcer};
use crate::sink::{MemberId, Sink};

/// How long a missing seq may hold up later ones before the store is asked for it.
const GAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before retrying a store read that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Reads of a room's presence tried (1 s, 2 s, 4 s, 8 s apart) before giving up until the
/// next resync: a broker without presence (an older fanout) is not asked for ever.
const PRESENCE_READ_ATTEMPTS: u32 = 5;
/// Bounds of a room's in-memory tail: enough for a history page and a reconnect's worth
/// of recovery in a busy room, little enough for many rooms per gateway.
const TAIL_MESSAGES: usize = 512;
const TAIL_BYTES: usize = 256 * 1024;
/// Removals a room remembers, to show a delivery or read that predates one as removed.
const REMEMBERED_DELETIONS: usize = 1024;

/// The registry: which rooms exist here, and how many members each has.
pub struct Rooms {
    map: Mutex<HashMap<String, Entry>>,
    archive: Arc<dyn Archive>,
    broker: Arc<dyn Broker>,
    interests: mpsc::UnboundedSender<Interest>,
    limits: Limits,
    presence: PresenceConfig,
    announcer: Announcer,
}

struct Entry {
    commands: mpsc::UnboundedSender<Command>,
    members: usize,
}

enum Command {
    Join {
        member: MemberId,
        user: Option<String>,
        sink: Arc<dyn Sink>,
        since: Option<u64>,
    },
    Leave {
        member: MemberId,
    },
    Deliver(Arc<ChatMessage>),
    /// The room's first read: its high seq and newest messages, shared by every member
    /// that joined before it landed.
    RoomLoaded {
        result: Result<Page, StoreError>,
    },
    Loaded {
        member: MemberId,
        since: Option<u64>,
        result: Result<Page, StoreError>,
    },
    /// Messages read to fill a hole or catch up; `more` when the read stopped short.
    Fill {
        result: Result<Vec<ChatMessage>, StoreError>,
        more: bool,
    },
    CatchUp,
    GapCheck,
    /// Another gateway's presence change or typing, through the broker.
    Signal(RoomSignal),
    /// A member's user is typing.
    Typing {
        user: String,
    },
    Presence(oneshot::Sender<Snapshot>),
    PresenceLoaded {
        read: u64,
        attempt: u32,
        result: Result<Vec<PresenceEntry>, BrokerError>,
    },
    /// The gateways alive now.
    Gateways(Arc<HashSet<String>>),
    /// Announce this gateway's users whole at the next tick.
    Reannounce,
    PresenceTick,
}

/// A store read: messages oldest first, the store's highest seq before the read, and
/// whether more remained than one read takes.
struct Page {
    messages: Vec<ChatMessage>,
    high: u64,
    truncated: bool,
}

impl Rooms {
    pub fn new(
        archive: Arc<dyn Archive>,
        broker: Arc<dyn Broker>,
        interests: mpsc::UnboundedSender<Interest>,
        limits: Limits,
        presence: PresenceConfig,
    ) -> Self {
        let announcer = Announcer::start(broker.clone());
        Self { map: Mutex::new(HashMap::new()), archive, broker, interests, limits, presence, announcer }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `member` joins `room`; with a `user` it counts in the room's presence.
    pub fn join(&self, room: &str, member: MemberId, user: Option<&str>, sink: Arc<dyn Sink>, since: Option<u64>) {
        let mut map = self.map();
        let entry = map.entry(room.to_owned()).or_insert_with(|| {
            let (commands, rx) = mpsc::unbounded_channel();
            let task = RoomTask::new(room, self, commands.downgrade());
            tokio::spawn(task.run(rx));
            let _ = self.interests.send(Interest { room: room.to_owned(), subscribe: true });
            Entry { commands, members: 0 }
        });
        entry.members += 1;
        let user = user.map(str::to_owned);
        let _ = entry.commands.send(Command::Join { member, user, sink, since });
        metrics::gauge!("roomcast_gateway_rooms").set(map.len() as f64);
    }

    pub fn leave(&self, room: &str, member: MemberId) {
        let mut map = self.map();
        let Some(entry) = map.get_mut(room) else {
            return;
        };
        let _ = entry.commands.send(Command::Leave { member });
        entry.members -= 1;
        if entry.members == 0 {
            // Dropping the sender ends the room task once its queue is done; it announces
            // nothing more. Its users' leave is queued here, under the map's lock, so it
            // comes before anything the room's next task here announces.
            map.remove(room);
            self.announcer.send(nobody_here(room.to_owned(), &self.presence.gateway));
            let _ = self.interests.send(Interest { room: room.to_owned(), subscribe: false });
        }
        metrics::gauge!("roomcast_gateway_rooms").set(map.len() as f64);
    }

    pub fn deliver(&self, msg: ChatMessage) {
        if let Some(entry) = self.map().get(&msg.room) {
            let _ = entry.commands.send(Command::Deliver(Arc::new(msg)));
        }
    }

    /// Re-reads one room (`Some`) or every room from the store, and its presence from the
    /// broker: the broker may have dropped messages and signals.
    pub fn catch_up(&self, room: Option<&str>) {
        let map = self.map();
        for (name, entry) in map.iter() {
            if room.is_none_or(|r| r == name) {
                let _ = entry.commands.send(Command::CatchUp);
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Hands a signal from the broker to its room, if it has members here.
    pub fn signal(&self, signal: RoomSignal) {
        if let Some(entry) = self.map().get(&signal.room) {
            let _ = entry.commands.send(Command::Signal(signal));
        }
    }

    /// `user`, a member of `room`, is typing.
    pub fn typing(&self, room: &str, user: &str) {
        if let Some(entry) = self.map().get(room) {
            let _ = entry.commands.send(Command::Typing { user: user.to_owned() });
        }
    }

    /// What `room`'s members were last told of its presence; `None` if it has no members.
    pub fn presence(&self, room: &str) -> Option<oneshot::Receiver<Snapshot>> {
        let (tx, rx) = oneshot::channel();
        self.map().get(room)?.commands.send(Command::Presence(tx)).ok()?;
        Some(rx)
    }

    pub fn announcer(&self) -> &Announcer {
        &self.announcer
    }

    /// `room` announces its users again, whole; false if it has no members here.
    pub fn reannounce_room(&self, room: &str) -> bool {
        self.map().get(room).is_some_and(|entry| entry.commands.send(Command::Reannounce).is_ok())
    }

    /// Every room announces its users again, whole.
    pub fn reannounce(&self) {
        for entry in self.map().values() {
            let _ = entry.commands.send(Command::Reannounce);
        }
    }

    /// Tells every room which gateways are alive.
    pub fn keep_gateways(&self, live: Arc<HashSet<String>>) {
        for entry in self.map().values() {
            let _ = entry.commands.send(Command::Gateways(live.clone()));
        }
    }
}

struct Member {
    sink: Arc<dyn Sink>,
    user: Option<String>,
    /// Highest seq this member has been sent; `None` while its history loads.
    last: Option<u64>,
    /// Live messages that arrived while the history loaded.
    held: Vec<Arc<ChatMessage>>,
    /// The position it joined with, while it waits for the room's first read.
    waiting: Option<Option<u64>>,
}

/// The newest messages delivered in a room, tombstones included: consecutive seqs that
/// end at the room's cursor, bounded by [`TAIL_MESSAGES`] and [`TAIL_BYTES`].
#[derive(Default)]
struct Tail {
    messages: VecDeque<Arc<ChatMessage>>,
    bytes: usize,
}

impl Tail {
    /// Seeds the tail with the longest run of consecutive seqs of `page` that ends at `cursor`.
    fn seed(page: &[ChatMessage], cursor: u64) -> Tail {
        let mut tail = Tail::default();
        let mut expected = cursor;
        for msg in page.iter().rev() {
            if msg.seq != expected || expected == 0 {
                break;
            }
            tail.bytes += wire_size(msg);
            tail.messages.push_front(Arc::new(msg.clone()));
            expected -= 1;
        }
        tail.trim();
        tail
    }

    /// Replaces message `seq`, if the tail holds it, with its removed tombstone.
    fn remove(&mut self, seq: u64) {
        let Some(first) = self.messages.front().map(|m| m.seq) else { return };
        let Some(slot) = seq.checked_sub(first).and_then(|i| self.messages.get_mut(usize::try_from(i).ok()?)) else {
            return;
        };
        if slot.seq != seq || slot.tombstone {
            return;
        }
        let tombstone = Arc::new(removed(slot));
        self.bytes = self.bytes - wire_size(slot) + wire_size(&tombstone);
        *slot = tombstone;
    }

    /// Appends the message that follows the last one.
    fn push(&mut self, msg: Arc<ChatMessage>) {
        self.bytes += wire_size(&msg);
        self.messages.push_back(msg);
        self.trim();
    }

    fn trim(&mut self) {
        while self.messages.len() > TAIL_MESSAGES || (self.bytes > TAIL_BYTES && self.messages.len() > 1) {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= wire_size(&old);
            }
        }
    }

    /// What a member joining with `since` is owed, when the tail holds all of it: the
    /// newest `page` messages (no `since`), or everything after `since`, cut like a store
    /// read at `cap` messages and `max_bytes` of text. `None` when the store must answer.
    fn serve(&self, since: Option<u64>, cursor: u64, page: usize, cap: usize, max_bytes: usize) -> Option<Page> {
        let first = self.messages.front().map_or(cursor + 1, |m| m.seq);
        let whole_room = first == 1;
        let messages: Vec<ChatMessage> = match since {
            None if whole_room || self.messages.len() >= page => {
                self.messages.iter().skip(self.messages.len().saturating_sub(page)).map(|m| (**m).clone()).collect()
            }
            Some(after) if after >= cursor => Vec::new(),
            Some(after) if first <= after + 1 => {
                let mut bytes = 0;
                let mut out = Vec::new();
                for msg in self.messages.iter().filter(|m| m.seq > after) {
                    bytes += wire_size(msg);
                    if out.len() >= cap || (bytes > max_bytes && !out.is_empty()) {
                        return Some(Page { messages: out, high: cursor, truncated: true });
                    }
                    out.push((**msg).clone());
                }
                out
            }
            _ => return None,
        };
        Some(Page { messages, high: cursor, truncated: false })
    }
}

struct RoomTask {
    room: String,
    archive: Arc<dyn Archive>,
    broker: Arc<dyn Broker>,
    announcer: Announcer,
    presence: Presence,
    /// A presence tick is due.
    tick_armed: bool,
    /// The next announcement carries this gateway's whole list (after a resync).
    announce_full: bool,
    /// The presence read in flight (its number), and the signals that arrived meanwhile:
    /// the read may predate them, so they are applied again on top of it.
    presence_read: Option<(u64, Vec<RoomSignal>)>,
    presence_reads: u64,
    history_page: u32,
    max_recovery: usize,
    /// Text bytes one join recovers at most: the `joined` frame must fit the member's
    /// send queue, or recovering would close it as a slow consumer.
    recovery_bytes: usize,
    commands: mpsc::WeakUnboundedSender<Command>,
    members: HashMap<MemberId, Member>,
    /// Every seq up to here is delivered (or sealed); `None` until the first load.
    cursor: Option<u64>,
    /// Deliveries that arrived ahead of a missing seq.
    pending: BTreeMap<u64, Arc<ChatMessage>>,
    gap_since: Option<Instant>,
    gap_timer: bool,
    /// A catch-up was asked for before the first load set the cursor.
    catch_up_wanted: bool,
    /// The room's first read is running.
    room_loading: bool,
    tail: Tail,
    /// The room's subscription was confirmed before: a later confirmation follows an outage.
    was_live: bool,
    /// Seqs removed by moderation lately: a delivery or a history read that predates the
    /// removal is shown as removed (bounded by [`REMEMBERED_DELETIONS`]).
    deleted: BTreeMap<u64, ()>,
}

impl RoomTask {
    fn new(room: &str, rooms: &Rooms, commands: mpsc::WeakUnboundedSender<Command>) -> Self {
        let limits = &rooms.limits;
        Self {
            room: room.to_owned(),
            archive: rooms.archive.clone(),
            broker: rooms.broker.clone(),
            announcer: rooms.announcer.clone(),
            presence: Presence::new(rooms.presence.clone()),
            tick_armed: false,
            announce_full: false,
            presence_read: None,
            presence_reads: 0,
            history_page: limits.history_page,
            max_recovery: limits.max_recovery,
            recovery_bytes: limits.send_queue_bytes / 2,
            commands,
            members: HashMap::new(),
            cursor: None,
            pending: BTreeMap::new(),
            gap_since: None,
            gap_timer: false,
            catch_up_wanted: false,
            room_loading: false,
            tail: Tail::default(),
            was_live: false,
            deleted: BTreeMap::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        self.enter_directory();
        while let Some(command) = rx.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Join { member, user, sink, since } => {
                if let Some(user) = &user {
                    self.presence.join(user);
                    self.arm_tick();
                }
                self.members.insert(member, Member { sink, user, last: None, held: Vec::new(), waiting: Some(since) });
                match self.cursor {
                    Some(_) => self.serve(member),
                    None => self.load_room(Duration::ZERO),
                }
            }
            Command::Leave { member } => {
                if let Some(user) = self.members.remove(&member).and_then(|m| m.user) {
                    self.presence.leave(&user);
                    self.arm_tick();
                }
            }
            Command::Deliver(msg) => self.accept(msg),
            Command::RoomLoaded { result } => self.room_loaded(result),
            Command::Loaded { member, since, result } => self.loaded(member, since, result),
            Command::Fill { result, more } => match result {
                Ok(messages) => {
                    for msg in messages {
                        self.accept(Arc::new(msg));
                    }
                    if more {
                        self.catch_up(Duration::ZERO);
                    }
                }
                Err(err) => {
                    tracing::warn!(room = %self.room, %err, "store read for a room failed; retrying");
                    metrics::counter!("roomcast_gateway_gap_fills_total", "result" => "error").increment(1);
                    self.catch_up(RETRY_AFTER);
                }
            },
            Command::CatchUp => {
                // The subscription is (again) live: what the broker holds is current. Once it
                // was down, a removal signalled meanwhile is in the store only: joins read
                // the store until the tail fills again.
                if std::mem::replace(&mut self.was_live, true) {
                    self.tail = Tail::default();
                }
                self.load_presence();
                match self.cursor {
                    None => self.catch_up_wanted = true,
                    Some(_) => self.catch_up(Duration::ZERO),
                }
            }
            Command::GapCheck => {
                self.gap_timer = false;
                self.check_gap();
            }
            Command::Signal(RoomSignal { kind: Some(room_signal::Kind::Deleted(deleted)), .. }) => {
                self.remove(deleted.seq, &deleted.id);
            }
            // This gateway's own presence and typing come back through the broker: known.
            Command::Signal(signal) if signal.gateway == self.presence.gateway() => {}
            Command::Signal(signal) => match &signal.kind {
                Some(room_signal::Kind::Presence(change)) => {
                    self.presence.apply(&signal.gateway, change);
                    if let Some((_, meanwhile)) = &mut self.presence_read {
                        meanwhile.push(signal);
                    }
                    self.arm_tick();
                }
                Some(room_signal::Kind::Typing(user)) => self.typing(user.clone(), false),
                Some(room_signal::Kind::Kick(_) | room_signal::Kind::Deleted(_)) | None => {}
            },
            Command::Typing { user } => self.typing(user, true),
            Command::Presence(reply) => {
                let _ = reply.send(self.presence.snapshot());
            }
            Command::PresenceLoaded { read, attempt, result } => self.presence_loaded(read, attempt, result),
            Command::Gateways(live) => {
                self.presence.keep(&live);
                self.arm_tick();
            }
            Command::PresenceTick => self.presence_tick(),
            Command::Reannounce => {
                self.announce_full = true;
                self.arm_tick();
            }
        }
    }

    /// A room with members is active: it enters the directory as it starts here, not only
    /// at the next heartbeat, which a short visit could miss.
    fn enter_directory(&self) {
        if !fanout::is_listed(&self.room) {
            return;
        }
        let (broker, room) = (self.broker.clone(), self.room.clone());
        tokio::spawn(async move {
            let touch = RoomTouch { room: room.clone(), ..Default::default() };
            if let Err(err) = broker.touch(&[touch]).await {
                presence_failed("announce");
                tracing::debug!(%err, room, "cannot mark the room active in the directory");
            }
        });
    }

    /// Reads the other gateways' users from the broker, and announces this gateway's
    /// whole list at the next tick: the broker may have lost them (a Redis restart).
    fn load_presence(&mut self) {
        self.read_presence(0, Duration::ZERO);
        self.announce_full = true;
        self.arm_tick();
    }

    fn read_presence(&mut self, attempt: u32, delay: Duration) {
        self.presence_reads += 1;
        let read = self.presence_reads;
        let meanwhile = self.presence_read.take().map(|(_, signals)| signals).unwrap_or_default();
        self.presence_read = Some((read, meanwhile));
        let (broker, room) = (self.broker.clone(), self.room.clone());
        self.spawn(
            delay,
            async move { Command::PresenceLoaded { read, attempt, result: broker.presence(&room).await } },
        );
    }

    /// A presence read landed: the latest read replaces what is known of the other
    /// gateways, then the signals that came meanwhile are applied again. A failed read is
    /// retried, a few times, with backoff.
    fn presence_loaded(&mut self, read: u64, attempt: u32, result: Result<Vec<PresenceEntry>, BrokerError>) {
        if self.presence_read.as_ref().is_none_or(|(latest, _)| *latest != read) {
            return;
        }
        match result {
            Ok(entries) => {
                let meanwhile = self.presence_read.take().map(|(_, signals)| signals).unwrap_or_default();
                self.presence.load(&entries);
                for signal in meanwhile {
                    if let Some(room_signal::Kind::Presence(change)) = &signal.kind {
                        self.presence.apply(&signal.gateway, change);
                    }
                }
                self.arm_tick();
            }
            Err(err) => {
                presence_failed("read");
                tracing::debug!(room = %self.room, %err, attempt, "cannot read the room's presence from the broker");
                if attempt + 1 < PRESENCE_READ_ATTEMPTS {
                    self.read_presence(attempt + 1, RETRY_AFTER * 2u32.pow(attempt));
                } else {
                    self.presence_read = None;
                }
            }
        }
    }

    fn arm_tick(&mut self) {
        if !self.tick_armed {
            self.tick_armed = true;
            self.spawn(TICK, async { Command::PresenceTick });
        }
    }

    /// One batch: members are told what changed, the broker what changed here.
    fn presence_tick(&mut self) {
        self.tick_armed = false;
        let (notice, again) = self.presence.tick(Instant::now());
        if let Some(notice) = notice {
            METRICS.presence_diffs.increment(1);
            self.notify(&notice, None);
        }
        let full = std::mem::take(&mut self.announce_full);
        self.announce(full);
        if again {
            self.arm_tick();
        }
    }

    fn announce(&mut self, full: bool) {
        // Closed here: its users' leave is already queued (`Rooms::leave`).
        if self.commands.upgrade().is_none() {
            return;
        }
        if let Some(change) = self.presence.announcement(full) {
            self.announcer.send(RoomSignal {
                room: self.room.clone(),
                gateway: self.presence.gateway().to_owned(),
                kind: Some(room_signal::Kind::Presence(change)),
            });
        }
    }

    /// Relays `user`'s typing to the members of other users, at most once a second;
    /// a signal from a member here also goes to the other gateways.
    fn typing(&mut self, user: String, local: bool) {
        if !self.presence.typing(&user, Instant::now()) {
            METRICS.typing_dropped.increment(1);
            return;
        }
        METRICS.typing_relayed.increment(1);
        self.notify(&Notice::Typing { user: user.clone() }, Some(&user));
        if local {
            self.announcer.send(RoomSignal {
                room: self.room.clone(),
                gateway: self.presence.gateway().to_owned(),
                kind: Some(room_signal::Kind::Typing(user)),
            });
        }
    }

    /// Tells every member whose join is complete, except `except`'s connections.
    fn notify(&self, notice: &Notice, except: Option<&str>) {
        let frame = Utf8Bytes::from(notice_frame(&self.room, notice));
        for member in self.members.values() {
            if member.last.is_some() && (except.is_none() || member.user.as_deref() != except) {
                member.sink.notify(&self.room, notice, &frame);
            }
        }
    }

    /// Runs `work` off the room task and sends its result back as a command.
    fn spawn<F>(&self, delay: Duration, work: F)
    where
        F: std::future::Future<Output = Command> + Send + 'static,
    {
        let commands = self.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let command = work.await;
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(command);
            }
        });
    }

    /// The room's first read, once, whoever joins while it runs.
    fn load_room(&mut self, delay: Duration) {
        if self.room_loading {
            return;
        }
        self.room_loading = true;
        let (archive, room, page) = (self.archive.clone(), self.room.clone(), self.history_page);
        METRICS.room_loads.increment(1);
        self.spawn(delay, async move {
            let result = async {
                reads("room_load", 2);
                let high = archive.max_seq(&room).await?;
                let limit = page.max(TAIL_MESSAGES as u32).min(MAX_PAGE);
                let query = HistoryQuery { room: room.clone(), before: None, after: None, limit };
                Ok(Page { messages: archive.history(query).await?, high, truncated: false })
            }
            .await;
            Command::RoomLoaded { result }
        });
    }

    fn room_loaded(&mut self, result: Result<Page, StoreError>) {
        self.room_loading = false;
        let page = match result {
            Ok(page) => self.removed_in(page),
            Err(err) => {
                let message = format!("cannot load room history yet ({err}); retrying");
                for member in self.members.values().filter(|m| m.waiting.is_some()) {
                    member.sink.unavailable(&self.room, &message);
                }
                self.load_room(RETRY_AFTER);
                return;
            }
        };
        let cursor = page.high.max(page.messages.last().map_or(0, |m| m.seq));
        self.cursor = Some(cursor);
        self.tail = Tail::seed(&page.messages, cursor);
        self.drain();
        let waiting: Vec<MemberId> =
            self.members.iter().filter(|(_, m)| m.waiting.is_some()).map(|(id, _)| *id).collect();
        for member in waiting {
            self.serve(member);
        }
        if std::mem::take(&mut self.catch_up_wanted) {
            self.catch_up(Duration::ZERO);
        }
    }

    /// Answers a join from the tail when it holds what the member is owed, else from the store.
    fn serve(&mut self, id: MemberId) {
        let (Some(cursor), Some(member)) = (self.cursor, self.members.get_mut(&id)) else {
            return;
        };
        let Some(since) = member.waiting.take() else {
            return;
        };
        let page = self.history_page as usize;
        match self.tail.serve(since, cursor, page, self.max_recovery, self.recovery_bytes) {
            Some(page) => {
                METRICS.joins_from_memory.increment(1);
                self.loaded(id, since, Ok(page));
            }
            None => {
                METRICS.joins_from_store.increment(1);
                self.load(id, since, Duration::ZERO);
            }
        }
    }

    /// One member's history from the store: its `since` is older than the tail.
    fn load(&self, member: MemberId, since: Option<u64>, delay: Duration) {
        let (archive, room) = (self.archive.clone(), self.room.clone());
        let (page, cap, bytes) = (self.history_page, self.max_recovery, self.recovery_bytes);
        self.spawn(delay, async move {
            let result = async {
                reads("join", 1);
                let high = archive.max_seq(&room).await?;
                match since {
                    Some(after) => {
                        let (messages, truncated) =
                            read_after(archive.as_ref(), &room, after, cap, bytes, "join").await?;
                        Ok(Page { messages, high, truncated })
                    }
                    None => {
                        reads("join", 1);
                        let query = HistoryQuery { room: room.clone(), before: None, after: None, limit: page };
                        Ok(Page { messages: archive.history(query).await?, high, truncated: false })
                    }
                }
            }
            .await;
            Command::Loaded { member, since, result }
        });
    }

    /// `page` with the messages removed since it was read shown as removed.
    fn removed_in(&self, mut page: Page) -> Page {
        for msg in page.messages.iter_mut().filter(|m| !m.tombstone && self.deleted.contains_key(&m.seq)) {
            *msg = removed(msg);
        }
        page
    }

    fn loaded(&mut self, id: MemberId, since: Option<u64>, result: Result<Page, StoreError>) {
        let result = result.map(|page| self.removed_in(page));
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let page = match result {
            Ok(page) => page,
            Err(err) => {
                member.sink.unavailable(&self.room, &format!("cannot load room history yet ({err}); retrying"));
                self.load(id, since, RETRY_AFTER);
                return;
            }
        };
        let page_high = page.messages.last().map_or(0, |m| m.seq);
        let last = if page.truncated { page_high } else { page_high.max(page.high).max(since.unwrap_or(0)) };
        let presence = self.presence.snapshot_for(member.user.as_deref());
        member.sink.joined(&self.room, &page.messages, page.truncated, &presence);
        member.last = Some(last);
        for msg in std::mem::take(&mut member.held) {
            if msg.seq > last && !msg.tombstone {
                member.sink.deliver(&msg, &frame(&msg));
                member.last = Some(msg.seq);
            }
        }
    }

    /// Takes one delivery (live, or read from the store) into the room's order.
    fn accept(&mut self, msg: Arc<ChatMessage>) {
        if self.cursor.is_some_and(|cursor| msg.seq <= cursor) {
            return;
        }
        let msg = self.as_removed(msg);
        self.pending.insert(msg.seq, msg);
        self.drain();
    }

    /// `msg`, or its tombstone if moderation removed it since it was read or published.
    fn as_removed(&self, msg: Arc<ChatMessage>) -> Arc<ChatMessage> {
        if !msg.tombstone && self.deleted.contains_key(&msg.seq) {
            Arc::new(removed(&msg))
        } else {
            msg
        }
    }

    /// Moderation removed message `seq` (`id`): whatever holds it here (the tail, the
    /// pending deliveries, what loading members wait for) holds its tombstone from now on,
    /// and the members that were sent it are told (`deleted`), once.
    fn remove(&mut self, seq: u64, id: &str) {
        if self.deleted.insert(seq, ()).is_some() {
            return;
        }
        while self.deleted.len() > REMEMBERED_DELETIONS {
            self.deleted.pop_first();
        }
        if let Some(msg) = self.pending.remove(&seq) {
            self.pending.insert(seq, self.as_removed(msg));
        }
        self.tail.remove(seq);
        for member in self.members.values_mut() {
            for held in member.held.iter_mut().filter(|m| m.seq == seq && !m.tombstone) {
                *held = Arc::new(removed(held));
            }
        }
        if self.cursor.is_none_or(|cursor| seq > cursor) {
            return; // not delivered here yet: it will be, as its tombstone
        }
        let tombstone = ChatMessage {
            room: self.room.clone(),
            seq,
            id: id.to_owned(),
            tombstone: true,
            deleted: true,
            ..Default::default()
        };
        let frame = Utf8Bytes::from(ServerFrame::Deleted { room: &self.room, seq, id }.to_json());
        for member in self.members.values().filter(|m| m.last.is_some_and(|last| last >= seq)) {
            member.sink.deleted(&tombstone, &frame);
        }
    }

    /// Delivers pending messages while they follow the cursor without a hole.
    fn drain(&mut self) {
        let Some(mut cursor) = self.cursor else {
            return;
        };
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() <= cursor {
                entry.remove();
                continue;
            }
            if *entry.key() != cursor + 1 {
                break;
            }
            let msg = entry.remove();
            cursor = msg.seq;
            self.cursor = Some(cursor);
            self.broadcast(&msg);
            self.tail.push(msg);
        }
        if self.pending.is_empty() {
            self.gap_since = None;
        } else {
            self.gap_since.get_or_insert_with(Instant::now);
            self.arm_gap_timer(GAP_TIMEOUT);
        }
    }

    fn broadcast(&mut self, msg: &Arc<ChatMessage>) {
        if msg.tombstone {
            return;
        }
        let frame = frame(msg);
        let now_ms = now_millis();
        METRICS.delivery_latency.record((now_ms - msg.ts).max(0) as f64 / 1000.0);
        let mut delivered = 0;
        for member in self.members.values_mut() {
            match member.last {
                None => member.held.push(msg.clone()),
                Some(last) if msg.seq > last => {
                    member.sink.deliver(msg, &frame);
                    member.last = Some(msg.seq);
                    delivered += 1;
                }
                Some(_) => {}
            }
        }
        METRICS.deliveries.increment(delivered);
    }

    fn arm_gap_timer(&mut self, after: Duration) {
        if self.gap_timer {
            return;
        }
        self.gap_timer = true;
        self.spawn(after, async { Command::GapCheck });
    }

    fn check_gap(&mut self) {
        let (Some(cursor), Some(since), Some((&first, _))) =
            (self.cursor, self.gap_since, self.pending.first_key_value())
        else {
            return;
        };
        let waited = since.elapsed();
        if waited < GAP_TIMEOUT {
            self.arm_gap_timer(GAP_TIMEOUT - waited);
            return;
        }
        self.gap_since = Some(Instant::now());
        self.arm_gap_timer(GAP_TIMEOUT);
        let (from, to) = (cursor + 1, (first - 1).min(cursor + u64::from(MAX_PAGE)));
        tracing::info!(room = %self.room, from, to, "filling a hole in the room's order from the store");
        let (archive, room) = (self.archive.clone(), self.room.clone());
        self.spawn(Duration::ZERO, async move {
            reads("gap_fill", 1);
            let result = archive.resolve(&room, from, to).await;
            let outcome = match &result {
                Ok(msgs) if msgs.iter().any(|m| m.tombstone) => "sealed",
                Ok(_) => "filled",
                Err(_) => "error",
            };
            metrics::counter!("roomcast_gateway_gap_fills_total", "result" => outcome).increment(1);
            Command::Fill { result, more: false }
        });
    }

    fn catch_up(&self, delay: Duration) {
        let Some(cursor) = self.cursor else { return };
        let (archive, room, cap) = (self.archive.clone(), self.room.clone(), self.max_recovery);
        self.spawn(delay, async move {
            match read_after(archive.as_ref(), &room, cursor, cap, usize::MAX, "catch_up").await {
                Ok((messages, truncated)) => Command::Fill { result: Ok(messages), more: truncated },
                Err(err) => Command::Fill { result: Err(err), more: false },
            }
        });
    }
}

/// Reads everything after `after`, page by page, up to `cap` messages and `max_bytes` of
/// text (at least one message), oldest first; the flag says there is more.
async fn read_after(
    archive: &dyn Archive,
    room: &str,
    after: u64,
    cap: usize,
    max_bytes: usize,
    reason: &'static str,
) -> Result<(Vec<ChatMessage>, bool), StoreError> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    let mut from = after;
    loop {
        reads(reason, 1);
        let query = HistoryQuery { room: room.to_owned(), before: None, after: Some(from), limit: MAX_PAGE };
        let page = archive.history(query).await?;
        let full = page.len() == MAX_PAGE as usize;
        if let Some(last) = page.last() {
            from = last.seq;
        }
        messages.extend(page);
        let mut bytes = 0;
        if let Some(over) = messages.iter().position(|m| {
            bytes += wire_size(m);
            bytes > max_bytes
        }) {
            messages.truncate(over.max(1));
            return Ok((messages, true));
        }
        if !full {
            return Ok((messages, false));
        }
        if messages.len() >= cap {
            return Ok((messages, true));
        }
    }
}

/// Counts store queries made for a room, by why they were made.
fn reads(reason: &'static str, n: u64) {
    metrics::counter!("roomcast_gateway_store_reads_total", "reason" => reason).increment(n);
}

fn frame(msg: &ChatMessage) -> Utf8Bytes {
    Utf8Bytes::from(ServerFrame::Message(WireMessage::from(msg)).to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{outbox, Budget, Writer};
    use async_trait::async_trait;
    use persister::{BatcherConfig, Persister, RedbStore, Written};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn msg(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: format!("id{seq}"),
            user: "u".into(),
            text: format!("t{seq}"),
            ts: now_millis(),
            client_id: format!("c{seq}"),
            ..Default::default()
        }
    }

    /// The in-process store, counting the reads rooms make, each slowed by `delay` so that
    /// joins and live messages can race them.
    struct Counting {
        inner: Persister,
        reads: AtomicU64,
        delay: Duration,
    }

    #[async_trait]
    impl Archive for Counting {
        async fn write(&self, msg: ChatMessage) -> Result<Written, StoreError> {
            self.inner.write(msg).await
        }
        async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.history(query).await
        }
        async fn resolve(&self, room: &str, from: u64, to: u64) -> Result<Vec<ChatMessage>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.resolve(room, from, to).await
        }
        async fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.max_seq(room).await
        }
        async fn delete(&self, room: &str, seq: u64) -> Result<Option<ChatMessage>, StoreError> {
            self.inner.delete(room, seq).await
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        archive: Arc<Counting>,
        rooms: Rooms,
        next_member: MemberId,
    }

    impl Fixture {
        fn new(delay: Duration) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(RedbStore::open(dir.path()).expect("store"));
            let inner = Persister::new(store, BatcherConfig::default());
            let archive = Arc::new(Counting { inner, reads: AtomicU64::new(0), delay });
            let (interests, _interest_rx) = mpsc::unbounded_channel();
            let presence = PresenceConfig { gateway: "test".into(), list_max: 100, grace: Duration::from_secs(3) };
            let broker = Arc::new(fanout::MemoryBroker::default());
            let rooms = Rooms::new(archive.clone(), broker, interests, Limits::default(), presence);
            Fixture { _dir: dir, archive, rooms, next_member: 0 }
        }

        fn join(&mut self, since: Option<u64>) -> Writer {
            let (outbox, writer) = outbox(1 << 22, Budget::new(0), Duration::from_secs(30));
            self.next_member += 1;
            self.rooms.join("r", self.next_member, None, Arc::new(outbox), since);
            writer
        }

        async fn store(&self, seqs: std::ops::RangeInclusive<u64>) {
            for seq in seqs {
                self.archive.write(msg(seq)).await.expect("write");
            }
        }

        fn reads(&self) -> u64 {
            self.archive.reads.load(Ordering::SeqCst)
        }
    }

    async fn next_frame(writer: &mut Writer) -> serde_json::Value {
        let frame = tokio::time::timeout(Duration::from_secs(10), writer.frames.recv())
            .await
            .expect("a frame in time")
            .expect("open");
        serde_json::from_str(&frame).expect("json")
    }

    async fn next_seq(writer: &mut Writer) -> serde_json::Value {
        next_frame(writer).await
    }

    /// The seqs of a `joined` frame.
    async fn joined(writer: &mut Writer) -> Vec<u64> {
        let frame = next_frame(writer).await;
        assert_eq!(frame["type"], "joined", "{frame}");
        frame["messages"].as_array().expect("messages").iter().filter_map(|m| m["seq"].as_u64()).collect()
    }

    /// Every seq a member was sent, history and live, until `last`.
    async fn seen_until(writer: &mut Writer, last: u64) -> Vec<u64> {
        let mut seen = joined(writer).await;
        while seen.last().is_none_or(|&s| s < last) {
            let frame = next_frame(writer).await;
            seen.push(frame["seq"].as_u64().expect("a message frame"));
        }
        seen
    }

    #[tokio::test]
    async fn reorders_fills_from_the_store_and_seals_holes() {
        let mut fx = Fixture::new(Duration::ZERO);
        let mut writer = fx.join(None);
        assert_eq!(joined(&mut writer).await, Vec::<u64>::new());
        let (archive, rooms) = (&fx.archive, &fx.rooms);

        // Out of order from the broker: delivered in seq order.
        for seq in [3, 1, 2] {
            archive.write(msg(seq)).await.expect("write");
        }
        for seq in [3, 1, 2] {
            rooms.deliver(msg(seq));
        }
        for want in 1..=3 {
            assert_eq!(next_seq(&mut writer).await["seq"], want);
        }
        // 4 is stored but its publish was lost; 5 arrives: 4 is read from the store.
        archive.write(msg(4)).await.expect("write");
        archive.write(msg(5)).await.expect("write");
        rooms.deliver(msg(5));
        assert_eq!(next_seq(&mut writer).await["seq"], 4);
        assert_eq!(next_seq(&mut writer).await["seq"], 5);
        // 6 was never stored: it is sealed, and 7 is delivered after it.
        archive.write(msg(7)).await.expect("write");
        rooms.deliver(msg(7));
        assert_eq!(next_seq(&mut writer).await["seq"], 7);
        let sealed = archive.resolve("r", 6, 6).await.expect("resolve");
        assert!(sealed[0].tombstone, "the hole is sealed in the store");
        // A late copy of 2 is not delivered again.
        rooms.deliver(msg(2));
        archive.write(msg(8)).await.expect("write");
        rooms.deliver(msg(8));
        assert_eq!(next_seq(&mut writer).await["seq"], 8);
    }

    #[tokio::test]
    async fn concurrent_joins_share_one_store_read_and_later_ones_read_nothing() {
        let mut fx = Fixture::new(Duration::from_millis(200));
        fx.store(1..=80).await;
        // 30 members join while the room's first read is slowed down.
        let mut early: Vec<Writer> = (0..30).map(|_| fx.join(None)).collect();
        for writer in &mut early {
            assert_eq!(joined(writer).await, (31..=80).collect::<Vec<_>>(), "the newest 50 messages");
        }
        assert_eq!(fx.reads(), 2, "one max_seq and one history read for all 30 joins");
        let mut late = fx.join(None);
        assert_eq!(joined(&mut late).await, (31..=80).collect::<Vec<_>>());
        let mut recovering = fx.join(Some(70));
        assert_eq!(joined(&mut recovering).await, (71..=80).collect::<Vec<_>>(), "since inside the tail");
        let mut current = fx.join(Some(80));
        assert_eq!(joined(&mut current).await, Vec::<u64>::new());
        assert_eq!(fx.reads(), 2, "joins after the first read come from memory");
    }

    #[tokio::test]
    async fn a_join_racing_live_messages_gets_each_once_in_order() {
        let mut fx = Fixture::new(Duration::from_millis(100));
        fx.store(1..=5).await;
        let mut first = fx.join(None);
        // Live messages arrive while the first read is in flight, before and after it.
        for seq in 6..=9 {
            fx.archive.write(msg(seq)).await.expect("write");
            fx.rooms.deliver(msg(seq));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let mut second = fx.join(Some(3));
        for seq in 10..=12 {
            fx.archive.write(msg(seq)).await.expect("write");
            fx.rooms.deliver(msg(seq));
        }
        assert_eq!(seen_until(&mut first, 12).await, (1..=12).collect::<Vec<_>>());
        assert_eq!(seen_until(&mut second, 12).await, (4..=12).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_tail_that_overflows_sends_older_recoveries_to_the_store() {
        let mut fx = Fixture::new(Duration::ZERO);
        let mut member = fx.join(None);
        assert_eq!(joined(&mut member).await, Vec::<u64>::new());
        let last = TAIL_MESSAGES as u64 + 20;
        fx.store(1..=last).await;
        for seq in 1..=last {
            fx.rooms.deliver(msg(seq));
        }
        for want in 1..=last {
            assert_eq!(next_seq(&mut member).await["seq"], want);
        }
        let before = fx.reads();
        let mut recent = fx.join(Some(last - 10));
        assert_eq!(joined(&mut recent).await, (last - 9..=last).collect::<Vec<_>>());
        assert_eq!(fx.reads(), before, "inside the tail: no store read");
        let mut old = fx.join(Some(5));
        assert_eq!(joined(&mut old).await, (6..=last).collect::<Vec<_>>(), "older than the tail: from the store");
        assert!(fx.reads() > before, "the store answered the old recovery");
    }

    #[tokio::test]
    async fn a_resync_after_a_broker_reconnect_keeps_the_tail_whole() {
        let mut fx = Fixture::new(Duration::ZERO);
        let mut member = fx.join(None);
        assert_eq!(joined(&mut member).await, Vec::<u64>::new());
        fx.store(1..=3).await;
        for seq in 1..=3 {
            fx.rooms.deliver(msg(seq));
        }
        // The broker connection dropped: 4..=6 were stored but never published here.
        fx.store(4..=6).await;
        fx.rooms.catch_up(None);
        for want in 1..=6 {
            assert_eq!(next_seq(&mut member).await["seq"], want);
        }
        let before = fx.reads();
        let mut recovering = fx.join(Some(2));
        assert_eq!(joined(&mut recovering).await, (3..=6).collect::<Vec<_>>());
        assert_eq!(fx.reads(), before, "the caught-up messages are in the tail");
    }

    #[test]
    fn the_tail_is_bounded_and_serves_only_what_it_holds() {
        let page: Vec<ChatMessage> = (1..=10).map(msg).collect();
        let tail = Tail::seed(&page, 10);
        assert_eq!(tail.messages.len(), 10);
        let served = |since| {
            tail.serve(since, 10, 4, 100, usize::MAX).map(|p| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>())
        };
        assert_eq!(served(None), Some(vec![7, 8, 9, 10]));
        assert_eq!(served(Some(0)), Some((1..=10).collect()));
        assert_eq!(served(Some(10)), Some(vec![]));
        // A seed with a hole keeps only the run that ends at the cursor.
        let holed: Vec<ChatMessage> = [1, 2, 4, 5].into_iter().map(msg).collect();
        let tail = Tail::seed(&holed, 5);
        assert_eq!(tail.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert!(tail.serve(Some(2), 5, 50, 100, usize::MAX).is_none(), "3 is not in memory");
        assert!(tail.serve(None, 5, 50, 100, usize::MAX).is_none(), "a page of 50 is not in memory");
        // The cap and the byte budget truncate like a store read.
        let tail = Tail::seed(&page, 10);
        let capped = tail.serve(Some(0), 10, 50, 3, usize::MAX).expect("served");
        assert!(capped.truncated && capped.messages.len() == 3);
        let small = tail.serve(Some(0), 10, 50, 100, 1).expect("served");
        assert!(small.truncated && small.messages.len() == 1, "at least one message");
        // Count bound.
        let mut tail = Tail::default();
        for seq in 1..=(TAIL_MESSAGES as u64 + 5) {
            tail.push(Arc::new(msg(seq)));
        }
        assert_eq!(tail.messages.len(), TAIL_MESSAGES);
        assert_eq!(tail.messages.front().map(|m| m.seq), Some(6));
    }
}
