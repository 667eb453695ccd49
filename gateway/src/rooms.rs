//! The rooms that have members on this gateway, one task each.
//!
//! A room task puts the broker's deliveries back into seq order, hands each message to
//! every member exactly once, and fills holes from the store: a seq that stays missing
//! for [`GAP_TIMEOUT`] is read from the store, and sealed there if nobody stored it.
//! Joining members are registered before their history is read, so every message is
//! either in that history or delivered live after it, and per-member `last` seqs drop
//! the overlap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use persister::{Archive, HistoryQuery, StoreError, MAX_PAGE};
use roomcast_proto::{ChatMessage, Interest};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::limits::Limits;
use crate::metrics::METRICS;
use crate::protocol::{wire_size, ServerFrame, WireMessage};

/// How long a missing seq may hold up later ones before the store is asked for it.
const GAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before retrying a store read that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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

/// The registry: which rooms exist here, and how many members each has.
pub struct Rooms {
    map: Mutex<HashMap<String, Entry>>,
    archive: Arc<dyn Archive>,
    interests: mpsc::UnboundedSender<Interest>,
    limits: Limits,
}

struct Entry {
    commands: mpsc::UnboundedSender<Command>,
    members: usize,
}

enum Command {
    Join { member: MemberId, sink: Arc<dyn Sink>, since: Option<u64> },
    Leave { member: MemberId },
    Deliver(Arc<ChatMessage>),
    Loaded { member: MemberId, since: Option<u64>, result: Result<Page, StoreError> },
    Fill { result: Result<Page, StoreError> },
    CatchUp,
    GapCheck,
}

/// A store read: messages oldest first, the store's highest seq before the read, and
/// whether more remained than one read takes.
struct Page {
    messages: Vec<ChatMessage>,
    high: u64,
    truncated: bool,
}

impl Rooms {
    pub fn new(archive: Arc<dyn Archive>, interests: mpsc::UnboundedSender<Interest>, limits: Limits) -> Self {
        Self { map: Mutex::new(HashMap::new()), archive, interests, limits }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn join(&self, room: &str, member: MemberId, sink: Arc<dyn Sink>, since: Option<u64>) {
        let mut map = self.map();
        let entry = map.entry(room.to_owned()).or_insert_with(|| {
            let (commands, rx) = mpsc::unbounded_channel();
            let task = RoomTask::new(room, self.archive.clone(), &self.limits, commands.downgrade());
            tokio::spawn(task.run(rx));
            let _ = self.interests.send(Interest { room: room.to_owned(), subscribe: true });
            Entry { commands, members: 0 }
        });
        entry.members += 1;
        let _ = entry.commands.send(Command::Join { member, sink, since });
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
            // Dropping the sender ends the room task once its queue is done.
            map.remove(room);
            let _ = self.interests.send(Interest { room: room.to_owned(), subscribe: false });
        }
        metrics::gauge!("roomcast_gateway_rooms").set(map.len() as f64);
    }

    pub fn deliver(&self, msg: ChatMessage) {
        if let Some(entry) = self.map().get(&msg.room) {
            let _ = entry.commands.send(Command::Deliver(Arc::new(msg)));
        }
    }

    /// Re-reads one room (`Some`) or every room from the store: the broker may have
    /// dropped messages.
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
}

struct Member {
    sink: Arc<dyn Sink>,
    /// Highest seq this member has been sent; `None` while its history loads.
    last: Option<u64>,
    /// Live messages that arrived while the history loaded.
    held: Vec<Arc<ChatMessage>>,
}

struct RoomTask {
    room: String,
    archive: Arc<dyn Archive>,
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
}

