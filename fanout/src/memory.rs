//! The embedded broker: counters and fan-out inside one process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use roomcast_proto::{
    event::Kind, now_millis, room_signal, ChatMessage, HeartbeatReply, PresenceEntry, RoomInfo, RoomSignal, RoomTouch,
    RoomsReply, SpendReply, SpendRequest, UserBan,
};
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};
use crate::budget::{gcra, take};
use crate::presence::{
    distinct_users, signal_kind, touched_at, Directory, DirectoryLimits, GATEWAY_TTL, MAX_ROOMS_PAGE,
};
use crate::registry::Registry;

#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Mutex<State>>,
    /// The budgets' clock: monotonic, so a wall-clock step cannot refill them.
    epoch: Instant,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self { inner: Arc::default(), epoch: Instant::now() }
    }
}

/// Budgets kept before the full ones are dropped.
const MAX_BUDGETS: usize = 100_000;

#[derive(Default)]
struct State {
    counters: HashMap<String, u64>,
    registry: Registry,
    /// room -> (gateway, user) -> joined_at
    presence: HashMap<String, HashMap<(String, String), i64>>,
    gateways: HashMap<String, Instant>,
    directory: Directory,
    limits: DirectoryLimits,
    /// user -> the ban, until its `until`.
    bans: HashMap<String, UserBan>,
    /// "user:NAME" / "room:NAME" -> the budget's TAT (µs on the broker's `epoch` clock).
    budgets: HashMap<String, u64>,
}

impl State {
    fn live(&self) -> HashSet<String> {
        self.gateways.iter().filter(|(_, seen)| seen.elapsed() < GATEWAY_TTL).map(|(g, _)| g.clone()).collect()
    }

    fn entries(&self, room: &str, live: &HashSet<String>) -> Vec<PresenceEntry> {
        let Some(entries) = self.presence.get(room) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|((gateway, _), _)| live.contains(gateway))
            .map(|((gateway, user), joined_at)| PresenceEntry {
                user: user.clone(),
                joined_at: *joined_at,
                gateway: gateway.clone(),
            })
            .collect()
    }
}

