//! A room's presence as one gateway sees it: its own users (from its members) and those
//! of other gateways (from their announcements through the broker). Users, not
//! connections: a user with two tabs, or on two gateways, is one entry.
//!
//! Members are told in batches (a room task ticks at most every [`TICK`]): the list they
//! were last told is `sent`, and each tick turns the difference into one diff. A user who
//! disappears stays in `sent` for the grace period first, so a reload, or a drained
//! client reconnecting through another gateway, does not flicker out and back in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_proto::{now_millis, PresenceChange, PresenceEntry};
use serde::Serialize;

use crate::metrics::METRICS;

/// At most one presence diff per room this often.
pub const TICK: Duration = Duration::from_millis(250);
/// At most one typing signal per user and room is relayed this often.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);
/// A gateway is not dropped for missing from the live set until it has been known this
/// long: its first heartbeat may postdate the live set this gateway holds.
const NEW_GATEWAY: Duration = fanout::GATEWAY_TTL;

/// How presence behaves, from the gateway's flags.
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// This gateway's id in presence entries (a ULID made at start).
    pub gateway: Arc<str>,
    /// Above this many users, members get counts and no lists.
    pub list_max: usize,
    /// How long a user who left is still shown.
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub user: String,
    pub joined_at: i64,
}

/// What members are told of a room's presence: the count, and the list up to the limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
}

/// The changes since the last diff; over the list limit only the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joins: Option<Vec<Member>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaves: Option<Vec<Member>>,
}

/// What a room pushes to its members besides messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The whole list again (a room back under the list limit).
    Presence(Snapshot),
    Diff(Diff),
    Typing {
        user: String,
    },
}

struct Remote {
    first_seen: Instant,
    users: HashMap<String, i64>,
}

pub struct Presence {
    config: PresenceConfig,
    /// This gateway's users: connections in the room, and when the first joined.
    local: HashMap<String, (usize, i64)>,
    remote: HashMap<String, Remote>,
    /// What members were last told.
    sent: BTreeMap<String, i64>,
    /// Users in `sent` who are gone, since when.
    leaving: HashMap<String, Instant>,
    /// This gateway's users as last announced to the broker.
    announced: HashMap<String, i64>,
    /// Members were last told a count only.
    over: bool,
    typing: HashMap<String, Instant>,
}

impl Presence {
    pub fn new(config: PresenceConfig) -> Self {
        Self {
            config,
            local: HashMap::new(),
            remote: HashMap::new(),
            sent: BTreeMap::new(),
            leaving: HashMap::new(),
            announced: HashMap::new(),
            over: false,
            typing: HashMap::new(),
        }
    }

    /// This gateway's id.
    pub fn gateway(&self) -> &str {
        &self.config.gateway
    }

    /// One more connection of `user` in the room.
    pub fn join(&mut self, user: &str) {
        let entry = self.local.entry(user.to_owned()).or_insert_with(|| {
            METRICS.presence_entries.increment(1.0);
            (0, now_millis())
        });
        entry.0 += 1;
    }

