//! The Redis broker: counters are Redis keys, fan-out is Redis pub/sub.
//!
//! A room's channel is subscribed only while some link wants the room. When the
//! subscriber connection drops, it reconnects, resubscribes every wanted room and sends
//! `Resync` to every link: messages published meanwhile were missed, and the gateways
//! re-read them from the store.
//!
//! Presence is a hash per room of `gateway US user -> joined_at` (US: the unit separator,
//! which user names cannot hold), changed and published by one script so that readers
//! and subscribers see the same change; live gateways are a sorted set scored by their
//! last heartbeat; the directory is a sorted set scored by last activity, plus a hash of
//! names, both in one hash slot.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backoff::BackoffBuilder;
use futures::StreamExt;
use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use roomcast_proto::{
    event::Kind, now_millis, room_signal, ChatMessage, Event, HeartbeatReply, PresenceEntry, Resync, RoomInfo,
    RoomSignal, RoomTouch, RoomsReply,
};
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};
use crate::presence::{
    distinct_users, is_listed, signal_kind, touched_at, DirectoryLimits, GATEWAY_TTL, MAX_ROOMS_PAGE, TRIM_BATCH,
};
use crate::registry::{LinkId, Registry};

const SEQ_PREFIX: &str = "roomcast:seq:";
const CHANNEL_PREFIX: &str = "roomcast:room:";
const SIGNAL_PREFIX: &str = "roomcast:signal:";
const PRESENCE_PREFIX: &str = "roomcast:presence:";
const GATEWAYS: &str = "roomcast:gateways";
const DIRECTORY_ACTIVE: &str = "roomcast:{directory}:active";
const DIRECTORY_NAMES: &str = "roomcast:{directory}:names";
/// A room's presence hash outlives its last change by this long at most, so the hashes
/// of rooms whose gateways all died do not stay in Redis for ever.
const PRESENCE_KEY_TTL_SECS: u64 = 86_400;
const SEPARATOR: char = '\u{1f}';
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

/// Applies one gateway's presence change to a room's hash and publishes it.
/// KEYS[1] the hash; ARGV: gateway, full (0/1), key TTL, number of joins, the signal to
/// publish, its channel, then user and joined_at per join, then the users that left.
const PRESENCE_CHANGE: &str = r"
local gw = ARGV[1] .. '\31'
if ARGV[2] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, #gw) == gw then redis.call('HDEL', KEYS[1], field) end
  end
end
local i = 7
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[1], gw .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], gw .. ARGV[i])
  i = i + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return 1";

