//! The connection core in-process: a real gateway over the embedded broker and store
//! (as `roomcast` runs), no services. Every operation, every limit and every
//! `ClientError` a connection can meet.

use std::sync::Arc;
use std::time::Duration;

use crate::presence::{Notice, Snapshot};
use async_trait::async_trait;
use fanout::MemoryBroker;
use persister::{Archive, BatcherConfig, HistoryQuery, Persister, RedbStore, StoreError, Written};
use roomcast_proto::{ChatMessage, RoomTouch};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Conn, RoomsPage, SendRequest, SEND_QUEUE};
use crate::admission::{Access, Offer};
use crate::auth::{mint, Auth};
use crate::error::ClientError;
use crate::limits::Limits;
use crate::sink::Sink;
use crate::Gateway;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

/// A gateway over an archive, and the directory its store lives in.
struct Fixture {
    gateway: Gateway,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// The embedded store, as `roomcast` runs it.
    fn embedded(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path()).expect("open the embedded store");
        let archive = Arc::new(Persister::new(Arc::new(store), BatcherConfig::default()));
        Fixture::over(archive, limits, Some(dir))
    }

    fn over(archive: Arc<dyn Archive>, limits: Limits, dir: Option<tempfile::TempDir>) -> Fixture {
        let access = Access { auth: Some(Auth::hs256(SECRET).expect("auth")), ..Access::default() };
        let gateway = Gateway::start(Arc::new(MemoryBroker::default()), archive, limits, access);
        Fixture { gateway, _dir: dir }
    }

    /// A connection as `user` (None: listen only), or with a token granting `rooms`.
    fn connect(&self, user: Option<&str>, rooms: Option<&str>) -> Arc<Conn> {
        let token = rooms.map(|r| mint(SECRET, user.unwrap_or("ada"), Some(r), Duration::from_secs(60)).expect("mint"));
        let offer = Offer { ip: None, origin: None, token: token.as_deref(), user };
        let admitted = self.gateway.hub.admission.admit(offer).expect("admitted");
        Conn::open(self.gateway.hub.clone(), "ws", admitted)
    }
}

/// What a room hands one member.
#[derive(Debug, PartialEq)]
pub(crate) enum Seen {
    Joined(Vec<u64>),
    Message(u64, String),
    Deleted(u64),
    Unavailable,
}

pub(crate) struct Probe(mpsc::UnboundedSender<Seen>);

impl Sink for Probe {
    fn joined(&self, _room: &str, page: &[ChatMessage], _truncated: bool, _presence: &Snapshot) {
        let _ = self.0.send(Seen::Joined(page.iter().filter(|m| !m.tombstone).map(|m| m.seq).collect()));
    }
    fn deliver(&self, msg: &ChatMessage, _ws_frame: &Utf8Bytes) {
        let _ = self.0.send(Seen::Message(msg.seq, msg.text.clone()));
    }
    fn deleted(&self, tombstone: &ChatMessage, _ws_frame: &Utf8Bytes) {
        let _ = self.0.send(Seen::Deleted(tombstone.seq));
    }
    fn notify(&self, _room: &str, _notice: &Notice, _ws_frame: &Utf8Bytes) {}
    fn unavailable(&self, _room: &str, _message: &str) {
        let _ = self.0.send(Seen::Unavailable);
    }
}

pub(crate) fn probe() -> (Arc<Probe>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Probe(tx)), rx)
}

pub(crate) async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, seen.recv()).await.expect("a room event in time").expect("the room is open")
}

pub(crate) fn request(room: &str, text: &str, client_id: Option<&str>) -> SendRequest {
    SendRequest { room: room.into(), text: text.into(), client_id: client_id.map(Into::into), username: None }
}

/// Sends and waits for the answer: the client id it carried, and the result.
pub(crate) async fn send(conn: &Conn, request: SendRequest) -> (String, Result<ChatMessage, ClientError>) {
    let (tx, rx) = oneshot::channel();
    conn.send(request, Box::new(move |sent| drop(tx.send((sent.client_id, sent.result)))));
    tokio::time::timeout(Duration::from_secs(20), rx).await.expect("answered in time").expect("answered")
}

async fn code(conn: &Conn, request: SendRequest) -> &'static str {
    send(conn, request).await.1.err().map_or("ok", |e| e.code())
}

