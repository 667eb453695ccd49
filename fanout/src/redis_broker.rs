//! The Redis broker: counters are Redis keys, fan-out is Redis pub/sub, on one Redis or
//! a Redis Cluster (sharded pub/sub; every key of a room in its slot, see `redis_keys`).
//! A room's channels are subscribed only while some link wants the room
//! (`redis_subscriber`, which also resyncs what a broken subscription missed).
//!
//! Presence is a hash per room of `gateway US user -> joined_at` (US: the unit separator,
//! which user names cannot hold), with a hash beside it of when each gateway last
//! announced, changed and published by one script so that readers and subscribers see
//! the same change; live gateways are a sorted set scored by their
//! last heartbeat; the directory is a sorted set scored by last activity, plus a hash of
//! names, both in one hash slot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::join_all;
use prost::Message as _;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use roomcast_proto::{
    now_millis, room_signal, ChatMessage, HeartbeatReply, PresenceEntry, RoomInfo, RoomSignal, RoomTouch, RoomsReply,
    SpendReply, SpendRequest, UserBan,
};
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};
use crate::budget::{gcra, TAKE_SCRIPT};
use crate::presence::{
    distinct_users, is_listed, signal_kind, touched_at, DirectoryLimits, GATEWAY_TTL, MAX_ROOMS_PAGE, TRIM_BATCH,
};
use crate::redis_keys::{Keys, BANS, DIRECTORY_ACTIVE, DIRECTORY_NAMES, GATEWAYS};
use crate::redis_subscriber::{self, Command, Shared};
use crate::redis_target::{Connection, RedisTarget};

/// A room's presence hash outlives its last change by this long at most, so the hashes
/// of rooms whose gateways all died do not stay in Redis for ever.
const PRESENCE_KEY_TTL_SECS: u64 = 86_400;
const SEPARATOR: char = '\u{1f}';

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
/// KEYS[1] the presence hash, KEYS[2] the room's announcements (gateway -> when it last
/// announced, so a reader never deletes what a revived gateway just wrote); ARGV:
/// gateway, full (0/1), key TTL, number of joins, the signal to publish, its channel,
/// the publish command, now (ms), then user and joined_at per join, then the users that
/// left.
const PRESENCE_CHANGE: &str = r"
local gw = ARGV[1] .. '\31'
if ARGV[2] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, #gw) == gw then redis.call('HDEL', KEYS[1], field) end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[8])
local i = 9
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[1], gw .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], gw .. ARGV[i])
  i = i + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[7], ARGV[6], ARGV[5])
return 1";

