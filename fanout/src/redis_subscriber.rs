//! The Redis broker's subscriptions: the rooms some link wants, subscribed on Redis, and
//! what arrives on them routed to the links.
//!
//! Whatever was published while a subscription was down is missed; the links are told
//! so, and their gateways re-read those rooms from the store. One Redis: the pub/sub
//! connection is reconnected and every room resubscribed, then every link resyncs. A
//! Redis Cluster: every confirmation of a room's subscription (this fanout's, or the
//! cluster client's after a failover) makes that room's links catch up; when a node's
//! connection drops or a primary stops answering every room is subscribed again until
//! its shard answers, and a room whose slot moved away is subscribed again on its new
//! shard.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backoff::BackoffBuilder;
use futures::StreamExt;
use prost::Message as _;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, Value};
use roomcast_proto::{event::Kind, ChatMessage, Event, Resync, RoomSignal};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::redis_keys::Keys;
use crate::redis_target::RedisTarget;
use crate::registry::{LinkId, Registry};

const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Subscribes in flight at once while rooms are subscribed again.
const RETRY_CONCURRENCY: usize = 64;
/// How often the cluster subscriber checks that every primary answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Failing subscriptions are reported again after this long.
const STILL_FAILING: Duration = Duration::from_secs(30);
/// After subscriptions came back from a loss, every room is subscribed once more this
/// much later: a failover can still be moving slots and connections when the first
/// subscribes succeed, and a subscription made then may deliver nothing (seen with a
/// primary killed: a healthy shard's room went silent on one fanout). Subscribing again
/// is harmless, and its confirmation makes the gateways catch the room up.
const SETTLE_AFTER: Duration = Duration::from_secs(5);
/// Subscriptions failing this long get a new subscriber connection: the cluster client
/// can stay wedged after a failover, every subscribe failing for as long as it runs (seen
/// with a primary killed: 25 s, until the test ended), and a new one reads the slots anew.
const RENEW_AFTER: Duration = Duration::from_secs(5);

pub struct Shared {
    registry: Mutex<Registry>,
    pub commands: mpsc::UnboundedSender<Command>,
}

pub enum Command {
    Subscribe { room: String, link: LinkId },
    Unsubscribe { room: String },
}

impl Shared {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Command>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        (Arc::new(Self { registry: Mutex::new(Registry::default()), commands }), command_rx)
    }

    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes one published payload by its channel.
    fn route(&self, channel: &str, payload: &[u8]) {
        let decoded = if Keys::is_signal(channel) {
            RoomSignal::decode(payload).map(|signal| self.registry().signal(&signal))
        } else {
            ChatMessage::decode(payload).map(|chat| self.registry().deliver(&chat))
        };
        if let Err(err) = decoded {
            tracing::warn!(%err, channel, "undecodable message on Redis channel");
        }
    }

    /// Tells every link of `room` that its subscription is (again) in place, which makes
    /// their gateways catch the room up from the store.
    fn subscribed(&self, room: &str) {
        let mut registry = self.registry();
        for link in registry.subscribers(room) {
            registry.send(link, Event { kind: Some(Kind::Subscribed(room.to_owned())) });
        }
    }
}

fn up(is_up: bool) {
    metrics::gauge!("roomcast_fanout_redis_up").set(if is_up { 1.0 } else { 0.0 });
}

/// One Redis: owns the pub/sub connection for the broker's lifetime, reconnecting forever.
pub async fn single(client: redis::Client, shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let keys = Keys::new(false);
    let mut connected_before = false;
    let mut delays = backoff::reconnect().build();
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(err) => {
                up(false);
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(%err, ?delay, "Redis subscriber cannot connect; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let rooms = shared.registry().rooms();
        if let Err(err) = subscribe_all(&mut sink, keys, &rooms).await {
            let delay = delays.next().unwrap_or(Duration::from_secs(2));
            tracing::warn!(%err, ?delay, "Redis resubscribe failed; reconnecting");
            tokio::time::sleep(delay).await;
            continue;
        }
        delays = backoff::reconnect().build();
        up(true);
        if connected_before {
            metrics::counter!("roomcast_fanout_redis_reconnects_total").increment(1);
            tracing::info!(rooms = rooms.len(), "Redis subscriber reconnected; asking gateways to resync");
            shared.registry().broadcast(Kind::Resync(Resync {}));
        }
        connected_before = true;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if let Err(err) = apply(&mut sink, keys, &shared, command).await {
                        tracing::warn!(%err, "Redis subscription change failed; reconnecting");
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("Redis subscriber connection lost; reconnecting");
                        break;
                    };
                    shared.route(msg.get_channel_name(), msg.get_payload_bytes());
                }
            }
        }
        up(false);
        metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
    }
}

