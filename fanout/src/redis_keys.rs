//! The names of the Redis broker's keys and channels.
//!
//! In a Redis Cluster every key and channel of a room carries the room as its hash tag
//! (`roomcast:seq:{lobby}`), so they share one slot: a room's scripts touch one shard,
//! and its sharded channel lives on the shard that hands out its seqs. One Redis keeps
//! the plain names (`roomcast:seq:lobby`) and classic pub/sub, so that a fanout of this
//! version and an older one agree on a room's counter and channel during a rollout.

const SEQ: &str = "roomcast:seq:";
const CHANNEL: &str = "roomcast:room:";
const SIGNAL: &str = "roomcast:signal:";
const PRESENCE: &str = "roomcast:presence:";
const ANNOUNCED: &str = "roomcast:announced:";
const USER_BUDGET: &str = "roomcast:budget:user:";
const ROOM_BUDGET: &str = "roomcast:budget:room:";
/// Live gateways, scored by their last heartbeat: one key, so one slot.
pub const GATEWAYS: &str = "roomcast:gateways";
/// Bans in force: a hash of user -> the encoded `UserBan`.
pub const BANS: &str = "roomcast:bans";
/// The directory's two keys share the `{directory}` tag, so one script trims both.
pub const DIRECTORY_ACTIVE: &str = "roomcast:{directory}:active";
pub const DIRECTORY_NAMES: &str = "roomcast:{directory}:names";

#[derive(Clone, Copy, Debug)]
pub struct Keys {
    sharded: bool,
}

impl Keys {
    /// `sharded` for a Redis Cluster.
    pub fn new(sharded: bool) -> Self {
        Self { sharded }
    }

    fn of(self, prefix: &str, room: &str) -> String {
        if self.sharded {
            format!("{prefix}{{{room}}}")
        } else {
            format!("{prefix}{room}")
        }
    }

    /// The room's seq counter.
    pub fn seq(self, room: &str) -> String {
        self.of(SEQ, room)
    }

    /// The room's message channel.
    pub fn channel(self, room: &str) -> String {
        self.of(CHANNEL, room)
    }

    /// The room's signal channel (presence and typing).
    pub fn signal(self, room: &str) -> String {
        self.of(SIGNAL, room)
    }

    /// The room's presence hash.
    pub fn presence(self, room: &str) -> String {
        self.of(PRESENCE, room)
    }

    /// When each gateway last announced the room's presence (a hash beside the presence
    /// hash, in its slot: older releases read every field of the presence hash as a user).
    pub fn announced(self, room: &str) -> String {
        self.of(ANNOUNCED, room)
    }

    /// A user's send budget (its TAT); in a cluster, in the user's own slot.
    pub fn user_budget(self, user: &str) -> String {
        self.of(USER_BUDGET, user)
    }

    /// A room's send budget, in the room's slot.
    pub fn room_budget(self, room: &str) -> String {
        self.of(ROOM_BUDGET, room)
    }

    /// Both channels of a room, as one subscribe command takes them.
    pub fn channels(self, room: &str) -> Vec<String> {
        vec![self.channel(room), self.signal(room)]
    }

    /// The publish command of the room channels.
    pub fn publish(self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// True for a signal channel, false for a message channel.
    pub fn is_signal(channel: &str) -> bool {
        channel.starts_with(SIGNAL)
    }

    /// The room of a message channel; `None` for any other channel.
    pub fn room_of(self, channel: &str) -> Option<&str> {
        let room = channel.strip_prefix(CHANNEL)?;
        if self.sharded {
            room.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(room)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    /// Redis Cluster's rule: a key's slot is hashed from the text between its first `{`
    /// and the next `}`, when that is not empty.
    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')?;
        Some(&key[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
    }

    #[test]
    fn a_rooms_keys_share_its_hash_tag_in_a_cluster_and_stay_plain_otherwise() {
        let cluster = Keys::new(true);
        // Room names are A-Z a-z 0-9 _ . - (and `~` for the system's), never braces.
        for room in ["lobby", "~rooms", "a.b-c_9"] {
            let keys = [cluster.seq(room), cluster.channel(room), cluster.signal(room), cluster.presence(room)];
            for key in keys.into_iter().chain([cluster.announced(room)]) {
                assert_eq!(hash_tag(&key), Some(room), "{key}");
            }
        }
        assert_eq!(cluster.room_of(&cluster.channel("a.b-c_9")), Some("a.b-c_9"));
        assert_eq!(cluster.room_of(&cluster.signal("lobby")), None);
        let single = Keys::new(false);
        assert_eq!(single.seq("lobby"), "roomcast:seq:lobby");
        assert_eq!(hash_tag(&single.presence("lobby")), None);
        assert_eq!(single.room_of("roomcast:room:lobby"), Some("lobby"));
        assert_eq!((single.publish(), cluster.publish()), ("PUBLISH", "SPUBLISH"));
    }
}
