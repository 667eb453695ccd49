//! Property-based fuzzing (proptest) of what clients control: the `/ws` frame decoder
//! and the Socket.IO event arguments and mapping. Each property runs a bounded number of
//! cases in `cargo test`; the seed corpus in `gateway/fuzz-corpus/` replays frames with
//! their expected answers, and proptest keeps any failure it finds in
//! `gateway/proptest-regressions/` (committed) so it is replayed first from then on.

use proptest::prelude::*;
use roomcast_proto::ChatMessage;
use serde_json::Value;

use crate::conn::check_fields;
use crate::error::ClientError;
use crate::limits::Limits;
use crate::protocol::{decode, ClientFrame};
use crate::sio::{
    serialized, CreateRoom, HistoryArgs, JoinArgs, JoinRoomArgs, OriginalMessage, OriginalSend, SendArgs,
};

/// Every code a frame's own content may be refused with (docs/PROTOCOL.md).
const CODES: &[&str] = &["bad_request", "invalid_room", "too_large"];

/// What the connection core answers a frame before looking at any state: the decoder's
/// refusal, or that of the fields' checks.
fn answer(text: &str, limits: &Limits) -> Result<ClientFrame, ClientError> {
    let frame = decode(text, limits.max_frame_bytes).map_err(|undecoded| undecoded.error)?;
    match &frame {
        ClientFrame::Send { room, text, client_id } => check_fields(limits, room, Some(text), client_id.as_deref()),
        ClientFrame::Join { room, .. }
        | ClientFrame::Leave { room }
        | ClientFrame::History { room, .. }
        | ClientFrame::Presence { room }
        | ClientFrame::Typing { room } => check_fields(limits, room, None, None),
        ClientFrame::Rooms { .. } | ClientFrame::Refresh { .. } => Ok(()),
    }?;
    Ok(frame)
}

/// JSON values of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("join"),
            Just("send"),
            Just("leave"),
            Just("history"),
            Just("presence"),
            Just("typing"),
            Just("rooms"),
            Just("refresh"),
            Just("room"),
            Just("$gt")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("room".to_owned()),
                    Just("text".to_owned()),
                    Just("since".to_owned()),
                    Just("client_id".to_owned()),
                    Just("roomId".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like the protocol, with each field possibly wrong.
fn frame_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("join".to_owned()),
        Just("send".to_owned()),
        Just("leave".to_owned()),
        Just("history".to_owned()),
        ".{0,6}"
    ];
    let room = prop_oneof!["[a-z0-9_.-]{1,64}", ".{0,80}"];
    let text = prop_oneof![".{0,50}", ".{3990,4010}"];
    (kind, room, text, any::<Option<u64>>(), prop::option::of(".{0,70}")).prop_map(|(kind, room, text, since, id)| {
        let mut v = serde_json::json!({"type": kind, "room": room, "text": text, "since": since});
        if let Some(id) = id {
            v["client_id"] = Value::from(id);
        }
        if kind.as_str() != "send" {
            v.as_object_mut().map(|o| o.remove("text"));
        }
        if kind.as_str() != "join" {
            v.as_object_mut().map(|o| o.remove("since"));
        }
        v.to_string()
    })
}

/// Decoding either accepts a frame that satisfies every limit, or refuses it with a
/// documented code and a message that says what is wrong.
fn check_decode(text: &str) {
    let limits = Limits::default();
    match answer(text, &limits) {
        Ok(ClientFrame::Send { room, text, client_id }) => {
            assert!(limits.check_room(&room).is_ok() && limits.check_text(&text).is_ok());
            assert!(client_id.is_none_or(|id| !id.is_empty() && id.len() <= limits.max_client_id_bytes));
        }
        Ok(
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::History { room, .. }
            | ClientFrame::Presence { room }
            | ClientFrame::Typing { room },
        ) => {
            assert!(limits.check_room(&room).is_ok());
        }
        Ok(ClientFrame::Rooms { .. } | ClientFrame::Refresh { .. }) => {}
        Err(refusal) => {
            assert!(CODES.contains(&refusal.code()), "undocumented code {}", refusal.code());
            assert!(!refusal.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_text_decodes_or_is_refused(text in ".{0,300}") {
        check_decode(&text);
    }

    #[test]
    fn any_json_decodes_or_is_refused(value in json_value()) {
        check_decode(&value.to_string());
    }

    #[test]
    fn protocol_shaped_frames_decode_or_are_refused(text in frame_like()) {
        check_decode(&text);
    }

    #[test]
    fn socketio_arguments_of_any_shape_parse_or_are_refused(value in json_value()) {
        // Never a panic, whatever the shape; join_room takes its room from the first argument.
        let _ = serde_json::from_value::<OriginalSend>(value.clone());
        let _ = serde_json::from_value::<CreateRoom>(value.clone());
        let _ = serde_json::from_value::<JoinArgs>(value.clone());
        let _ = serde_json::from_value::<SendArgs>(value.clone());
        let _ = serde_json::from_value::<HistoryArgs>(value.clone());
        if let Ok(JoinRoomArgs(room, _)) = serde_json::from_value::<JoinRoomArgs>(value.clone()) {
            let first = value.as_array().and_then(|a| a.first()).and_then(Value::as_str).map(str::to_owned);
            prop_assert_eq!(room, first);
        }
    }

    #[test]
    fn room_message_carries_the_stored_message(seq in any::<u64>(), user in ".{0,32}", text in ".{0,200}", ts in 0i64..4_102_444_800_000) {
        let msg = ChatMessage { room: "r".into(), seq, id: "id".into(), user: user.clone(), text: text.clone(), ts, client_id: String::new(), ..Default::default() };
        // A JSON string, as class-transformer's deserialize() reads it, of exactly these three fields.
        let event: Value = serde_json::from_str(&serialized(&OriginalMessage::from(&msg))).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(event.as_object().map(|o| o.len()), Some(3));
        prop_assert_eq!(&event["message"], &Value::from(text));
        prop_assert_eq!(&event["username"], &Value::from(user));
        let time = event["time"].as_str().unwrap_or_default();
        let (hours, minutes) = time.split_once(':').unwrap_or_default();
        let minute_of_day = ts / 60_000 % 1440;
        prop_assert_eq!(hours.parse::<i64>().ok(), Some(minute_of_day / 60), "time {}", time);
        prop_assert_eq!(minutes.parse::<i64>().ok(), Some(minute_of_day % 60), "time {}", time);
        prop_assert!(!hours.starts_with('0') || hours == "0", "no zero padding: {}", time);
    }
}

/// The seed corpus: one case per line, `CODE<TAB>FRAME` (`ok` for accepted frames).
#[test]
fn the_seed_corpus_gets_its_recorded_answers() {
    let corpus = include_str!("../fuzz-corpus/ws-frames.tsv");
    let limits = Limits::default();
    let mut cases = 0;
    for (n, line) in corpus.lines().enumerate().filter(|(_, l)| !l.starts_with('#') && !l.is_empty()) {
        let (expected, frame) = line.split_once('\t').unwrap_or_else(|| panic!("line {}: CODE<TAB>FRAME", n + 1));
        let got = match answer(frame, &limits) {
            Ok(_) => "ok",
            Err(refusal) => refusal.code(),
        };
        assert_eq!(got, expected, "line {}: {frame}", n + 1);
        check_decode(frame);
        cases += 1;
    }
    assert!(cases >= 20, "the corpus holds {cases} cases");
}