impl MemoryBroker {
    pub fn new(limits: DirectoryLimits) -> Self {
        let broker = Self::default();
        broker.state().limits = limits;
        broker
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this file; the data stays usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError> {
        Ok(self.state().counters.get_mut(room).map(|seq| {
            *seq += 1;
            *seq
        }))
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        let mut state = self.state();
        let seq = state.counters.entry(room.to_owned()).or_default();
        *seq = (*seq).max(floor);
        Ok(())
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        let mut state = self.state();
        state.directory.touch(&msg.room, "", now_millis());
        state.registry.deliver(msg);
        metrics::counter!("roomcast_fanout_publishes_total", "result" => "ok").increment(1);
        Ok(())
    }

    async fn connect(&self) -> Result<Link, BrokerError> {
        let (event_tx, events) = mpsc::channel(LINK_CAPACITY);
        let (interests, mut interest_rx) = mpsc::channel::<roomcast_proto::Interest>(1024);
        let id = self.state().registry.add_link(event_tx);
        let broker = self.clone();
        tokio::spawn(async move {
            while let Some(interest) = interest_rx.recv().await {
                let mut state = broker.state();
                if interest.subscribe {
                    state.registry.subscribe(id, &interest.room);
                    state.registry.send(id, roomcast_proto::Event { kind: Some(Kind::Subscribed(interest.room)) });
                } else {
                    state.registry.unsubscribe(id, &interest.room);
                }
            }
            broker.state().registry.remove_link(id);
        });
        Ok(Link { interests, events })
    }

    async fn signal(&self, signal: &RoomSignal) -> Result<(), BrokerError> {
        let mut state = self.state();
        if let Some(room_signal::Kind::Presence(change)) = &signal.kind {
            let entries = state.presence.entry(signal.room.clone()).or_default();
            if change.full {
                entries.retain(|(gateway, _), _| *gateway != signal.gateway);
            }
            for leave in &change.leaves {
                entries.remove(&(signal.gateway.clone(), leave.clone()));
            }
            for join in &change.joins {
                entries.insert((signal.gateway.clone(), join.user.clone()), join.joined_at);
            }
            if entries.is_empty() {
                state.presence.remove(&signal.room);
            }
        }
        state.registry.signal(signal);
        if let Some(kind) = signal_kind(signal) {
            metrics::counter!("roomcast_fanout_signals_total", "kind" => kind).increment(1);
        }
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let state = self.state();
        Ok(state.entries(room, &state.live()))
    }

    async fn heartbeat(&self, gateway: &str, gone: bool) -> Result<HeartbeatReply, BrokerError> {
        let mut state = self.state();
        state.gateways.retain(|_, seen| seen.elapsed() < GATEWAY_TTL);
        let rejoined = if gone {
            state.gateways.remove(gateway);
            false
        } else {
            state.gateways.insert(gateway.to_owned(), Instant::now()).is_none()
        };
        let live = state.live();
        state.presence.retain(|_, entries| {
            entries.retain(|(gateway, _), _| live.contains(gateway));
            !entries.is_empty()
        });
        let limits = state.limits;
        let size = state.directory.trim(limits, now_millis());
        Ok(HeartbeatReply { live: live.into_iter().collect(), directory_rooms: size as u64, rejoined })
    }

    async fn touch(&self, rooms: &[RoomTouch]) -> Result<(), BrokerError> {
        let now = now_millis();
        let mut state = self.state();
        for touch in rooms {
            let at = touched_at(touch, state.limits, now);
            state.directory.touch(&touch.room, &touch.name, at);
        }
        Ok(())
    }

    async fn rooms(&self, offset: u32, limit: u32) -> Result<RoomsReply, BrokerError> {
        let mut state = self.state();
        let limits = state.limits;
        state.directory.trim(limits, now_millis());
        let (page, total) = state.directory.page(offset, limit.min(MAX_ROOMS_PAGE));
        let live = state.live();
        let rooms = page
            .into_iter()
            .map(|(room, name, active_at)| {
                let members = distinct_users(&state.entries(&room, &live), &live);
                RoomInfo { room, name, members, active_at }
            })
            .collect();
        Ok(RoomsReply { rooms, total })
    }

    async fn ban(&self, ban: &UserBan) -> Result<(), BrokerError> {
        let now = now_millis();
        let mut state = self.state();
        state.bans.retain(|_, ban| ban.until > now);
        if ban.until > now {
            state.bans.insert(ban.user.clone(), ban.clone());
        }
        Ok(())
    }

    async fn spend(&self, spend: &SpendRequest) -> Result<SpendReply, BrokerError> {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut state = self.state();
        if state.budgets.len() > MAX_BUDGETS {
            // Keys whose budget is full again hold nothing worth keeping.
            state.budgets.retain(|_, tat| *tat > now);
        }
        let scopes = [
            ("user", format!("user:{}", spend.user), gcra(spend.user_budget.as_ref())),
            ("room", format!("room:{}", spend.room), gcra(spend.room_budget.as_ref())),
        ];
        for (scope, key, budget) in scopes {
            let Some(budget) = budget else { continue };
            let tat = state.budgets.get(&key).copied().unwrap_or(0);
            match take(tat, now, budget) {
                Ok(next) => {
                    state.budgets.insert(key, next);
                }
                Err(wait_us) => {
                    return Ok(SpendReply { over: scope.to_owned(), retry_after_ms: wait_us.div_ceil(1000) });
                }
            }
        }
        Ok(SpendReply::default())
    }

    async fn bans(&self) -> Result<Vec<UserBan>, BrokerError> {
        let now = now_millis();
        Ok(self.state().bans.values().filter(|ban| ban.until > now).cloned().collect())
    }
}
