//! The `/ws` client protocol: JSON text frames, one object each (docs/PROTOCOL.md).

use roomcast_proto::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Malformed};
use crate::presence::{Member, Notice, Snapshot};

/// What a client may send.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Join { room: String, since: Option<u64> },
    Leave { room: String },
    Send { room: String, text: String, client_id: Option<String> },
    History { room: String, before: Option<u64>, limit: Option<u32> },
    Presence { room: String },
    Typing { room: String },
    Rooms { offset: Option<u32>, limit: Option<u32> },
    Refresh { token: String },
}

const CLIENT_TYPES: &[&str] = &["join", "leave", "send", "history", "presence", "typing", "rooms", "refresh"];

/// A frame that could not be decoded, with the `client_id` it carried, if it got that far.
#[derive(Debug, PartialEq)]
pub struct Undecoded {
    pub error: ClientError,
    pub client_id: Option<String>,
}

/// Decodes one text frame; the values in it are checked by the connection core.
pub fn decode(text: &str, max_frame_bytes: usize) -> Result<ClientFrame, Undecoded> {
    let refuse = |error, client_id| Undecoded { error, client_id };
    if text.len() > max_frame_bytes {
        let message = format!("frame is {} bytes; the limit is {max_frame_bytes}", text.len());
        return Err(refuse(ClientError::TooLarge(message), None));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        refuse(ClientError::bad_request(Malformed::Json, format!("frame is not valid JSON: {err}")), None)
    })?;
    let client_id = value.get("client_id").and_then(|c| c.as_str()).map(str::to_owned);
    let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_owned();
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let message = format!("unknown frame type {kind:?}; expected one of {}", CLIENT_TYPES.join(", "));
        return Err(refuse(ClientError::bad_request(Malformed::UnknownType, message), client_id));
    }
    serde_json::from_value(value).map_err(|err| {
        refuse(ClientError::bad_request(Malformed::Field, format!("bad {kind} frame: {err}")), client_id)
    })
}

/// The `client_id` of a frame that decoded, for answering it.
impl ClientFrame {
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send { client_id, .. } => client_id.as_deref(),
            _ => None,
        }
    }
}

/// A message as clients see it. Sealed holes are never shown; a message removed by
/// moderation is shown with `deleted: true` and no text.
#[derive(Debug, Serialize)]
pub struct WireMessage<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub id: &'a str,
    pub user: &'a str,
    pub text: &'a str,
    pub ts: i64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl<'a> From<&'a ChatMessage> for WireMessage<'a> {
    fn from(m: &'a ChatMessage) -> Self {
        WireMessage { room: &m.room, seq: m.seq, id: &m.id, user: &m.user, text: &m.text, ts: m.ts, deleted: m.deleted }
    }
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Joined {
        room: &'a str,
        messages: Vec<WireMessage<'a>>,
        /// True when more was missed than one join recovers: join again with `since`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        presence: &'a Snapshot,
    },
    Presence {
        room: &'a str,
        #[serde(flatten)]
        presence: &'a Snapshot,
    },
    PresenceDiff {
        room: &'a str,
        count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        joins: Option<&'a [Member]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        leaves: Option<&'a [Member]>,
    },
    Typing {
        room: &'a str,
        user: &'a str,
    },
    Rooms {
        rooms: Vec<RoomEntry>,
        total: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    Message(WireMessage<'a>),
    /// A message members were sent was removed by moderation.
    Deleted {
        room: &'a str,
        seq: u64,
        id: &'a str,
    },
    Ack {
        client_id: &'a str,
        room: &'a str,
        seq: u64,
        id: &'a str,
        ts: i64,
    },
    History {
        room: &'a str,
        messages: Vec<WireMessage<'a>>,
    },
    Left {
        room: &'a str,
    },
    /// The token has expired: send `refresh` within `grace_seconds`, or be closed (4401).
    RefreshNeeded {
        grace_seconds: f64,
    },
    /// A refresh was taken: the new token's `exp`, and the joined rooms it does not grant,
    /// which were left.
    Refreshed {
        exp: u64,
        left: &'a [String],
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// A WebTransport session's last line: why the server closes it (browsers are not
    /// shown QUIC's close code).
    Close {
        code: u32,
        reason: &'a str,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|err| {
            format!(r#"{{"type":"error","code":"internal","message":"cannot encode reply: {err}"}}"#)
        })
    }
}

/// One room of the directory, as clients (and the server API) see it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RoomEntry {
    pub room: String,
    pub name: String,
    /// Distinct users present.
    pub members: u64,
    /// Unix milliseconds of the last message.
    pub active_at: i64,
}