async fn subscribe_all(sink: &mut PubSubSink, keys: Keys, rooms: &[String]) -> redis::RedisResult<()> {
    for room in rooms {
        sink.subscribe(keys.channels(room)).await?;
    }
    Ok(())
}

async fn apply(sink: &mut PubSubSink, keys: Keys, shared: &Shared, command: Command) -> redis::RedisResult<()> {
    match command {
        Command::Subscribe { room, link } => {
            sink.subscribe(keys.channels(&room)).await?;
            shared.registry().send(link, Event { kind: Some(Kind::Subscribed(room)) });
        }
        Command::Unsubscribe { room } => {
            // A link may have asked for the room again meanwhile.
            if shared.registry().subscribers(&room).is_empty() {
                sink.unsubscribe(keys.channels(&room)).await?;
            }
        }
    }
    Ok(())
}

/// A Redis Cluster: subscription changes run in order on one task (a change waiting
/// out a failover never holds up deliveries), pushes are routed on another.
pub async fn cluster(
    target: RedisTarget,
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let (lost, lost_rx) = mpsc::unbounded_channel();
    let (renewed, renewed_rx) = mpsc::unbounded_channel();
    let subscriber = Subscriber { target, conn, renewed };
    tokio::spawn(cluster_changes(subscriber, shared.clone(), commands, lost.clone(), lost_rx));
    cluster_pushes(pushes, renewed_rx, shared, lost).await;
}

/// The subscriptions' connection, and how to replace it.
struct Subscriber {
    target: RedisTarget,
    conn: ClusterConnection,
    /// Hands the pushes task the push queue of a new connection.
    renewed: mpsc::UnboundedSender<mpsc::UnboundedReceiver<PushInfo>>,
}

impl Subscriber {
    /// A new connection in place of the wedged one, whose subscriptions end with it; the
    /// caller subscribes every room on the new one.
    fn renew(&mut self) -> bool {
        match self.target.cluster_subscriber() {
            Ok((conn, pushes)) => {
                self.conn = conn;
                let _ = self.renewed.send(pushes);
                metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "renew").increment(1);
                tracing::warn!("Redis Cluster subscriptions failing for {RENEW_AFTER:?}: subscribing every room on a new connection");
                true
            }
            Err(err) => {
                tracing::warn!(%err, "cannot make a new Redis Cluster subscriber connection");
                false
            }
        }
    }
}

/// Subscriptions that may be gone.
enum Lost {
    /// A node's connection dropped or stopped answering; which rooms it served is not
    /// known, so every room is subscribed again.
    Every,
    /// The server dropped this room's subscription (its slot moved away).
    Room(String),
}