/// KEYS[1] a room's presence hash, KEYS[2] the live gateways; ARGV[1] the oldest live
/// heartbeat. Answers the live gateways' fields and values, and deletes the others' in
/// the same step: a gateway that heartbeats again just after cannot lose what it
/// announces next.
const PRESENCE_READ: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local live, alive, dead = {}, {}, {}
for i = 1, #fields, 2 do
  local sep = string.find(fields[i], '\31', 1, true)
  if sep then
    local gw = string.sub(fields[i], 1, sep - 1)
    if alive[gw] == nil then
      local beat = redis.call('ZSCORE', KEYS[2], gw)
      alive[gw] = beat ~= false and tonumber(beat) >= tonumber(ARGV[1])
    end
    if alive[gw] then
      live[#live + 1] = fields[i]
      live[#live + 1] = fields[i + 1]
    else
      dead[#dead + 1] = fields[i]
    end
  end
end
for i = 1, #dead, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 999, #dead)))
end
return live";

/// Drops directory rooms idle since ARGV[1] and the oldest beyond ARGV[2] rooms, at most
/// ARGV[3] per call, with their names; answers the directory's size.
const TRIM_DIRECTORY: &str = r"
local drop = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
local total = redis.call('ZCARD', KEYS[1])
local over = total - #drop - tonumber(ARGV[2])
if over > 0 then drop = redis.call('ZRANGE', KEYS[1], 0, math.min(#drop + over, tonumber(ARGV[3])) - 1) end
if #drop > 0 then
  redis.call('ZREM', KEYS[1], unpack(drop))
  redis.call('HDEL', KEYS[2], unpack(drop))
end
return redis.call('ZCARD', KEYS[1])";

#[derive(Clone)]
pub struct RedisBroker {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    next_seq: Arc<redis::Script>,
    seed: Arc<redis::Script>,
    presence_change: Arc<redis::Script>,
    presence_read: Arc<redis::Script>,
    trim_directory: Arc<redis::Script>,
    limits: DirectoryLimits,
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
    pub fn open(url: &str, limits: DirectoryLimits) -> anyhow::Result<Self> {
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
            presence_change: Arc::new(redis::Script::new(PRESENCE_CHANGE)),
            presence_read: Arc::new(redis::Script::new(PRESENCE_READ)),
            trim_directory: Arc::new(redis::Script::new(TRIM_DIRECTORY)),
            limits,
        })
    }

    /// The gateways heard from within [`GATEWAY_TTL`].
    async fn live_gateways(&self) -> Result<HashSet<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let since = now_millis() - ttl_millis();
        redis::cmd("ZRANGEBYSCORE")
            .arg(GATEWAYS)
            .arg(since)
            .arg("+inf")
            .query_async::<Vec<String>>(&mut conn)
            .await
            .map(|live| live.into_iter().collect())
            .map_err(|err| unavailable("presence", err))
    }

    /// The live gateways' entries of a room's presence hash; the dead ones' are deleted.
    async fn entries(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, i64)> = self
            .presence_read
            .key(format!("{PRESENCE_PREFIX}{room}"))
            .key(GATEWAYS)
            .arg(now_millis() - ttl_millis())
            .invoke_async(&mut conn)
            .await
            .map_err(|err| unavailable("presence", err))?;
        let entries = fields.into_iter().filter_map(|(field, joined_at)| {
            let (gateway, user) = field.split_once(SEPARATOR)?;
            Some(PresenceEntry { user: user.to_owned(), joined_at, gateway: gateway.to_owned() })
        });
        Ok(entries.collect())
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
        let mut pipe = redis::pipe();
        // The directory's ZADD rides along, but its failure never fails the send.
        pipe.ignore_errors().cmd("PUBLISH").arg(format!("{CHANNEL_PREFIX}{}", msg.room)).arg(msg.encode_to_vec());
        // A message is activity: it moves its room up the directory.
        if is_listed(&msg.room) {
            pipe.cmd("ZADD").arg(DIRECTORY_ACTIVE).arg("GT").arg(now_millis()).arg(&msg.room);
        }
        let results = pipe.query_async::<Vec<redis::RedisResult<i64>>>(&mut conn).await;
        metrics::histogram!("roomcast_fanout_publish_duration_seconds").record(started.elapsed());
        let (published, touched) = match results {
            Ok(results) => {
                let mut results = results.into_iter();
                (results.next().unwrap_or(Ok(0)), results.next())
            }
            Err(err) => (Err(err), None),
        };
        let outcome = if published.is_ok() { "ok" } else { "error" };
        metrics::counter!("roomcast_fanout_publishes_total", "result" => outcome).increment(1);
        if let Some(Err(err)) = touched {
            metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "touch").increment(1);
            tracing::debug!(%err, room = msg.room, "cannot move a room up the directory");
        }
        published.map(drop).map_err(|err| unavailable("publish", err))
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

    async fn signal(&self, signal: &RoomSignal) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let channel = format!("{SIGNAL_PREFIX}{}", signal.room);
        let payload = signal.encode_to_vec();
        let result = match &signal.kind {
            Some(room_signal::Kind::Presence(change)) => {
                let mut script = self.presence_change.key(format!("{PRESENCE_PREFIX}{}", signal.room));
                script
                    .arg(&signal.gateway)
                    .arg(if change.full { "1" } else { "0" })
                    .arg(PRESENCE_KEY_TTL_SECS)
                    .arg(change.joins.len())
                    .arg(payload)
                    .arg(channel);
                for join in &change.joins {
                    script.arg(&join.user).arg(join.joined_at);
                }
                for leave in &change.leaves {
                    script.arg(leave);
                }
                script.invoke_async::<i64>(&mut conn).await.map(drop)
            }
            Some(room_signal::Kind::Typing(_)) => {
                redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<i64>(&mut conn).await.map(drop)
            }
            None => return Ok(()),
        };
        result.map_err(|err| unavailable("signal", err))?;
        if let Some(kind) = signal_kind(signal) {
            metrics::counter!("roomcast_fanout_signals_total", "kind" => kind).increment(1);
        }
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.entries(room).await
    }

    async fn heartbeat(&self, gateway: &str, gone: bool) -> Result<HeartbeatReply, BrokerError> {
        let mut conn = self.conn.clone();
        let now = now_millis();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE").arg(GATEWAYS).arg("-inf").arg(format!("({}", now - ttl_millis())).ignore();
        if gone {
            pipe.cmd("ZREM").arg(GATEWAYS).arg(gateway);
        } else {
            // Answers 1 when the gateway was not in the set.
            pipe.cmd("ZADD").arg(GATEWAYS).arg(now).arg(gateway);
        }
        pipe.cmd("ZRANGE").arg(GATEWAYS).arg(0).arg(-1);
        let (added, live): (i64, Vec<String>) =
            pipe.query_async(&mut conn).await.map_err(|err| unavailable("heartbeat", err))?;
        // The heartbeat itself is done: a failed trim must not hide it (nor `rejoined`).
        let trimmed = self
            .trim_directory
            .key(DIRECTORY_ACTIVE)
            .key(DIRECTORY_NAMES)
            .arg(self.limits.cutoff(now))
            .arg(self.limits.max_rooms)
            .arg(TRIM_BATCH)
            .invoke_async::<u64>(&mut conn)
            .await;
        let directory_rooms = trimmed.unwrap_or_else(|err| {
            metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "heartbeat").increment(1);
            tracing::warn!(%err, "cannot trim the room directory; trying again at the next heartbeat");
            0
        });
        Ok(HeartbeatReply { live, directory_rooms, rejoined: !gone && added == 1 })
    }

    async fn touch(&self, rooms: &[RoomTouch]) -> Result<(), BrokerError> {
        let rooms: Vec<&RoomTouch> = rooms.iter().filter(|t| is_listed(&t.room)).collect();
        if rooms.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let now = now_millis();
        let mut pipe = redis::pipe();
        let mut active = redis::cmd("ZADD");
        active.arg(DIRECTORY_ACTIVE).arg("GT");
        for touch in &rooms {
            active.arg(touched_at(touch, self.limits, now)).arg(&touch.room);
        }
        pipe.add_command(active).ignore();
        for touch in rooms.iter().filter(|t| !t.name.is_empty()) {
            pipe.cmd("HSET").arg(DIRECTORY_NAMES).arg(&touch.room).arg(&touch.name).ignore();
        }
        // A room with members keeps its presence hash, however long nobody comes or goes.
        for touch in rooms.iter().filter(|t| t.keepalive) {
            pipe.cmd("EXPIRE").arg(format!("{PRESENCE_PREFIX}{}", touch.room)).arg(PRESENCE_KEY_TTL_SECS).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(|err| unavailable("touch", err))
    }

    async fn rooms(&self, offset: u32, limit: u32) -> Result<RoomsReply, BrokerError> {
        let mut conn = self.conn.clone();
        let cutoff = self.limits.cutoff(now_millis());
        let (page, total): (Vec<(String, f64)>, u64) = redis::pipe()
            .cmd("ZREVRANGEBYSCORE")
            .arg(DIRECTORY_ACTIVE)
            .arg("+inf")
            .arg(cutoff)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(limit.min(MAX_ROOMS_PAGE))
            .cmd("ZCOUNT")
            .arg(DIRECTORY_ACTIVE)
            .arg(cutoff)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|err| unavailable("rooms", err))?;
        if page.is_empty() {
            return Ok(RoomsReply { rooms: Vec::new(), total });
        }
        let names: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(DIRECTORY_NAMES)
            .arg(page.iter().map(|(room, _)| room).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await
            .map_err(|err| unavailable("rooms", err))?;
        let live = self.live_gateways().await?;
        let mut hashes = redis::pipe();
        for (room, _) in &page {
            hashes.cmd("HKEYS").arg(format!("{PRESENCE_PREFIX}{room}"));
        }
        let fields: Vec<Vec<String>> = hashes.query_async(&mut conn).await.map_err(|err| unavailable("rooms", err))?;
        let rooms = page
            .into_iter()
            .zip(names)
            .zip(fields)
            .map(|(((room, active_at), name), fields)| {
                let entries: Vec<PresenceEntry> = fields
                    .iter()
                    .filter_map(|field| field.split_once(SEPARATOR))
                    .map(|(gateway, user)| PresenceEntry { user: user.into(), joined_at: 0, gateway: gateway.into() })
                    .collect();
                let members = distinct_users(&entries, &live);
                RoomInfo { room, name: name.unwrap_or_default(), members, active_at: active_at as i64 }
            })
            .collect();
        Ok(RoomsReply { rooms, total })
    }
}

fn ttl_millis() -> i64 {
    i64::try_from(GATEWAY_TTL.as_millis()).unwrap_or(i64::MAX)
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
                    let channel = msg.get_channel_name();
                    let decoded = if channel.starts_with(SIGNAL_PREFIX) {
                        RoomSignal::decode(msg.get_payload_bytes()).map(|signal| shared.registry().signal(&signal))
                    } else {
                        ChatMessage::decode(msg.get_payload_bytes()).map(|chat| shared.registry().deliver(&chat))
                    };
                    if let Err(err) = decoded {
                        tracing::warn!(%err, channel, "undecodable message on Redis channel");
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
        sink.subscribe(channels(room)).await?;
    }
    Ok(())
}

/// A room's two channels: its messages and its signals.
fn channels(room: &str) -> Vec<String> {
    vec![format!("{CHANNEL_PREFIX}{room}"), format!("{SIGNAL_PREFIX}{room}")]
}

async fn apply(sink: &mut PubSubSink, shared: &Shared, command: Command) -> redis::RedisResult<()> {
    match command {
        Command::Subscribe { room, link } => {
            sink.subscribe(channels(&room)).await?;
            shared.registry().send(link, Event { kind: Some(Kind::Subscribed(room)) });
        }
        Command::Unsubscribe { room } => {
            // A link may have asked for the room again meanwhile.
            if shared.registry().subscribers(&room).is_empty() {
                sink.unsubscribe(channels(&room)).await?;
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
        assert!(crate::RedisBroker::open("rediss://:s3cret@cache", Default::default())
            .err()
            .is_some_and(|e| !e.to_string().contains("s3cret")));
    }
}
