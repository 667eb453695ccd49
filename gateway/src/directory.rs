//! The room directory: rooms created by name (the original app's `create_room`) are
//! stored as messages of the system room [`DIRECTORY`], one entry each, so the directory
//! survives restarts and is the same on every gateway.

use serde::{Deserialize, Serialize};

/// The system room holding the directory; its name cannot be a client room name.
pub const DIRECTORY: &str = "~rooms";
/// The user the entries are stored as.
pub const SYSTEM_USER: &str = "system";

/// One created room, as stored in a directory message's text.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub room_id: String,
    pub room_name: String,
}

impl Entry {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| {
            tracing::error!(%err, "cannot encode a directory entry");
            String::new()
        })
    }

    /// None for a text that is not an entry (the directory skips it).
    pub fn decode(text: &str) -> Option<Entry> {
        serde_json::from_str(text).ok()
    }
}