    /// One connection of `user` fewer.
    pub fn leave(&mut self, user: &str) {
        if let Some(entry) = self.local.get_mut(user) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.local.remove(user);
                METRICS.presence_entries.decrement(1.0);
            }
        }
    }

    /// Another gateway's change; this gateway's own come back from the broker and are
    /// already known.
    pub fn apply(&mut self, gateway: &str, change: &PresenceChange) {
        if gateway == &*self.config.gateway {
            return;
        }
        let remote = self
            .remote
            .entry(gateway.to_owned())
            .or_insert_with(|| Remote { first_seen: Instant::now(), users: HashMap::new() });
        if change.full {
            remote.users.clear();
        }
        for leave in &change.leaves {
            remote.users.remove(leave);
        }
        for join in &change.joins {
            remote.users.insert(join.user.clone(), join.joined_at);
        }
    }

    /// Replaces what is known of other gateways with the broker's entries.
    pub fn load(&mut self, entries: &[PresenceEntry]) {
        // The broker only answers gateways alive when it read: not new ones.
        let established = Instant::now().checked_sub(NEW_GATEWAY).unwrap_or_else(Instant::now);
        let mut remote: HashMap<String, Remote> = HashMap::new();
        for entry in entries.iter().filter(|e| e.gateway != *self.config.gateway) {
            let first_seen = self.remote.get(&entry.gateway).map_or(established, |r| r.first_seen);
            let gateway =
                remote.entry(entry.gateway.clone()).or_insert_with(|| Remote { first_seen, users: HashMap::new() });
            gateway.users.insert(entry.user.clone(), entry.joined_at);
        }
        self.remote = remote;
    }

    /// Forgets the gateways that stopped heartbeating.
    pub fn keep(&mut self, live: &HashSet<String>) {
        self.remote.retain(|gateway, remote| live.contains(gateway) || remote.first_seen.elapsed() < NEW_GATEWAY);
    }

    /// Who is here now: every user of this gateway or a live one, joined at their earliest.
    fn view(&self) -> HashMap<String, i64> {
        let mut view: HashMap<String, i64> = HashMap::new();
        let local = self.local.iter().map(|(user, (_, at))| (user, *at));
        let remote = self.remote.values().flat_map(|r| r.users.iter().map(|(user, at)| (user, *at)));
        for (user, at) in local.chain(remote) {
            let joined = view.entry(user.clone()).or_insert(at);
            *joined = (*joined).min(at);
        }
        view
    }

    /// What members were last told: for a `presence` request.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_for(None)
    }

    /// What members were last told, with `joiner` (a member joining now, not yet in a
    /// batch) added: a member always finds itself in its `joined`.
    pub fn snapshot_for(&self, joiner: Option<&str>) -> Snapshot {
        let own = joiner.filter(|u| !self.sent.contains_key(*u)).and_then(|u| Some((u, self.local.get(u)?.1)));
        let count = self.sent.len() + usize::from(own.is_some());
        let members = (count <= self.config.list_max).then(|| {
            let mut members: Vec<Member> =
                self.sent.iter().map(|(user, at)| Member { user: user.clone(), joined_at: *at }).collect();
            if let Some((user, joined_at)) = own {
                let at = members.partition_point(|m| m.user.as_str() < user);
                members.insert(at, Member { user: user.to_owned(), joined_at });
            }
            members
        });
        Snapshot { count, members }
    }

    /// The batch members are told now, if anything changed, and whether another tick is
    /// due (someone is still within the grace).
    pub fn tick(&mut self, now: Instant) -> (Option<Notice>, bool) {
        let view = self.view();
        let mut leaves = Vec::new();
        let mut joins = Vec::new();
        let grace = self.config.grace;
        let gone: Vec<String> = self.sent.keys().filter(|u| !view.contains_key(*u)).cloned().collect();
        for user in gone {
            let since = *self.leaving.entry(user.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                self.leaving.remove(&user);
                if let Some(joined_at) = self.sent.remove(&user) {
                    leaves.push(Member { user, joined_at });
                }
            }
        }
        for (user, at) in view {
            self.leaving.remove(&user);
            if !self.sent.contains_key(&user) {
                self.sent.insert(user.clone(), at);
                joins.push(Member { user, joined_at: at });
            }
        }
        self.typing.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        let again = !self.leaving.is_empty();
        let count = self.sent.len();
        let changed = !joins.is_empty() || !leaves.is_empty();
        let notice = if count > self.config.list_max {
            self.over = true;
            changed.then_some(Notice::Diff(Diff { count, joins: None, leaves: None }))
        } else if std::mem::take(&mut self.over) {
            Some(Notice::Presence(self.snapshot()))
        } else {
            changed.then_some(Notice::Diff(Diff { count, joins: Some(joins), leaves: Some(leaves) }))
        };
        (notice, again)
    }

    /// This gateway's changes since its last announcement (`full`: its whole list), for
    /// the other gateways.
    pub fn announcement(&mut self, full: bool) -> Option<PresenceChange> {
        let joins: Vec<PresenceEntry> = self
            .local
            .iter()
            .filter(|(user, _)| full || !self.announced.contains_key(*user))
            .map(|(user, (_, at))| PresenceEntry { user: user.clone(), joined_at: *at, gateway: String::new() })
            .collect();
        let leaves: Vec<String> =
            self.announced.keys().filter(|user| !self.local.contains_key(*user)).cloned().collect();
        self.announced = self.local.iter().map(|(user, (_, at))| (user.clone(), *at)).collect();
        (full || !joins.is_empty() || !leaves.is_empty()).then_some(PresenceChange {
            joins,
            leaves: if full { Vec::new() } else { leaves },
            full,
        })
    }

    /// Whether `user`'s typing signal is relayed: at most one per [`TYPING_EVERY`].
    pub fn typing(&mut self, user: &str, now: Instant) -> bool {
        self.typing.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        match self.typing.get(user) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
            _ => {
                self.typing.insert(user.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(list_max: usize) -> Presence {
        Presence::new(PresenceConfig { gateway: "me".into(), list_max, grace: Duration::from_secs(3) })
    }

    fn users(notice: &Option<Notice>) -> (Vec<String>, Vec<String>) {
        let names = |m: &Option<Vec<Member>>| {
            let mut names: Vec<String> = m.iter().flatten().map(|m| m.user.clone()).collect();
            names.sort();
            names
        };
        match notice {
            Some(Notice::Diff(diff)) => (names(&diff.joins), names(&diff.leaves)),
            _ => (Vec::new(), Vec::new()),
        }
    }

    fn change(joins: &[&str], leaves: &[&str], full: bool) -> PresenceChange {
        PresenceChange {
            joins: joins
                .iter()
                .map(|u| PresenceEntry { user: (*u).into(), joined_at: 5, gateway: String::new() })
                .collect(),
            leaves: leaves.iter().map(|u| (*u).to_string()).collect(),
            full,
        }
    }

    #[test]
    fn a_user_is_one_entry_however_many_connections_and_gateways() {
        let mut p = presence(100);
        let now = Instant::now();
        p.join("ada");
        p.join("ada");
        p.apply("other", &change(&["ada", "bo"], &[], false));
        let (notice, _) = p.tick(now);
        assert_eq!(users(&notice), (vec!["ada".to_string(), "bo".to_string()], vec![]));
        assert_eq!(p.snapshot().count, 2);
        p.leave("ada");
        p.apply("other", &change(&[], &["ada"], false));
        assert_eq!(p.tick(now).0, None, "ada still has a connection here");
        p.leave("ada");
        let (notice, again) = p.tick(now);
        assert_eq!(notice, None, "within the grace nobody is told");
        assert!(again, "a tick is due when the grace ends");
        let (notice, again) = p.tick(now + Duration::from_secs(3));
        assert_eq!(users(&notice), (vec![], vec!["ada".to_string()]));
        assert!(!again);
    }

    #[test]
    fn a_joining_member_finds_itself_in_its_snapshot() {
        let mut p = presence(100);
        p.apply("g1", &change(&["bo"], &[], false));
        p.tick(Instant::now());
        p.join("ada");
        let snapshot = p.snapshot_for(Some("ada"));
        let users: Vec<&str> = snapshot.members.iter().flatten().map(|m| m.user.as_str()).collect();
        assert_eq!((snapshot.count, users), (2, vec!["ada", "bo"]));
        assert_eq!(p.snapshot().count, 1, "the others were not told yet");
    }

    #[test]
    fn a_user_back_within_the_grace_does_not_flicker() {
        let mut p = presence(100);
        let now = Instant::now();
        p.apply("g1", &change(&["ada"], &[], false));
        p.tick(now);
        p.apply("g1", &change(&[], &["ada"], false));
        assert_eq!(p.tick(now + Duration::from_secs(1)).0, None);
        p.apply("g2", &change(&["ada"], &[], false));
        assert_eq!(p.tick(now + Duration::from_secs(5)), (None, false));
        assert_eq!(p.snapshot().count, 1);
    }

    #[test]
    fn dead_gateways_are_dropped_and_own_echoes_ignored() {
        let mut p = presence(100);
        let now = Instant::now();
        p.apply("me", &change(&["ghost"], &[], false));
        p.load(&[PresenceEntry { user: "bo".into(), joined_at: 1, gateway: "g1".into() }]);
        p.tick(now);
        assert_eq!(p.snapshot().members.map(|m| m.len()), Some(1));
        for remote in p.remote.values_mut() {
            remote.first_seen = now - NEW_GATEWAY;
        }
        p.keep(&HashSet::new());
        p.tick(now);
        let (notice, _) = p.tick(now + Duration::from_secs(3));
        assert_eq!(users(&notice), (vec![], vec!["bo".to_string()]));
    }

    #[test]
    fn large_rooms_get_counts_and_the_list_again_below_the_limit() {
        let mut p = presence(2);
        let now = Instant::now();
        p.apply("g1", &change(&["a", "b", "c"], &[], false));
        assert_eq!(p.tick(now).0, Some(Notice::Diff(Diff { count: 3, joins: None, leaves: None })));
        assert_eq!(p.snapshot(), Snapshot { count: 3, members: None });
        p.apply("g1", &change(&[], &["c"], false));
        p.tick(now);
        match p.tick(now + Duration::from_secs(3)).0 {
            Some(Notice::Presence(Snapshot { count: 2, members: Some(members) })) => assert_eq!(members.len(), 2),
            other => panic!("expected the whole list again, got {other:?}"),
        }
    }

    #[test]
    fn announcements_carry_only_changes_unless_full() {
        let mut p = presence(100);
        p.join("ada");
        let first = p.announcement(false).expect("ada joined");
        assert_eq!((first.joins.len(), first.leaves.len()), (1, 0));
        assert_eq!(p.announcement(false), None);
        p.join("bo");
        p.leave("ada");
        let second = p.announcement(false).expect("changes");
        assert_eq!(second.joins.iter().map(|j| j.user.as_str()).collect::<Vec<_>>(), ["bo"]);
        assert_eq!(second.leaves, ["ada"]);
        let full = p.announcement(true).expect("full");
        assert!(full.full && full.joins.len() == 1 && full.leaves.is_empty());
    }

    #[test]
    fn typing_is_relayed_once_a_second_per_user() {
        let mut p = presence(100);
        let now = Instant::now();
        assert!(p.typing("ada", now));
        assert!(!p.typing("ada", now + Duration::from_millis(500)));
        assert!(p.typing("bo", now + Duration::from_millis(500)));
        assert!(p.typing("ada", now + TYPING_EVERY));
    }
}
