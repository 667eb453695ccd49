//! The `/ws` client protocol: JSON text frames, one object each (docs/PROTOCOL.md).

use roomcast_proto::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// What a client may send.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Join { room: String, since: Option<u64> },
    Leave { room: String },
    Send { room: String, text: String, client_id: Option<String> },
    History { room: String, before: Option<u64>, limit: Option<u32> },
}

const CLIENT_TYPES: &[&str] = &["join", "leave", "send", "history"];

/// Why a client frame was refused; `code` goes to the client, `kind` to the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, kind: &'static str, message: impl Into<String>) -> Self {
        Self { code, kind, message: message.into() }
    }
}

/// Decodes and validates one text frame.
pub fn decode(text: &str, limits: &Limits) -> Result<ClientFrame, Refusal> {
    if text.len() > limits.max_frame_bytes {
        return Err(Refusal::new(
            "too_large",
            "too_large",
            format!("frame is {} bytes; the limit is {}", text.len(), limits.max_frame_bytes),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|err| Refusal::new("bad_request", "invalid_json", format!("frame is not valid JSON: {err}")))?;
    let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_owned();
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        return Err(Refusal::new(
            "bad_request",
            "unknown_type",
            format!("unknown frame type {kind:?}; expected one of {}", CLIENT_TYPES.join(", ")),
        ));
    }
    let frame: ClientFrame = serde_json::from_value(value)
        .map_err(|err| Refusal::new("bad_request", "invalid_field", format!("bad {kind} frame: {err}")))?;
    frame.validate(limits)?;
    Ok(frame)
}

impl ClientFrame {
    fn validate(&self, limits: &Limits) -> Result<(), Refusal> {
        match self {
            ClientFrame::Join { room, .. } | ClientFrame::Leave { room } | ClientFrame::History { room, .. } => {
                limits.check_room(room)
            }
            ClientFrame::Send { room, text, client_id } => {
                limits.check_room(room)?;
                limits.check_text(text)?;
                match client_id {
                    Some(id) if id.is_empty() || id.len() > limits.max_client_id_bytes => Err(Refusal::new(
                        "bad_request",
                        "invalid_field",
                        format!("client_id must be 1 to {} bytes", limits.max_client_id_bytes),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// A message as clients see it (tombstones are never shown).
#[derive(Debug, Serialize)]
pub struct WireMessage<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub id: &'a str,
    pub user: &'a str,
    pub text: &'a str,
    pub ts: i64,
}

impl<'a> From<&'a ChatMessage> for WireMessage<'a> {
    fn from(m: &'a ChatMessage) -> Self {
        WireMessage { room: &m.room, seq: m.seq, id: &m.id, user: &m.user, text: &m.text, ts: m.ts }
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
    },
    Message(WireMessage<'a>),
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
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
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

/// The visible messages of a page, oldest first.
pub fn visible(messages: &[ChatMessage]) -> Vec<WireMessage<'_>> {
    messages.iter().filter(|m| !m.tombstone).map(WireMessage::from).collect()
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
        let limits = Limits::default();
        assert_eq!(
            decode(r#"{"type":"join","room":"a","since":3}"#, &limits),
            Ok(ClientFrame::Join { room: "a".into(), since: Some(3) })
        );
        assert_eq!(
            decode(r#"{"type":"send","room":"a","text":"hi","client_id":"c"}"#, &limits),
            Ok(ClientFrame::Send { room: "a".into(), text: "hi".into(), client_id: Some("c".into()) })
        );
        assert_eq!(decode(r#"{"type":"leave","room":"a"}"#, &limits), Ok(ClientFrame::Leave { room: "a".into() }));
    }

    #[test]
    fn refuses_bad_frames_with_a_code_and_a_kind() {
        let limits = Limits::default();
        let kind = |text: &str| decode(text, &limits).err().map(|r| (r.code, r.kind));
        assert_eq!(kind("nope"), Some(("bad_request", "invalid_json")));
        assert_eq!(kind(r#"{"type":"dance"}"#), Some(("bad_request", "unknown_type")));
        assert_eq!(kind(r#"{"type":"join","room":5}"#), Some(("bad_request", "invalid_field")));
        assert_eq!(kind(r#"{"type":"join","room":"a","extra":1}"#), Some(("bad_request", "invalid_field")));
        assert_eq!(kind(r#"{"type":"join","room":"a b"}"#), Some(("invalid_room", "invalid_field")));
        assert_eq!(
            kind(&format!(r#"{{"type":"join","room":"{}"}}"#, "r".repeat(65))),
            Some(("invalid_room", "invalid_field"))
        );
        assert_eq!(kind(&"x".repeat(16 * 1024 + 1)), Some(("too_large", "too_large")));
        assert_eq!(kind(r#"{"type":"send","room":"a","text":""}"#), Some(("bad_request", "invalid_field")));
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