impl RoomTask {
    fn new(
        room: &str,
        archive: Arc<dyn Archive>,
        limits: &Limits,
        commands: mpsc::WeakUnboundedSender<Command>,
    ) -> Self {
        Self {
            room: room.to_owned(),
            archive,
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
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = rx.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Join { member, sink, since } => {
                self.members.insert(member, Member { sink, last: None, held: Vec::new() });
                self.load(member, since, Duration::ZERO);
            }
            Command::Leave { member } => {
                self.members.remove(&member);
            }
            Command::Deliver(msg) => self.accept(msg),
            Command::Loaded { member, since, result } => self.loaded(member, since, result),
            Command::Fill { result } => match result {
                Ok(page) => {
                    let more = page.truncated;
                    for msg in page.messages {
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
            Command::CatchUp if self.cursor.is_none() => self.catch_up_wanted = true,
            Command::CatchUp => self.catch_up(Duration::ZERO),
            Command::GapCheck => {
                self.gap_timer = false;
                self.check_gap();
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

    fn load(&self, member: MemberId, since: Option<u64>, delay: Duration) {
        let (archive, room) = (self.archive.clone(), self.room.clone());
        let (page, cap, bytes) = (self.history_page, self.max_recovery, self.recovery_bytes);
        self.spawn(delay, async move {
            let result = async {
                let high = archive.max_seq(&room).await?;
                match since {
                    Some(after) => read_after(archive.as_ref(), &room, after, high, cap, bytes).await,
                    None => {
                        let query = HistoryQuery { room: room.clone(), before: None, after: None, limit: page };
                        Ok(Page { messages: archive.history(query).await?, high, truncated: false })
                    }
                }
            }
            .await;
            Command::Loaded { member, since, result }
        });
    }

    fn loaded(&mut self, id: MemberId, since: Option<u64>, result: Result<Page, StoreError>) {
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
        member.sink.joined(&self.room, &page.messages, page.truncated);
        member.last = Some(last);
        for msg in std::mem::take(&mut member.held) {
            if msg.seq > last && !msg.tombstone {
                member.sink.deliver(&msg, &frame(&msg));
                member.last = Some(msg.seq);
            }
        }
        if self.cursor.is_none() {
            self.cursor = Some(page.high.max(page_high));
            self.drain();
            if std::mem::take(&mut self.catch_up_wanted) {
                self.catch_up(Duration::ZERO);
            }
        }
    }

    /// Takes one delivery (live, or read from the store) into the room's order.
    fn accept(&mut self, msg: Arc<ChatMessage>) {
        if self.cursor.is_some_and(|cursor| msg.seq <= cursor) {
            return;
        }
        self.pending.insert(msg.seq, msg);
        self.drain();
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
            let result = archive.resolve(&room, from, to).await;
            let outcome = match &result {
                Ok(msgs) if msgs.iter().any(|m| m.tombstone) => "sealed",
                Ok(_) => "filled",
                Err(_) => "error",
            };
            metrics::counter!("roomcast_gateway_gap_fills_total", "result" => outcome).increment(1);
            Command::Fill { result: result.map(|messages| Page { messages, high: 0, truncated: false }) }
        });
    }

    fn catch_up(&self, delay: Duration) {
        let Some(cursor) = self.cursor else { return };
        let (archive, room, cap) = (self.archive.clone(), self.room.clone(), self.max_recovery);
        self.spawn(delay, async move {
            Command::Fill { result: read_after(archive.as_ref(), &room, cursor, 0, cap, usize::MAX).await }
        });
    }
}

/// Reads everything after `after`, page by page, up to `cap` messages and `max_bytes` of
/// text (at least one message); `truncated` says there is more.
async fn read_after(
    archive: &dyn Archive,
    room: &str,
    after: u64,
    high: u64,
    cap: usize,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    let mut from = after;
    loop {
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
            return Ok(Page { messages, high, truncated: true });
        }
        if !full {
            return Ok(Page { messages, high, truncated: false });
        }
        if messages.len() >= cap {
            return Ok(Page { messages, high, truncated: true });
        }
    }
}

fn frame(msg: &ChatMessage) -> Utf8Bytes {
    Utf8Bytes::from(ServerFrame::Message(WireMessage::from(msg)).to_json())
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use persister::{BatcherConfig, Persister, RedbStore};

    fn msg(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: format!("id{seq}"),
            user: "u".into(),
            text: format!("t{seq}"),
            ts: now_millis(),
            client_id: format!("c{seq}"),
            tombstone: false,
        }
    }

    async fn next_seq(frames: &mut mpsc::UnboundedReceiver<Utf8Bytes>) -> serde_json::Value {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), frames.recv()).await.expect("a frame in time").expect("open");
        serde_json::from_str(&frame).expect("json")
    }

    #[tokio::test]
    async fn reorders_fills_from_the_store_and_seals_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(dir.path()).expect("store"));
        let archive = Arc::new(Persister::new(store, BatcherConfig::default()));
        let (interests, _interest_rx) = mpsc::unbounded_channel();
        let rooms = Rooms::new(archive.clone(), interests, Limits::default());
        let (outbox, mut writer) = outbox(1 << 20, Duration::from_secs(30));

        rooms.join("r", 1, Arc::new(outbox), None);
        let joined = next_seq(&mut writer.frames).await;
        assert_eq!(joined["type"], "joined");

        // Out of order from the broker: delivered in seq order.
        for seq in [3, 1, 2] {
            archive.write(msg(seq)).await.expect("write");
        }
        for seq in [3, 1, 2] {
            rooms.deliver(msg(seq));
        }
        for want in 1..=3 {
            assert_eq!(next_seq(&mut writer.frames).await["seq"], want);
        }
        // 4 is stored but its publish was lost; 5 arrives: 4 is read from the store.
        archive.write(msg(4)).await.expect("write");
        archive.write(msg(5)).await.expect("write");
        rooms.deliver(msg(5));
        assert_eq!(next_seq(&mut writer.frames).await["seq"], 4);
        assert_eq!(next_seq(&mut writer.frames).await["seq"], 5);
        // 6 was never stored: it is sealed, and 7 is delivered after it.
        archive.write(msg(7)).await.expect("write");
        rooms.deliver(msg(7));
        assert_eq!(next_seq(&mut writer.frames).await["seq"], 7);
        let sealed = archive.resolve("r", 6, 6).await.expect("resolve");
        assert!(sealed[0].tombstone, "the hole is sealed in the store");
        // A late copy of 2 is not delivered again.
        rooms.deliver(msg(2));
        archive.write(msg(8)).await.expect("write");
        rooms.deliver(msg(8));
        assert_eq!(next_seq(&mut writer.frames).await["seq"], 8);
    }
}