/// A room's notice as a `/ws` frame.
pub fn notice_frame(room: &str, notice: &Notice) -> String {
    match notice {
        Notice::Presence(presence) => ServerFrame::Presence { room, presence }.to_json(),
        Notice::Diff(diff) => ServerFrame::PresenceDiff {
            room,
            count: diff.count,
            joins: diff.joins.as_deref(),
            leaves: diff.leaves.as_deref(),
        }
        .to_json(),
        Notice::Typing { user } => ServerFrame::Typing { room, user }.to_json(),
    }
}

/// About how many bytes a message takes in a frame: its text and user, plus the rest.
pub fn wire_size(m: &ChatMessage) -> usize {
    m.text.len() + m.user.len() + 64
}

/// The newest messages of a page (oldest first) that fit `max_bytes`, at least one: a
/// history reply must fit the client's send queue, or asking for it would close the
/// client as a slow consumer. The client pages back with `before`.
pub fn newest_within(page: &[ChatMessage], max_bytes: usize) -> &[ChatMessage] {
    let mut bytes = 0;
    let fits = page.iter().rev().take_while(|m| {
        bytes += wire_size(m);
        bytes <= max_bytes
    });
    let keep = fits.count().max(1).min(page.len());
    &page[page.len() - keep..]
}

/// The visible messages of a page, oldest first: removed ones as such, no sealed holes.
pub fn visible(messages: &[ChatMessage]) -> Vec<WireMessage<'_>> {
    messages.iter().filter(|m| !m.tombstone || m.deleted).map(WireMessage::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, text: &str) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: seq.to_string(),
            user: "u".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_history_page_keeps_its_newest_messages_that_fit() {
        let page: Vec<ChatMessage> = (1..=10).map(|n| msg(n, &"x".repeat(1000))).collect();
        let seqs = |p: &[ChatMessage]| p.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(newest_within(&page, 3 * 1065)), vec![8, 9, 10]);
        assert_eq!(seqs(newest_within(&page, 10)), vec![10], "at least one");
        assert_eq!(seqs(newest_within(&page, usize::MAX)).len(), 10);
        assert!(newest_within(&[], 10).is_empty());
    }

    #[test]
    fn decodes_the_documented_frames() {
        assert_eq!(
            decode(r#"{"type":"join","room":"a","since":3}"#, 1024),
            Ok(ClientFrame::Join { room: "a".into(), since: Some(3) })
        );
        assert_eq!(
            decode(r#"{"type":"send","room":"a","text":"hi","client_id":"c"}"#, 1024),
            Ok(ClientFrame::Send { room: "a".into(), text: "hi".into(), client_id: Some("c".into()) })
        );
        assert_eq!(decode(r#"{"type":"leave","room":"a"}"#, 1024), Ok(ClientFrame::Leave { room: "a".into() }));
    }

    #[test]
    fn refuses_bad_frames_with_a_code_a_kind_and_the_client_id_it_got_to() {
        let refused = |text: &str| decode(text, 16 * 1024).err().map(|u| (u.error.code(), u.error.kind(), u.client_id));
        assert_eq!(refused("nope"), Some(("bad_request", Some("invalid_json"), None)));
        assert_eq!(refused(r#"{"type":"dance"}"#), Some(("bad_request", Some("unknown_type"), None)));
        assert_eq!(refused(r#"{"type":"join","room":5}"#), Some(("bad_request", Some("invalid_field"), None)));
        assert_eq!(
            refused(r#"{"type":"join","room":"a","extra":1}"#),
            Some(("bad_request", Some("invalid_field"), None))
        );
        assert_eq!(refused(&"x".repeat(16 * 1024 + 1)), Some(("too_large", Some("too_large"), None)));
        assert_eq!(
            refused(r#"{"type":"send","room":"a","text":5,"client_id":"c1"}"#),
            Some(("bad_request", Some("invalid_field"), Some("c1".into())))
        );
    }

    #[test]
    fn server_frames_match_the_protocol() {
        let msg = ChatMessage {
            room: "a".into(),
            seq: 2,
            id: "i".into(),
            user: "u".into(),
            text: "<b>".into(),
            ts: 7,
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(WireMessage::from(&msg)).to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type":"message","room":"a","seq":2,"id":"i","user":"u","text":"<b>","ts":7})
        );
    }
}
