//! The Redis broker: counters are Redis keys, fan-out is Redis pub/sub.
//!
//! A room's channel is subscribed only while some link wants the room. When the
//! subscriber connection drops, it reconnects, resubscribes every wanted room and sends
//! `Resync` to every link: messages published meanwhile were missed, and the gateways
//! re-read them from the store.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backoff::BackoffBuilder;
use futures::StreamExt;
use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use roomcast_proto::{event::Kind, ChatMessage, Event, Resync};
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};
use crate::registry::{LinkId, Registry};

const SEQ_PREFIX: &str = "roomcast:seq:";
const CHANNEL_PREFIX: &str = "roomcast:room:";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Allocates the next seq, or nil when the counter is missing (new room or lost state).
const NEXT_SEQ: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCR', KEYS[1])";

/// Creates the counter at ARGV[1], or raises it to at least ARGV[1].
const SEED: &str = r"
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1";

#[derive(Clone)]
pub struct RedisBroker {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    next_seq: Arc<redis::Script>,
    seed: Arc<redis::Script>,
}

struct Shared {
    registry: Mutex<Registry>,
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    Subscribe { room: String, link: LinkId },
    Unsubscribe { room: String },
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RedisBroker {
    /// Connects lazily to `url`: the broker starts even while Redis is down, and
    /// [`RedisBroker::is_up`] tells readiness.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|err| anyhow::anyhow!("invalid Redis URL {:?}: {err}", without_password(url)))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(TIMEOUT))
            .set_connection_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| anyhow::anyhow!("cannot set up Redis connection to {url}: {err}"))?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { registry: Mutex::new(Registry::default()), commands });
        tokio::spawn(subscriber(client, shared.clone(), command_rx));
        Ok(Self {
            conn,
            shared,
            next_seq: Arc::new(redis::Script::new(NEXT_SEQ)),
            seed: Arc::new(redis::Script::new(SEED)),
        })
    }

    /// True when Redis answers a PING.
    pub async fn is_up(&self) -> bool {
        let mut conn = self.conn.clone();
        let up = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
        metrics::gauge!("roomcast_fanout_redis_up").set(if up { 1.0 } else { 0.0 });
        up
    }
}

fn unavailable(op: &'static str, err: redis::RedisError) -> BrokerError {
    metrics::counter!("roomcast_fanout_redis_errors_total", "op" => op).increment(1);
    if err.is_timeout() {
        BrokerError::Timeout
    } else {
        BrokerError::Unavailable(format!("Redis {op} failed: {err}"))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError> {
        let mut conn = self.conn.clone();
        self.next_seq
            .key(format!("{SEQ_PREFIX}{room}"))
            .invoke_async(&mut conn)
            .await
            .map_err(|err| unavailable("next_seq", err))
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        self.seed
            .key(format!("{SEQ_PREFIX}{room}"))
            .arg(floor)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|err| unavailable("seed", err))
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let result = redis::cmd("PUBLISH")
            .arg(format!("{CHANNEL_PREFIX}{}", msg.room))
            .arg(msg.encode_to_vec())
            .query_async::<i64>(&mut conn)
            .await;
        metrics::histogram!("roomcast_fanout_publish_duration_seconds").record(started.elapsed());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("roomcast_fanout_publishes_total", "result" => outcome).increment(1);
        result.map(drop).map_err(|err| unavailable("publish", err))
    }

    async fn connect(&self) -> Result<Link, BrokerError> {
        let (event_tx, events) = mpsc::channel(LINK_CAPACITY);
        let (interests, mut interest_rx) = mpsc::channel::<roomcast_proto::Interest>(1024);
        let link = self.shared.registry().add_link(event_tx);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(interest) = interest_rx.recv().await {
                let room = interest.room;
                // Every subscribe asks the subscriber task, even when Redis already has the
                // channel: it confirms with `Subscribed` only once Redis has acknowledged.
                let command = if interest.subscribe {
                    shared.registry().subscribe(link, &room);
                    Command::Subscribe { room, link }
                } else if shared.registry().unsubscribe(link, &room) {
                    Command::Unsubscribe { room }
                } else {
                    continue;
                };
                if shared.commands.send(command).is_err() {
                    break;
                }
            }
            for room in shared.registry().remove_link(link) {
                let _ = shared.commands.send(Command::Unsubscribe { room });
            }
        });
        Ok(Link { interests, events })
    }
}

/// Owns the pub/sub connection for the broker's lifetime, reconnecting forever.
async fn subscriber(client: redis::Client, shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut connected_before = false;
    let mut delays = backoff::reconnect().build();
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(err) => {
                metrics::gauge!("roomcast_fanout_redis_up").set(0.0);
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(%err, ?delay, "Redis subscriber cannot connect; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let rooms = shared.registry().rooms();
        if let Err(err) = subscribe_all(&mut sink, &rooms).await {
            let delay = delays.next().unwrap_or(Duration::from_secs(2));
            tracing::warn!(%err, ?delay, "Redis resubscribe failed; reconnecting");
            tokio::time::sleep(delay).await;
            continue;
        }
        delays = backoff::reconnect().build();
        metrics::gauge!("roomcast_fanout_redis_up").set(1.0);
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
                    if let Err(err) = apply(&mut sink, &shared, command).await {
                        tracing::warn!(%err, "Redis subscription change failed; reconnecting");
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("Redis subscriber connection lost; reconnecting");
                        break;
                    };
                    match ChatMessage::decode(msg.get_payload_bytes()) {
                        Ok(chat) => shared.registry().deliver(&chat),
                        Err(err) => tracing::warn!(%err, channel = msg.get_channel_name(), "undecodable message on Redis channel"),
                    }
                }
            }
        }
        metrics::gauge!("roomcast_fanout_redis_up").set(0.0);
        metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "subscribe").increment(1);
    }
}

async fn subscribe_all(sink: &mut PubSubSink, rooms: &[String]) -> redis::RedisResult<()> {
    for room in rooms {
        sink.subscribe(format!("{CHANNEL_PREFIX}{room}")).await?;
    }
    Ok(())
}

async fn apply(sink: &mut PubSubSink, shared: &Shared, command: Command) -> redis::RedisResult<()> {
    match command {
        Command::Subscribe { room, link } => {
            sink.subscribe(format!("{CHANNEL_PREFIX}{room}")).await?;
            shared.registry().send(link, Event { kind: Some(Kind::Subscribed(room)) });
        }
        Command::Unsubscribe { room } => {
            // A link may have asked for the room again meanwhile.
            if shared.registry().subscribers(&room).is_empty() {
                sink.unsubscribe(format!("{CHANNEL_PREFIX}{room}")).await?;
            }
        }
    }
    Ok(())
}

/// The URL with its user and password masked, for messages that reach logs.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod url_tests {
    use super::without_password;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(without_password("redis://:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(without_password("redis://user:p@ss@cache"), "redis://***@cache");
        assert_eq!(without_password("redis://cache:6379"), "redis://cache:6379");
        assert!(crate::RedisBroker::open("rediss://:s3cret@cache")
            .err()
            .is_some_and(|e| !e.to_string().contains("s3cret")));
    }
}
