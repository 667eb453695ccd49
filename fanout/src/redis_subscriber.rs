//! The Redis broker's subscriptions: the rooms some link wants, subscribed on Redis, and
//! what arrives on them routed to the links.
//!
//! Whatever was published while a subscription was down is missed; the links are told
//! so, and their gateways re-read those rooms from the store. One Redis: the pub/sub
//! connection is reconnected and every room resubscribed, then every link resyncs. A
//! Redis Cluster: when a node's connection drops (it failed, or fails over) every room is
//! subscribed again, each room once its shard answers, and that room's links catch up;
//! a room whose slot moved away is subscribed again on its new shard the same way.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backoff::BackoffBuilder;
use futures::StreamExt;
use prost::Message as _;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use roomcast_proto::{event::Kind, ChatMessage, Event, Resync, RoomSignal};
use tokio::sync::mpsc;

use crate::redis_keys::Keys;
use crate::registry::{LinkId, Registry};

const RETRY_EVERY: Duration = Duration::from_secs(1);

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
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let (lost, lost_rx) = mpsc::unbounded_channel();
    tokio::spawn(cluster_changes(conn, shared.clone(), commands, lost_rx));
    cluster_pushes(pushes, shared, lost).await;
}

/// Subscriptions that may have missed messages: `None` for every room (a node's
/// connection dropped, and which rooms it served is not known), or one room.
type Lost = Option<String>;

async fn cluster_changes(
    mut conn: ClusterConnection,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut lost: mpsc::UnboundedReceiver<Lost>,
) {
    let keys = Keys::new(true);
    // Rooms whose subscribe failed (their shard is down, or failing over): tried again
    // every second; once in place, all their links catch up.
    let mut failed: HashSet<String> = HashSet::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Subscribe { room, link }) => {
                    if subscribe(&mut conn, keys, &room).await {
                        shared.registry().send(link, Event { kind: Some(Kind::Subscribed(room)) });
                    } else {
                        failed.insert(room);
                    }
                }
                Some(Command::Unsubscribe { room }) => {
                    if shared.registry().subscribers(&room).is_empty() {
                        failed.remove(&room);
                        if let Err(err) = conn.sunsubscribe(&keys.channels(&room)).await {
                            metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
                            tracing::warn!(%err, room, "Redis Cluster unsubscribe failed; the channel stays subscribed");
                        }
                    }
                }
                None => return,
            },
            Some(lost) = lost.recv() => {
                let rooms = lost.map_or_else(|| shared.registry().rooms(), |room| vec![room]);
                failed.extend(rooms);
                retry.reset_immediately();
            }
            _ = retry.tick(), if !failed.is_empty() => {
                for room in std::mem::take(&mut failed) {
                    if shared.registry().subscribers(&room).is_empty() {
                        continue;
                    }
                    if subscribe(&mut conn, keys, &room).await {
                        shared.subscribed(&room);
                    } else {
                        failed.insert(room);
                    }
                }
                if failed.is_empty() {
                    metrics::counter!("roomcast_fanout_redis_reconnects_total").increment(1);
                    tracing::info!("Redis Cluster subscriptions in place again; their gateways caught up from the store");
                }
            }
        }
    }
}

/// Subscribes a room's channels on the shard that serves them; false when it failed.
async fn subscribe(conn: &mut ClusterConnection, keys: Keys, room: &str) -> bool {
    match conn.ssubscribe(&keys.channels(room)).await {
        Ok(()) => true,
        Err(err) => {
            metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
            tracing::debug!(%err, room, "Redis Cluster subscribe failed; retrying every {RETRY_EVERY:?}");
            false
        }
    }
}

async fn cluster_pushes(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    shared: Arc<Shared>,
    lost: mpsc::UnboundedSender<Lost>,
) {
    let keys = Keys::new(true);
    while let Some(push) = pushes.recv().await {
        match (push.kind, push.data.as_slice()) {
            (PushKind::SMessage, [channel, payload, ..]) => {
                if let (Some(channel), Some(payload)) = (text(channel), bytes(payload)) {
                    shared.route(channel, payload);
                }
            }
            // The server drops a shard channel's subscribers when its slot moves away.
            (PushKind::SUnsubscribe, [channel, ..]) => {
                let Some(room) = text(channel).and_then(|channel| keys.room_of(channel)) else { continue };
                if !shared.registry().subscribers(room).is_empty() {
                    let _ = lost.send(Some(room.to_owned()));
                }
            }
            (PushKind::Disconnection, _) => {
                up(false);
                metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
                tracing::warn!("a Redis Cluster node's connection dropped; resubscribing every room until it works");
                let _ = lost.send(None);
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
