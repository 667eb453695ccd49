//! Ephemeral room state the broker keeps beside fan-out: who is present in each room
//! (entries per gateway), which gateways are alive, and the room directory. None of it
//! is stored in the store or takes a seq.
//!
//! Presence is kept per (gateway, user): a gateway announces only its own users, and an
//! entry lives as long as its gateway heartbeats. So a gateway killed with `kill -9`
//! needs nobody to clean up after it: it stops heartbeating, and after [`GATEWAY_TTL`]
//! every reader leaves its entries out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use roomcast_proto::PresenceEntry;

/// How often a gateway says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A gateway not heard from for this long is dead, and its presence entries with it.
pub const GATEWAY_TTL: Duration = Duration::from_secs(15);
/// Rooms whose names start with this are the system's own (the `~rooms` record of
/// created rooms) and are never listed.
const SYSTEM_PREFIX: char = '~';
/// Rooms dropped from the directory per heartbeat at most, so that trimming a huge
/// backlog never blocks Redis for long.
pub const TRIM_BATCH: usize = 1000;
/// A directory page holds at most this many rooms.
pub const MAX_ROOMS_PAGE: u32 = 100;

/// How the directory is bounded.
#[derive(Clone, Copy, Debug)]
pub struct DirectoryLimits {
    /// A room without members or messages for this long drops out (its history stays).
    pub idle: Duration,
    /// At most this many rooms; the least recently active go first.
    pub max_rooms: usize,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        Self { idle: Duration::from_secs(86_400), max_rooms: 100_000 }
    }
}

impl DirectoryLimits {
    /// The oldest activity, in Unix milliseconds, that keeps a room listed at `now`.
    pub fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The directory's flags, shared by `fanout` and `roomcast`.
#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryArgs {
    /// A room with no members and no messages for this many seconds drops out of the room
    /// directory (its history stays stored).
    #[arg(long, env = "ROOMCAST_DIRECTORY_IDLE_SECONDS", default_value_t = DirectoryLimits::default().idle.as_secs())]
    pub directory_idle_seconds: u64,
    /// Rooms the directory holds at most; the least recently active drop out first.
    #[arg(long, env = "ROOMCAST_DIRECTORY_MAX_ROOMS", default_value_t = DirectoryLimits::default().max_rooms)]
    pub directory_max_rooms: usize,
}

impl DirectoryArgs {
    pub fn limits(&self) -> anyhow::Result<DirectoryLimits> {
        anyhow::ensure!(self.directory_idle_seconds > 0, "--directory-idle-seconds must be at least 1");
        anyhow::ensure!(self.directory_max_rooms > 0, "--directory-max-rooms must be at least 1");
        Ok(DirectoryLimits {
            idle: Duration::from_secs(self.directory_idle_seconds),
            max_rooms: self.directory_max_rooms,
        })
    }
}

/// The metric label of a signal.
pub fn signal_kind(signal: &roomcast_proto::RoomSignal) -> Option<&'static str> {
    match signal.kind {
        Some(roomcast_proto::room_signal::Kind::Presence(_)) => Some("presence"),
        Some(roomcast_proto::room_signal::Kind::Typing(_)) => Some("typing"),
        Some(roomcast_proto::room_signal::Kind::Kick(_)) => Some("kick"),
        Some(roomcast_proto::room_signal::Kind::Deleted(_)) => Some("deleted"),
        None => None,
    }
}

/// When a touch says the room was active, in Unix milliseconds.
pub fn touched_at(touch: &roomcast_proto::RoomTouch, limits: DirectoryLimits, now: i64) -> i64 {
    if touch.keepalive {
        now - i64::try_from(limits.idle.as_millis() / 2).unwrap_or(i64::MAX)
    } else if touch.at > 0 {
        touch.at.min(now)
    } else {
        now
    }
}

/// The number of distinct users among `entries` whose gateway is alive.
pub fn distinct_users<'a>(entries: impl IntoIterator<Item = &'a PresenceEntry>, live: &HashSet<String>) -> u64 {
    let users: HashSet<&str> =
        entries.into_iter().filter(|e| live.contains(&e.gateway)).map(|e| e.user.as_str()).collect();
    users.len() as u64
}

/// False for the system's own rooms, which the directory never lists.
pub fn is_listed(room: &str) -> bool {
    !room.starts_with(SYSTEM_PREFIX)
}

/// The directory held in memory by the embedded broker: each room's last activity and
/// name.
#[derive(Default)]
pub struct Directory {
    rooms: HashMap<String, (i64, String)>,
}

impl Directory {
    /// Marks `room` active at `now`; a non-empty `name` names it.
    pub fn touch(&mut self, room: &str, name: &str, now: i64) {
        if !is_listed(room) {
            return;
        }
        let entry = self.rooms.entry(room.to_owned()).or_insert((now, String::new()));
        entry.0 = entry.0.max(now);
        if !name.is_empty() {
            entry.1 = name.to_owned();
        }
    }

    /// Drops the rooms idle for longer than `limits.idle`, then the least recently
    /// active beyond `limits.max_rooms`; returns how many remain.
    pub fn trim(&mut self, limits: DirectoryLimits, now: i64) -> usize {
        let cutoff = limits.cutoff(now);
        self.rooms.retain(|_, (active, _)| *active >= cutoff);
        if self.rooms.len() > limits.max_rooms {
            let mut by_age: Vec<(i64, String)> = self.rooms.iter().map(|(r, (a, _))| (*a, r.clone())).collect();
            by_age.sort();
            for (_, room) in by_age.into_iter().take(self.rooms.len() - limits.max_rooms) {
                self.rooms.remove(&room);
            }
        }
        self.rooms.len()
    }

    /// A page, most recently active first: (room, name, active_at), and the total.
    pub fn page(&self, offset: u32, limit: u32) -> (Vec<(String, String, i64)>, u64) {
        let mut all: Vec<(&String, &(i64, String))> = self.rooms.iter().collect();
        all.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(b.0)));
        let page = all
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|(room, (active, name))| (room.clone(), name.clone(), *active))
            .collect();
        (page, self.rooms.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_drops_idle_rooms_then_the_oldest_beyond_its_cap() {
        let mut directory = Directory::default();
        let limits = DirectoryLimits { idle: Duration::from_secs(10), max_rooms: 2 };
        directory.touch("old", "Old", 0);
        directory.touch("a", "", 15_000);
        directory.touch("b", "Bee", 16_000);
        directory.touch("c", "", 17_000);
        directory.touch("~rooms", "", 17_000);
        assert_eq!(directory.trim(limits, 20_000), 2, "old is idle, then a is the oldest past the cap");
        let (page, total) = directory.page(0, 10);
        assert_eq!(total, 2);
        assert_eq!(page, vec![("c".into(), "".into(), 17_000), ("b".into(), "Bee".into(), 16_000)]);
        assert_eq!(directory.page(1, 1).0, vec![("b".into(), "Bee".into(), 16_000)]);
    }

    #[test]
    fn member_counts_are_distinct_users_of_live_gateways() {
        let entry =
            |user: &str, gateway: &str| PresenceEntry { user: user.into(), joined_at: 1, gateway: gateway.into() };
        let entries = [entry("ada", "g1"), entry("ada", "g2"), entry("bo", "g2"), entry("cy", "dead")];
        let live: HashSet<String> = ["g1".to_owned(), "g2".to_owned()].into();
        assert_eq!(distinct_users(&entries, &live), 2);
    }
}