#[tokio::test]
async fn join_send_and_history_go_through_the_embedded_tiers() {
    let fixture = Fixture::embedded(Limits::default());
    let (ada, bob) = (fixture.connect(Some("ada"), None), fixture.connect(Some("bob"), None));
    let (ada_sink, mut ada_seen) = probe();
    let (bob_sink, mut bob_seen) = probe();
    ada.join("lobby", None, ada_sink).expect("join");
    bob.join("lobby", None, bob_sink).expect("join");
    assert_eq!(next(&mut ada_seen).await, Seen::Joined(vec![]));
    assert_eq!(next(&mut bob_seen).await, Seen::Joined(vec![]));

    for text in ["one", "two", "three"] {
        let (_, stored) = send(&ada, request("lobby", text, None)).await;
        assert_eq!(stored.expect("stored").user, "ada");
    }
    let (client_id, stored) = send(&bob, request("lobby", "four", Some("b-1"))).await;
    assert_eq!((client_id.as_str(), stored.expect("stored").seq), ("b-1", 4));
    for seen in [&mut ada_seen, &mut bob_seen] {
        let mut got = vec![];
        for _ in 0..4 {
            got.push(next(seen).await);
        }
        let texts = ["one", "two", "three", "four"].map(String::from);
        assert_eq!(got, (1..=4).zip(texts).map(|(seq, text)| Seen::Message(seq, text)).collect::<Vec<_>>());
    }
    // A resend with the same client_id is the first copy, stored once.
    let (_, again) = send(&bob, request("lobby", "four", Some("b-1"))).await;
    assert_eq!(again.expect("the first copy").seq, 4);

    let page = bob.history("lobby", None, None).expect("history").await.expect("read");
    assert_eq!(page.iter().filter(|m| !m.tombstone).map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let older = bob.history("lobby", Some(3), Some(1)).expect("history").await.expect("read");
    assert_eq!(older.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);

    // A resync from a position gets what came after it, and nothing twice.
    let (again_sink, mut again_seen) = probe();
    ada.join("lobby", Some(2), again_sink).expect("resync");
    assert_eq!(next(&mut again_seen).await, Seen::Joined(vec![3, 4]));
}

#[tokio::test]
async fn every_refusal_of_a_send_carries_its_client_id_and_code() {
    let limits = Limits { max_text_chars: 10, ..Limits::default() };
    let fixture = Fixture::embedded(limits);
    let ada = fixture.connect(Some("ada"), None);
    ada.join("lobby", None, probe().0).expect("join");

    let refused = |room: &str, text: &str, id: &str| request(room, text, Some(id));
    let cases = [
        (refused("lobby", "", "c1"), "bad_request"),
        (refused("lobby", "far too long a text", "c2"), "too_large"),
        (refused("a b", "hi", "c3"), "invalid_room"),
        (refused("elsewhere", "hi", "c4"), "not_joined"),
        (request("lobby", "hi", Some(&"x".repeat(65))), "bad_request"),
    ];
    for (request, expected) in cases {
        let wanted = request.client_id.clone();
        let (client_id, result) = send(&ada, request).await;
        assert_eq!(result.err().map(|e| e.code()), Some(expected));
        assert_eq!(Some(client_id), wanted);
    }
    // A send without a client_id is answered with the one the server made up.
    let (client_id, result) = send(&ada, request("lobby", "hi", None)).await;
    assert!(result.is_ok() && client_id.len() == 26, "a ULID: {client_id}");
}

#[tokio::test]
async fn user_names_come_from_the_token_or_the_connection() {
    let fixture = Fixture::embedded(Limits::default());
    let listener = fixture.connect(None, None);
    listener.join("lobby", None, probe().0).expect("a listener may join");
    assert_eq!(code(&listener, request("lobby", "hi", None)).await, "invalid_user");
    let claimed = SendRequest { username: Some("no spaces".into()), ..request("lobby", "hi", None) };
    assert_eq!(code(&listener, claimed).await, "invalid_user");
    let claimed = SendRequest { username: Some("cy".into()), ..request("lobby", "hi", None) };
    assert_eq!(send(&listener, claimed).await.1.expect("stored").user, "cy");

    // With a token, the token's user wins over any claimed name.
    let ada = fixture.connect(Some("ada"), Some("*"));
    ada.join("lobby", None, probe().0).expect("join");
    let claimed = SendRequest { username: Some("mallory".into()), ..request("lobby", "hi", None) };
    assert_eq!(send(&ada, claimed).await.1.expect("stored").user, "ada");
}

#[tokio::test]
async fn a_token_limits_the_rooms_for_every_operation() {
    let fixture = Fixture::embedded(Limits::default());
    let ada = fixture.connect(Some("ada"), Some("team-*"));
    ada.join("team-red", None, probe().0).expect("granted");
    let forbidden = |r: Result<(), ClientError>| r.err().map(|e| e.code());
    assert_eq!(forbidden(ada.join("admin", None, probe().0)), Some("forbidden_room"));
    assert_eq!(ada.history("admin", None, None).err().map(|e| e.code()), Some("forbidden_room"));
    assert_eq!(code(&ada, request("admin", "hi", None)).await, "forbidden_room");
    assert_eq!(code(&ada, request("team-red", "hi", None)).await, "ok");
    // The directory shows a restricted token only the rooms it grants.
    let touch = |room: &str| RoomTouch { room: room.into(), ..RoomTouch::default() };
    fixture.gateway.hub.broker.touch(&[touch("admin"), touch("team-blue")]).await.expect("touch");
    let names = |page: RoomsPage| page.rooms.into_iter().map(|r| r.room).collect::<std::collections::BTreeSet<_>>();
    let visible = names(ada.rooms(None, None).await.expect("rooms"));
    assert_eq!(visible, ["team-blue", "team-red"].map(String::from).into(), "no room outside the grant");
    let everyone = fixture.connect(Some("bo"), None);
    assert!(names(everyone.rooms(None, None).await.expect("rooms")).contains("admin"));
}

#[tokio::test]
async fn rooms_per_connection_and_leave() {
    let fixture = Fixture::embedded(Limits { max_rooms_per_connection: 2, ..Limits::default() });
    let ada = fixture.connect(Some("ada"), None);
    ada.join("a", None, probe().0).expect("first");
    ada.join("b", None, probe().0).expect("second");
    assert_eq!(ada.join("c", None, probe().0).err().map(|e| e.code()), Some("too_many_rooms"));
    ada.join("b", Some(0), probe().0).expect("a resync is not one more room");
    ada.leave("a").expect("leave");
    ada.leave("never-joined").expect("leaving a room not joined is fine");
    assert_eq!(ada.leave("a b").err().map(|e| e.code()), Some("invalid_room"));
    ada.join("c", None, probe().0).expect("a place was freed");
    assert_eq!(code(&ada, request("a", "hi", None)).await, "not_joined");
}

#[tokio::test]
async fn frames_over_the_rate_are_refused() {
    let fixture = Fixture::embedded(Limits { frames_per_second: 1, frame_burst: 3, ..Limits::default() });
    let ada = fixture.connect(Some("ada"), None);
    for _ in 0..3 {
        ada.received().expect("within the burst");
    }
    assert_eq!(ada.received().err().map(|e| e.code()), Some("rate_limited"));
}

#[tokio::test]
async fn create_room_stores_a_directory_entry_and_checks_the_name() {
    let fixture = Fixture::embedded(Limits::default());
    let ada = fixture.connect(Some("ada"), None);
    let created = |name: &str| {
        let (tx, rx) = oneshot::channel();
        ada.create_room(name, Box::new(move |result| drop(tx.send(result))));
        rx
    };
    let room = created("  Rust fans ").await.expect("answered").expect("created");
    assert_eq!(room.len(), 26, "a ULID: {room}");
    let page = ada.hub().archive.history(HistoryQuery {
        room: crate::directory::DIRECTORY.into(),
        before: None,
        after: None,
        limit: 10,
    });
    let entries = page.await.expect("read the directory");
    let entry = crate::directory::Entry::decode(&entries[0].text).expect("an entry");
    assert_eq!((entry.room_id, entry.room_name.as_str()), (room, "Rust fans"));
    assert_eq!(created("   ").await.expect("answered").err().map(|e| e.code()), Some("bad_request"));
    assert_eq!(created(&"x".repeat(65)).await.expect("answered").err().map(|e| e.code()), Some("bad_request"));
}

#[tokio::test]
async fn closing_leaves_the_rooms_and_frees_the_place() {
    let fixture = Fixture::embedded(Limits { max_connections: 1, ..Limits::default() });
    let ada = fixture.connect(Some("ada"), None);
    let (sink, mut seen) = probe();
    ada.join("lobby", None, sink).expect("join");
    assert_eq!(next(&mut seen).await, Seen::Joined(vec![]));
    let offer = || Offer { ip: None, origin: None, token: None, user: Some("bob") };
    assert_eq!(fixture.gateway.hub.admission.admit(offer()).err().map(|e| e.code()), Some("server_full"));
    assert_eq!(fixture.gateway.connections(), 1);
    ada.close("client_close");
    ada.close("client_close");
    assert_eq!(fixture.gateway.connections(), 0, "counted once");
    let bob =
        Conn::open(fixture.gateway.hub.clone(), "ws", fixture.gateway.hub.admission.admit(offer()).expect("freed"));
    bob.join("lobby", None, probe().0).expect("join");
    send(&bob, request("lobby", "after ada left", None)).await.1.expect("stored");
    // The room let go of ada's sink without handing it bob's message.
    assert_eq!(tokio::time::timeout(WAIT, seen.recv()).await.expect("the room lets go"), None);
}

/// An archive whose writes wait for ever, or fail at once.
struct Broken {
    writes_fail: bool,
}

#[async_trait]
impl Archive for Broken {
    async fn write(&self, _msg: ChatMessage) -> Result<Written, StoreError> {
        if self.writes_fail {
            return Err(StoreError::Unavailable("the disk is on fire".into()));
        }
        std::future::pending().await
    }
    async fn history(&self, _query: HistoryQuery) -> Result<Vec<ChatMessage>, StoreError> {
        Ok(vec![])
    }
    async fn resolve(&self, _room: &str, _from: u64, _to: u64) -> Result<Vec<ChatMessage>, StoreError> {
        Ok(vec![])
    }
    async fn max_seq(&self, _room: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn delete(&self, _room: &str, _seq: u64) -> Result<Option<ChatMessage>, StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_failing_store_is_unavailable() {
    let fixture = Fixture::over(Arc::new(Broken { writes_fail: true }), Limits::default(), None);
    let ada = fixture.connect(Some("ada"), None);
    ada.join("lobby", None, probe().0).expect("join");
    let (client_id, result) = send(&ada, request("lobby", "hi", Some("c1"))).await;
    assert_eq!((client_id.as_str(), result.err().map(|e| e.code())), ("c1", Some("unavailable")));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_store_fills_the_queue_then_times_out_each_send() {
    let fixture = Fixture::over(Arc::new(Broken { writes_fail: false }), Limits::default(), None);
    let ada = fixture.connect(Some("ada"), None);
    ada.join("lobby", None, probe().0).expect("join");
    let (tx, mut answers) = mpsc::unbounded_channel();
    // One send runs, SEND_QUEUE wait behind it: the next is refused at once.
    for n in 0..SEND_QUEUE + 2 {
        let tx = tx.clone();
        ada.send(request("lobby", "hi", Some(&format!("c{n}"))), Box::new(move |sent| drop(tx.send(sent))));
        tokio::task::yield_now().await;
    }
    let refused = answers.recv().await.expect("the refusal");
    assert_eq!(refused.client_id, format!("c{}", SEND_QUEUE + 1));
    assert_eq!(refused.result.err().map(|e| e.code()), Some("overloaded"));
    // Every queued send is answered by its deadline (time is paused, so this is instant).
    let sent = answers.recv().await.expect("the first answer");
    assert_eq!((sent.client_id.as_str(), sent.result.err().map(|e| e.code())), ("c0", Some("timeout")));
}

#[tokio::test]
async fn the_embedded_broker_holds_a_user_to_one_budget_across_connections() {
    let limits = Limits { user_sends_per_second: 0.5, user_send_burst: 2, ..Limits::default() };
    let fixture = Fixture::embedded(limits);
    let (tab1, tab2, bob) =
        (fixture.connect(Some("ada"), None), fixture.connect(Some("ada"), None), fixture.connect(Some("bob"), None));
    for conn in [&tab1, &tab2, &bob] {
        conn.join("lobby", None, probe().0).expect("join");
    }
    assert_eq!(code(&tab1, request("lobby", "one", Some("1"))).await, "ok");
    assert_eq!(code(&tab2, request("lobby", "two", Some("2"))).await, "ok");
    let (_, third) = send(&tab1, request("lobby", "three", Some("3"))).await;
    let refused = third.expect_err("over the user's budget, whichever tab sends");
    assert_eq!(refused.code(), "rate_limited");
    assert!(refused.to_string().contains("across all your connections"), "{refused}");
    assert_eq!(code(&bob, request("lobby", "mine", Some("b"))).await, "ok", "another user's budget is its own");
}