async fn cluster_changes(
    mut subscriber: Subscriber,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    lost_tx: mpsc::UnboundedSender<Lost>,
    mut lost: mpsc::UnboundedReceiver<Lost>,
) {
    let keys = Keys::new(true);
    // Rooms whose subscribe failed (their shard is down, or failing over): tried again
    // every second until it works.
    let mut failed: HashSet<String> = HashSet::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A node that stops answering without closing its socket sends no push: ping the
    // primaries over the subscriptions' own connections.
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut answering = true;
    // Since when subscriptions were lost (they count as one reconnect once all are back),
    // and when their failing was last reported.
    let mut lost_since: Option<tokio::time::Instant> = None;
    let mut reported = tokio::time::Instant::now();
    // Once subscriptions are back after a loss, every room is subscribed once more when
    // the cluster has settled (see SETTLE_AFTER).
    let mut settle_at: Option<tokio::time::Instant> = None;
    // Since when some room's subscription has failed without a break, and when the
    // connection was last renewed.
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Subscribe { room, .. }) => {
                    // Redis's confirmation push sends `Subscribed` (cluster_pushes).
                    if let Err(err) = subscriber.conn.ssubscribe(&keys.channels(&room)).await {
                        failing(&room, &err);
                        failed.insert(room);
                    }
                }
                Some(Command::Unsubscribe { room }) => {
                    if shared.registry().subscribers(&room).is_empty() {
                        failed.remove(&room);
                        if let Err(err) = subscriber.conn.sunsubscribe(&keys.channels(&room)).await {
                            metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
                            tracing::warn!(%err, room, "Redis Cluster unsubscribe failed; the channel stays subscribed");
                        }
                    }
                }
                None => return,
            },
            Some(lost) = lost.recv() => {
                lost_since.get_or_insert_with(tokio::time::Instant::now);
                match lost {
                    Lost::Every => failed.extend(shared.registry().rooms()),
                    Lost::Room(room) => { failed.insert(room); }
                }
                retry.reset_immediately();
            }
            _ = tokio::time::sleep_until(settle_at.unwrap_or_else(tokio::time::Instant::now)), if settle_at.is_some() => {
                settle_at = None;
                failed.extend(shared.registry().rooms());
                retry.reset_immediately();
            }
            _ = ping.tick() => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
                let now = subscriber.conn.route_command(redis::cmd("PING"), all).await.is_ok();
                if answering && !now {
                    tracing::warn!("a Redis Cluster primary does not answer; resubscribing every room until it works");
                    let _ = lost_tx.send(Lost::Every);
                }
                answering = now;
            }
            _ = retry.tick(), if !failed.is_empty() => {
                let rooms: Vec<String> =
                    failed.drain().filter(|room| !shared.registry().subscribers(room).is_empty()).collect();
                let attempts = futures::stream::iter(rooms).map(|room| {
                    let mut conn = subscriber.conn.clone();
                    async move {
                        let result = conn.ssubscribe(&keys.channels(&room)).await;
                        (room, result)
                    }
                });
                let results: Vec<_> = attempts.buffer_unordered(RETRY_CONCURRENCY).collect().await;
                for (room, result) in results {
                    if let Err(err) = result {
                        failing(&room, &err);
                        failed.insert(room);
                    }
                }
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if !failed.is_empty() && since.elapsed() >= RENEW_AFTER && renewed_at.elapsed() >= RENEW_AFTER {
                    renewed_at = tokio::time::Instant::now();
                    if subscriber.renew() {
                        failed.extend(shared.registry().rooms());
                        retry.reset_immediately();
                    }
                }
                if failed.is_empty() {
                    failing_since = None;
                    if let Some(since) = lost_since.take() {
                        settle_at = Some(tokio::time::Instant::now() + SETTLE_AFTER);
                        metrics::counter!("roomcast_fanout_redis_reconnects_total").increment(1);
                        tracing::info!(
                            after = ?since.elapsed(),
                            "Redis Cluster subscriptions in place again; their gateways catch up from the store"
                        );
                    }
                } else if reported.elapsed() >= STILL_FAILING {
                    reported = tokio::time::Instant::now();
                    tracing::warn!(rooms = failed.len(), "Redis Cluster subscriptions still failing; retrying every {RETRY_EVERY:?}");
                }
            }
        }
    }
}

/// Counts a failed subscribe; its room is tried again.
fn failing(room: &str, err: &redis::RedisError) {
    metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
    tracing::debug!(%err, room, "Redis Cluster subscribe failed; retrying every {RETRY_EVERY:?}");
}

async fn cluster_pushes(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    mut renewed: mpsc::UnboundedReceiver<mpsc::UnboundedReceiver<PushInfo>>,
    shared: Arc<Shared>,
    lost: mpsc::UnboundedSender<Lost>,
) {
    let keys = Keys::new(true);
    loop {
        let push = tokio::select! {
            push = pushes.recv() => push,
            fresh = renewed.recv() => match fresh {
                Some(fresh) => {
                    pushes = fresh;
                    continue;
                }
                None => return,
            },
        };
        // A replaced connection's queue ends when it is dropped; the new one's comes next.
        let Some(push) = push else {
            match renewed.recv().await {
                Some(fresh) => {
                    pushes = fresh;
                    continue;
                }
                None => return,
            }
        };
        match (push.kind, push.data.as_slice()) {
            (PushKind::SMessage, [channel, payload, ..]) => {
                if let (Some(channel), Some(payload)) = (text(channel), bytes(payload)) {
                    shared.route(channel, payload);
                }
            }
            // Redis confirms a room's subscription, whoever asked for it: this fanout, or
            // the cluster client moving it to a new primary. Messages published before it
            // were missed, so the room's gateways catch it up from the store.
            (PushKind::SSubscribe, [channel, ..]) => {
                if let Some(room) = text(channel).and_then(|channel| keys.room_of(channel)) {
                    shared.subscribed(room);
                }
            }
            // The server drops a shard channel's subscribers when its slot moves away.
            (PushKind::SUnsubscribe, [channel, ..]) => {
                let Some(room) = text(channel).and_then(|channel| keys.room_of(channel)) else { continue };
                if !shared.registry().subscribers(room).is_empty() {
                    let _ = lost.send(Lost::Room(room.to_owned()));
                }
            }
            (PushKind::Disconnection, _) => {
                up(false);
                metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
                tracing::warn!("a Redis Cluster node's connection dropped; resubscribing every room until it works");
                let _ = lost.send(Lost::Every);
            }
            _ => {}
        }
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    bytes(value).and_then(|b| std::str::from_utf8(b).ok())
}