/// KEYS[1] a room's presence hash, KEYS[2] its announcements; ARGV[1] the oldest live
/// heartbeat, then the live gateways (read just before: in a cluster they live in
/// another slot). Answers the live gateways' users and join times, and deletes the
/// entries of gateways that are neither live nor announced since ARGV[1].
const PRESENCE_READ: &str = r"
local live, answer, dead, gone = {}, {}, {}, {}
for i = 2, #ARGV do live[ARGV[i]] = true end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local sep = string.find(fields[i], '\31', 1, true)
  if sep then
    local gw = string.sub(fields[i], 1, sep - 1)
    if live[gw] then
      answer[#answer + 1] = fields[i]
      answer[#answer + 1] = fields[i + 1]
    else
      if gone[gw] == nil then
        local at = redis.call('HGET', KEYS[2], gw)
        gone[gw] = (not at) or tonumber(at) < tonumber(ARGV[1])
        if gone[gw] then redis.call('HDEL', KEYS[2], gw) end
      end
      if gone[gw] then dead[#dead + 1] = fields[i] end
    end
  end
end
for i = 1, #dead, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 999, #dead)))
end
return answer";

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
    conn: Connection,
    keys: Keys,
    shared: Arc<Shared>,
    next_seq: Arc<redis::Script>,
    seed: Arc<redis::Script>,
    presence_change: Arc<redis::Script>,
    presence_read: Arc<redis::Script>,
    trim_directory: Arc<redis::Script>,
    take_budget: Arc<redis::Script>,
    limits: DirectoryLimits,
}

impl RedisBroker {
    /// Connects lazily to `target`: the broker starts even while Redis is down, and
    /// [`RedisBroker::is_up`] tells readiness.
    pub fn open(target: &RedisTarget, limits: DirectoryLimits) -> anyhow::Result<Self> {
        let conn = target.connection()?;
        let (shared, commands) = Shared::new();
        if target.is_cluster() {
            let (subscriber, pushes) = target.cluster_subscriber()?;
            tokio::spawn(redis_subscriber::cluster(target.clone(), subscriber, pushes, shared.clone(), commands));
        } else {
            tokio::spawn(redis_subscriber::single(target.single()?, shared.clone(), commands));
        }
        Ok(Self {
            conn,
            keys: Keys::new(target.is_cluster()),
            shared,
            next_seq: Arc::new(redis::Script::new(NEXT_SEQ)),
            seed: Arc::new(redis::Script::new(SEED)),
            presence_change: Arc::new(redis::Script::new(PRESENCE_CHANGE)),
            presence_read: Arc::new(redis::Script::new(PRESENCE_READ)),
            trim_directory: Arc::new(redis::Script::new(TRIM_DIRECTORY)),
            take_budget: Arc::new(redis::Script::new(TAKE_SCRIPT)),
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
        let live = self.live_gateways().await?;
        let mut conn = self.conn.clone();
        let fields: Vec<(String, i64)> = self
            .presence_read
            .key(self.keys.presence(room))
            .key(self.keys.announced(room))
            .arg(now_millis() - ttl_millis())
            .arg(live.into_iter().collect::<Vec<_>>())
            .invoke_async(&mut conn)
            .await
            .map_err(|err| unavailable("presence", err))?;
        let entries = fields.into_iter().filter_map(|(field, joined_at)| {
            let (gateway, user) = field.split_once(SEPARATOR)?;
            Some(PresenceEntry { user: user.to_owned(), joined_at, gateway: gateway.to_owned() })
        });
        Ok(entries.collect())
    }

    /// A message is activity: it moves its room up the directory. In the background: the
    /// directory is one key (in a cluster, on one shard), and a send never waits for it.
    fn touch_directory(&self, room: &str) {
        let mut conn = self.conn.clone();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(DIRECTORY_ACTIVE).arg("GT").arg(now_millis()).arg(room);
        let room = room.to_owned();
        tokio::spawn(async move {
            if let Err(err) = zadd.query_async::<i64>(&mut conn).await {
                metrics::counter!("roomcast_fanout_redis_errors_total", "op" => "touch").increment(1);
                tracing::debug!(%err, room, "cannot move a room up the directory");
            }
        });
    }

    /// True when Redis answers a PING: one Redis, or every primary of the cluster.
    pub async fn is_up(&self) -> bool {
        let up = match self.conn.clone() {
            Connection::Single(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
            Connection::Cluster(mut conn) => {
                let all =
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
                conn.route_command(redis::cmd("PING"), all).await.is_ok()
            }
        };
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
        self.next_seq.key(self.keys.seq(room)).invoke_async(&mut conn).await.map_err(|err| unavailable("next_seq", err))
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        self.seed
            .key(self.keys.seq(room))
            .arg(floor)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|err| unavailable("seed", err))
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        let started = Instant::now();
        if is_listed(&msg.room) {
            self.touch_directory(&msg.room);
        }
        let mut conn = self.conn.clone();
        let published = redis::cmd(self.keys.publish())
            .arg(self.keys.channel(&msg.room))
            .arg(msg.encode_to_vec())
            .query_async::<i64>(&mut conn)
            .await;
        metrics::histogram!("roomcast_fanout_publish_duration_seconds").record(started.elapsed());
        let outcome = if published.is_ok() { "ok" } else { "error" };
        metrics::counter!("roomcast_fanout_publishes_total", "result" => outcome).increment(1);
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
        let channel = self.keys.signal(&signal.room);
        let payload = signal.encode_to_vec();
        let result = match &signal.kind {
            Some(room_signal::Kind::Presence(change)) => {
                let mut script = self.presence_change.key(self.keys.presence(&signal.room));
                script.key(self.keys.announced(&signal.room));
                script
                    .arg(&signal.gateway)
                    .arg(if change.full { "1" } else { "0" })
                    .arg(PRESENCE_KEY_TTL_SECS)
                    .arg(change.joins.len())
                    .arg(payload)
                    .arg(channel)
                    .arg(self.keys.publish())
                    .arg(now_millis());
                for join in &change.joins {
                    script.arg(&join.user).arg(join.joined_at);
                }
                for leave in &change.leaves {
                    script.arg(leave);
                }
                script.invoke_async::<i64>(&mut conn).await.map(drop)
            }
            Some(room_signal::Kind::Typing(_) | room_signal::Kind::Kick(_) | room_signal::Kind::Deleted(_)) => {
                redis::cmd(self.keys.publish()).arg(channel).arg(payload).query_async::<i64>(&mut conn).await.map(drop)
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
        pipe.query_async::<()>(&mut conn).await.map_err(|err| unavailable("touch", err))?;
        // A room with members keeps its presence hash, however long nobody comes or goes
        // (each hash in its room's slot, so one command per room).
        let expires = rooms.iter().filter(|t| t.keepalive).map(|touch| {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for key in [self.keys.presence(&touch.room), self.keys.announced(&touch.room)] {
                pipe.cmd("EXPIRE").arg(key).arg(PRESENCE_KEY_TTL_SECS).ignore();
            }
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        join_all(expires).await.into_iter().collect::<Result<(), _>>().map_err(|err| unavailable("touch", err))
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
        let hashes = page.iter().map(|(room, _)| {
            let mut conn = self.conn.clone();
            let key = self.keys.presence(room);
            async move { redis::cmd("HKEYS").arg(key).query_async::<Vec<String>>(&mut conn).await }
        });
        let fields: Vec<Vec<String>> =
            join_all(hashes).await.into_iter().collect::<Result<_, _>>().map_err(|err| unavailable("rooms", err))?;
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

    async fn ban(&self, ban: &UserBan) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        if ban.until > now_millis() {
            pipe.cmd("HSET").arg(BANS).arg(&ban.user).arg(ban.encode_to_vec()).ignore();
        } else {
            pipe.cmd("HDEL").arg(BANS).arg(&ban.user).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(|err| unavailable("ban", err))
    }

    /// The user's budget, then the room's: in a cluster they live in two slots, so two
    /// scripts; a send the room refuses has spent from its user's budget.
    async fn spend(&self, spend: &SpendRequest) -> Result<SpendReply, BrokerError> {
        let scopes = [
            ("user", self.keys.user_budget(&spend.user), gcra(spend.user_budget.as_ref())),
            ("room", self.keys.room_budget(&spend.room), gcra(spend.room_budget.as_ref())),
        ];
        for (scope, key, budget) in scopes {
            let Some((interval, tolerance)) = budget else { continue };
            let mut conn = self.conn.clone();
            let wait_us: u64 = self
                .take_budget
                .key(key)
                .arg(interval)
                .arg(tolerance)
                .invoke_async(&mut conn)
                .await
                .map_err(|err| unavailable("spend", err))?;
            if wait_us > 0 {
                return Ok(SpendReply { over: scope.to_owned(), retry_after_ms: wait_us.div_ceil(1000) });
            }
        }
        Ok(SpendReply::default())
    }

    /// Ended bans are skipped; they stay in the hash until the user is banned again
    /// (deleting them here could race a new ban of the same user).
    async fn bans(&self) -> Result<Vec<UserBan>, BrokerError> {
        let mut conn = self.conn.clone();
        let all: Vec<Vec<u8>> =
            redis::cmd("HVALS").arg(BANS).query_async(&mut conn).await.map_err(|err| unavailable("bans", err))?;
        let now = now_millis();
        Ok(all
            .iter()
            .filter_map(|encoded| UserBan::decode(encoded.as_slice()).ok())
            .filter(|ban| ban.until > now)
            .collect())
    }
}

fn ttl_millis() -> i64 {
    i64::try_from(GATEWAY_TTL.as_millis()).unwrap_or(i64::MAX)
}
