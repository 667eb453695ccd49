//! Presence, typing and the room directory (issue #15), against real processes: users
//! (not connections) present across gateways, with a grace before a leave; typing relayed
//! to the other users only, at most one a second; a killed gateway's users dropped by the
//! others; a join storm told in a few batched diffs; the directory paged with member
//! counts; bad input refused with its codes; and none of it stored or given a seq.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{bin, metric, start_roomcast, Client, Stack, WAIT};
use tokio_tungstenite::tungstenite::Message;

/// `--presence-list-max`'s default: over it, presence carries only a count.
const LIST_MAX: u64 = 100;
/// `--presence-grace-seconds`'s default.
const GRACE: Duration = Duration::from_secs(3);
/// How long to watch for a leave that must not come after a close: the grace, the 250 ms
/// tick and the way across gateways, with room to spare.
const QUIET: Duration = Duration::from_secs(6);
/// A HS256 secret for the tests that use tokens.
const SECRET: &str = "test-secret-test-secret-test-secret";

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit an i64")
}

/// Unix milliseconds of now or before (not seconds, not a counter).
fn assert_millis(at: i64, what: &str) {
    assert!(
        (1_600_000_000_000..=now_ms() + 60_000).contains(&at),
        "{what}: {at} is not Unix milliseconds of now or before"
    );
}

/// A room's presence as a client knows it.
#[derive(Debug, Clone, Default)]
struct View {
    count: u64,
    /// user -> joined_at; None while the room is over LIST_MAX (a count only).
    members: Option<BTreeMap<String, i64>>,
}

impl View {
    /// From a full presence: a `presence` frame, or a `joined` frame's `presence`.
    fn full(presence: &Value, what: &str) -> View {
        let count =
            presence["count"].as_u64().unwrap_or_else(|| panic!("{what}: a presence without a count: {presence}"));
        let members = presence.get("members").map(|list| members_of(list, what));
        if count > LIST_MAX {
            assert!(
                members.is_none(),
                "{what}: {count} users is over {LIST_MAX}: no members list expected: {presence}"
            );
        } else {
            let listed = members.as_ref().map(BTreeMap::len).unwrap_or_else(|| {
                panic!("{what}: {count} users is within {LIST_MAX}: the members list is expected: {presence}")
            });
            assert_eq!(listed as u64, count, "{what}: count and members disagree: {presence}");
        }
        View { count, members }
    }

    /// Applies a `presence_diff` as set operations keyed by user (leaves, then joins: a
    /// join of a user already listed replaces it).
    fn apply(&mut self, diff: &Value) {
        let count = diff["count"].as_u64().unwrap_or_else(|| panic!("a presence_diff without a count: {diff}"));
        let lists = diff.get("joins").is_some() || diff.get("leaves").is_some();
        if count > LIST_MAX {
            assert!(!lists, "over {LIST_MAX} users a presence_diff carries only the count: {diff}");
            self.members = None;
        } else if lists {
            let members = self.members.as_mut().unwrap_or_else(|| {
                panic!("a diff with joins/leaves, yet no full presence came after the count-only ones: {diff}")
            });
            for (user, _) in entries(&diff["leaves"], "leaves") {
                members.remove(&user);
            }
            for (user, at) in entries(&diff["joins"], "joins") {
                members.insert(user, at);
            }
            assert_eq!(
                members.len() as u64,
                count,
                "the diff's count disagrees with its joins and leaves applied to what was known: {diff}; {members:?}"
            );
        } else if self.members.as_ref().is_some_and(|m| m.len() as u64 != count) {
            self.members = None;
        }
        self.count = count;
    }

    fn has(&self, user: &str) -> bool {
        self.members.as_ref().is_some_and(|m| m.contains_key(user))
    }

    /// The users listed, sorted; empty when only the count is known.
    fn users(&self) -> Vec<String> {
        self.members.as_ref().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// The list is known and holds none of `users`.
    fn lacks(&self, users: &[&str]) -> bool {
        self.members.is_some() && users.iter().all(|u| !self.has(u))
    }
}

/// `[{user, joined_at}]`; absent means none.
fn entries(list: &Value, what: &str) -> Vec<(String, i64)> {
    let items = match list {
        Value::Null => return Vec::new(),
        Value::Array(items) => items,
        other => panic!("{what} is not a list: {other}"),
    };
    items
        .iter()
        .map(|e| {
            let user = e["user"].as_str().unwrap_or_else(|| panic!("{what}: an entry without a user: {e}"));
            let at = e["joined_at"].as_i64().unwrap_or_else(|| panic!("{what}: {user} has no joined_at: {e}"));
            assert_millis(at, &format!("{what}: {user}'s joined_at"));
            (user.to_owned(), at)
        })
        .collect()
}

/// A members list, each user once.
fn members_of(list: &Value, what: &str) -> BTreeMap<String, i64> {
    let mut members = BTreeMap::new();
    for (user, at) in entries(list, what) {
        assert!(members.insert(user.clone(), at).is_none(), "{what}: {user} is listed twice: {list}");
    }
    members
}

/// The presence of `room` that a client holding `frames` knows: the last full one
/// (`joined`, `presence`) with every later diff applied. None before it joined; a diff
/// that comes before the first `joined` is left to it (the full state it carries wins).
fn view_of(frames: &[Value], room: &str) -> Option<View> {
    let mut view: Option<View> = None;
    for frame in frames.iter().filter(|f| f["room"] == room) {
        match frame["type"].as_str() {
            Some("joined") => view = Some(View::full(&frame["presence"], "joined")),
            Some("presence") => view = Some(View::full(frame, "presence")),
            Some("presence_diff") => {
                if let Some(known) = view.as_mut() {
                    known.apply(frame);
                }
            }
            _ => {}
        }
    }
    view
}

/// Users in the leaves of `room`'s presence_diffs from `frames[from..]`.
fn leaves_since(frames: &[Value], from: usize, room: &str) -> BTreeSet<String> {
    frames[from..]
        .iter()
        .filter(|f| f["type"] == "presence_diff" && f["room"] == room)
        .flat_map(|f| entries(&f["leaves"], "leaves"))
        .map(|(user, _)| user)
        .collect()
}

/// Reads for [`QUIET`], then checks that `user` did not leave `room` for `client` since
/// frame `mark`, and that a fresh `presence` lists exactly `everyone`.
async fn stays(client: &mut Client, mark: usize, room: &str, user: &str, why: &str, everyone: &[&str]) {
    read_for(client, QUIET).await;
    let left = leaves_since(&client.frames, mark, room);
    assert!(!left.contains(user), "{why}, yet {user} left: {:?}", &client.frames[mark..]);
    let answer = ask_presence(client, room).await;
    assert_eq!(View::full(&answer, "presence").users(), everyone, "{answer}");
}

/// Typing frames of `user` in `room` among `frames`.
fn typing_of(frames: &[Value], room: &str, user: &str) -> usize {
    frames.iter().filter(|f| f["type"] == "typing" && f["room"] == room && f["user"] == user).count()
}

fn last_frames(frames: &[Value]) -> &[Value] {
    &frames[frames.len().saturating_sub(8)..]
}

/// Reads (and records) frames until `room`'s presence satisfies `done`.
async fn until_view(
    client: &mut Client,
    room: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&View) -> bool,
) -> View {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let view = view_of(&client.frames, room);
        if let Some(view) = &view {
            if done(view) {
                return view.clone();
            }
        }
        match tokio::time::timeout_at(deadline, client.next_frame()).await {
            Ok(Some(frame)) => client.frames.push(frame),
            Ok(None) => panic!("{}: the connection closed while waiting for {what}", client.user),
            Err(_) => panic!(
                "{}: no {what} within {limit:?}; presence of {room} known: {view:?}; last frames: {:?}",
                client.user,
                last_frames(&client.frames)
            ),
        }
    }
}

/// Reads (and records) new frames until one matches; panics after [`WAIT`].
async fn next_matching(client: &mut Client, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, client.next_frame()).await {
            Ok(Some(frame)) => {
                client.frames.push(frame.clone());
                if pred(&frame) {
                    return frame;
                }
            }
            Ok(None) => panic!("{}: the connection closed while waiting for {what}", client.user),
            Err(_) => {
                panic!("{}: no {what} within {WAIT:?}; last frames: {:?}", client.user, last_frames(&client.frames))
            }
        }
    }
}

/// Reads (and records) whatever arrives for `period`; the connection must stay open.
async fn read_for(client: &mut Client, period: Duration) {
    let until = tokio::time::Instant::now() + period;
    loop {
        match tokio::time::timeout_at(until, client.next_frame()).await {
            Ok(Some(frame)) => client.frames.push(frame),
            Ok(None) => panic!("{}: the connection closed", client.user),
            Err(_) => return,
        }
    }
}

/// `{"type":"presence","room":R}`, answered with the room's presence.
async fn ask_presence(client: &mut Client, room: &str) -> Value {
    client.send_json(json!({"type": "presence", "room": room})).await;
    let answer = next_matching(client, "a presence answer", |f| {
        f["type"] == "error" || (f["type"] == "presence" && f["room"] == room)
    })
    .await;
    assert_eq!(answer["type"], "presence", "{}: the presence of {room} was refused: {answer}", client.user);
    answer
}

/// Asks for `room`'s presence until `done` holds (other gateways' news takes a moment).
async fn poll_presence(client: &mut Client, room: &str, what: &str, done: impl Fn(&View) -> bool) -> View {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = ask_presence(client, room).await;
        let view = View::full(&answer, "presence");
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{}: no {what} within {WAIT:?}; last answer {answer}", client.user);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `frame` and returns the error it gets (a success answer fails the test).
async fn refusal(client: &mut Client, frame: Value) -> Value {
    client.send_json(frame.clone()).await;
    let answer = next_matching(client, "an answer", |f| {
        f["type"] == "error" || (f["type"] == "presence" && f.get("count").is_some()) || f["type"] == "rooms"
    })
    .await;
    assert_eq!(answer["type"], "error", "{frame} was not refused: {answer}");
    assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "errors say what is wrong: {answer}");
    answer
}

/// Joins `room` again (the frames of the first join are still recorded).
async fn rejoin(client: &mut Client, room: &str) {
    client.send_json(json!({"type": "join", "room": room})).await;
    next_matching(client, "joined", |f| f["type"] == "joined" && f["room"] == room).await;
}

async fn leave(client: &mut Client, room: &str) {
    client.send_json(json!({"type": "leave", "room": room})).await;
    next_matching(client, "left", |f| f["type"] == "left" && f["room"] == room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_per_user_across_gateways() {
    let stack = Stack::start("presence-users", 2);
    let room = "presence-room";
    let mut obs = Client::connect(&stack.ws_url(0), "obs").await;
    obs.join(room, None).await;
    let mut ada_a = Client::connect(&stack.ws_url(0), "ada").await;
    ada_a.join(room, None).await;
    let mut ada_b = Client::connect(&stack.ws_url(1), "ada").await;
    ada_b.join(room, None).await;
    let mut bo = Client::connect(&stack.ws_url(1), "bo").await;
    bo.join(room, None).await;
    // Every `joined` carries the room's presence, well formed (view_of checks it).
    for client in [&obs, &ada_a, &ada_b, &bo] {
        assert!(view_of(&client.frames, room).is_some(), "{}: joined without presence", client.user);
    }

    // The observer learns of the others through diffs: ada once, though she has two
    // connections on two gateways.
    let everyone = ["ada", "bo", "obs"];
    let view = until_view(&mut obs, room, "ada, bo and obs present", WAIT, |v| v.users() == everyone).await;
    assert_eq!(view.count, 3);
    let diffs = obs.frames.iter().filter(|f| f["type"] == "presence_diff" && f["room"] == room).count();
    assert!(diffs > 0, "the observer was told of the joins by presence_diff frames");

    // Asked, on either gateway: each user once, with joined_at.
    let answer = ask_presence(&mut obs, room).await;
    let asked = View::full(&answer, "presence");
    assert_eq!(asked.count, 3, "{answer}");
    assert_eq!(asked.users(), everyone, "{answer}");
    poll_presence(&mut bo, room, "the same presence on gateway B", |v| v.users() == everyone && v.count == 3).await;

    // One of ada's connections closes: she is still there through the other.
    let mark = obs.frames.len();
    ada_a.close().await;
    stays(&mut obs, mark, room, "ada", "ada still has a connection on gateway B", &everyone).await;

    // A reload: bo closes and comes back at once on the other gateway, within the grace.
    // Nobody sees him leave.
    let mark = obs.frames.len();
    let reload = Instant::now();
    bo.close().await;
    let mut bo = Client::connect(&stack.ws_url(0), "bo").await;
    bo.join(room, None).await;
    let took = reload.elapsed();
    println!("bo closed, reconnected to the other gateway and joined again in {took:?} (grace {GRACE:?})");
    assert!(took < GRACE, "the reconnect took {took:?}, longer than the {GRACE:?} grace this check is about");
    stays(&mut obs, mark, room, "bo", "bo reconnected within the grace", &everyone).await;

    // ada's last connection closes: a leave diff, after the grace.
    let mark = obs.frames.len();
    let closed = Instant::now();
    ada_b.close().await;
    let view = until_view(&mut obs, room, "ada's leave", WAIT, |v| v.lacks(&["ada"])).await;
    println!("ada's last connection closed: she left the presence after {:?}", closed.elapsed());
    assert!(
        leaves_since(&obs.frames, mark, room).contains("ada"),
        "ada's departure came as a leave in a presence_diff"
    );
    assert_eq!(view.users(), ["bo", "obs"]);
    let answer = ask_presence(&mut obs, room).await;
    let asked = View::full(&answer, "presence");
    assert_eq!(asked.count, 2, "{answer}");
    assert_eq!(asked.users(), ["bo", "obs"], "{answer}");
    bo.close().await;
    obs.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_others_across_gateways_not_the_sender() {
    let stack = Stack::start("presence-typing", 2);
    let room = "typing-room";
    let typing = json!({"type": "typing", "room": room});
    let mut ada_a = Client::connect(&stack.ws_url(0), "ada").await;
    ada_a.join(room, None).await;
    let mut ada_b = Client::connect(&stack.ws_url(1), "ada").await;
    ada_b.join(room, None).await;
    let mut bo = Client::connect(&stack.ws_url(1), "bo").await;
    bo.join(room, None).await;
    let mut cy = Client::connect(&stack.ws_url(0), "cy").await;
    cy.join(room, None).await;
    // dan is in another room: nothing of this room reaches him.
    let mut dan = Client::connect(&stack.ws_url(0), "dan").await;
    dan.join("elsewhere", None).await;
    // Both gateways know everyone: the way between them is up.
    let everyone = ["ada", "bo", "cy"];
    until_view(&mut bo, room, "everyone, seen on gateway B", WAIT, |v| v.users() == everyone).await;
    until_view(&mut ada_a, room, "everyone, seen on gateway A", WAIT, |v| v.users() == everyone).await;

    // ada types on A: bo (on B) and cy (on A) are told, with exactly this frame.
    ada_a.send_json(typing.clone()).await;
    let expected = json!({"type": "typing", "room": room, "user": "ada"});
    for client in [&mut bo, &mut cy] {
        let seen = next_matching(client, "ada typing", |f| f["type"] == "typing").await;
        assert_eq!(seen, expected, "{}", client.user);
    }
    // bo types on B: both of ada's connections (one per gateway) and cy are told.
    bo.send_json(typing.clone()).await;
    let expected = json!({"type": "typing", "room": room, "user": "bo"});
    for client in [&mut ada_a, &mut ada_b, &mut cy] {
        let seen = next_matching(client, "bo typing", |f| f["type"] == "typing" && f["user"] == "bo").await;
        assert_eq!(seen, expected, "{}", client.user);
    }
    // Nobody is told of their own typing, and there is no answer to the typist.
    for client in [&mut ada_a, &mut ada_b, &mut bo, &mut dan] {
        read_for(client, Duration::from_secs(1)).await;
    }
    assert_eq!(typing_of(&ada_a.frames, room, "ada"), 0, "ada's own typing came back to her: {:?}", ada_a.frames);
    assert_eq!(typing_of(&ada_b.frames, room, "ada"), 0, "ada's own typing reached her other tab: {:?}", ada_b.frames);
    assert_eq!(typing_of(&bo.frames, room, "bo"), 0, "bo's own typing came back to him: {:?}", bo.frames);
    assert!(!dan.frames.iter().any(|f| f["type"] == "typing"), "typing leaked to another room: {:?}", dan.frames);

    // A flood: 10 typing frames in well under a second (the last relayed one is over a
    // second old after the reads above). At most one a second is relayed: 1, or 2 if the
    // flood straddles the turn of a second. No error: the frame rate is not reached.
    let (mark_bo, mark_cy) = (bo.frames.len(), cy.frames.len());
    let flood = Instant::now();
    for _ in 0..10 {
        ada_a.send_json(typing.clone()).await;
    }
    let took = flood.elapsed();
    assert!(took < Duration::from_secs(1), "10 typing frames took {took:?} to send; this check needs under a second");
    for client in [&mut bo, &mut cy, &mut ada_a, &mut ada_b] {
        read_for(client, Duration::from_millis(2500)).await;
    }
    let (to_bo, to_cy) = (typing_of(&bo.frames[mark_bo..], room, "ada"), typing_of(&cy.frames[mark_cy..], room, "ada"));
    println!("typing flood: 10 frames in {took:?}; relayed {to_bo} to bo (gateway B), {to_cy} to cy (gateway A)");
    assert!((1..=2).contains(&to_bo), "bo was told of ada typing {to_bo} times for a flood of 10 within a second");
    assert!((1..=2).contains(&to_cy), "cy was told of ada typing {to_cy} times for a flood of 10 within a second");
    assert_eq!(typing_of(&ada_a.frames, room, "ada") + typing_of(&ada_b.frames, room, "ada"), 0, "ada told of herself");
    assert!(
        ada_a.errors().is_empty(),
        "typing under the frame rate is never answered with an error: {:?}",
        ada_a.errors()
    );
    assert!(bo.errors().is_empty(), "{:?}", bo.errors());
    let dropped: f64 = (0..2)
        .map(|i| {
            metric(stack.metrics_ports[&format!("gateway-{i}")], "roomcast_gateway_typing_total{result=\"dropped\"")
        })
        .sum();
    assert!(
        dropped >= 8.0,
        "at least 8 of the flood's 10 were dropped, yet roomcast_gateway_typing_total counts {dropped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_no_ghost() {
    // Three gateways, each with its own fanout (as in a pod: the fanout is a sidecar).
    // Gateway 0 dies alone (its container crashed, its fanout lives on); then gateway 1
    // dies with its fanout (the pod is gone). The watcher is on gateway 2.
    let mut stack = Stack::start("presence-kill", 3);
    let room = "ghost-room";
    let mut watcher = Client::connect(&stack.ws_url(2), "watcher").await;
    watcher.join(room, None).await;
    // "both" is on every gateway: it must survive both kills.
    let mut both = Vec::new();
    for gateway in 0..3 {
        let mut client = Client::connect(&stack.ws_url(gateway), "both").await;
        client.join(room, None).await;
        both.push(client);
    }
    let mut on0 = Vec::new();
    for user in ["k0a", "k0b", "k0c"] {
        let mut client = Client::connect(&stack.ws_url(0), user).await;
        client.join(room, None).await;
        on0.push(client);
    }
    let mut on1 = Vec::new();
    for user in ["k1a", "k1b"] {
        let mut client = Client::connect(&stack.ws_url(1), user).await;
        client.join(room, None).await;
        on1.push(client);
    }
    let all = ["both", "k0a", "k0b", "k0c", "k1a", "k1b", "watcher"];
    until_view(&mut watcher, room, "all seven users present", WAIT, |v| v.users() == all).await;

    let limit = Duration::from_secs(45);
    for (gateway, users, with_fanout, remaining) in [
        (0usize, ["k0a", "k0b", "k0c"].as_slice(), false, ["both", "k1a", "k1b", "watcher"].as_slice()),
        (1, ["k1a", "k1b"].as_slice(), true, ["both", "watcher"].as_slice()),
    ] {
        let mark = watcher.frames.len();
        let killed = Instant::now();
        tokio::task::block_in_place(|| {
            stack.gateways[gateway].kill();
            if with_fanout {
                stack.fanouts[gateway].kill();
            }
        });
        // Their sockets died with the gateway.
        drop(both.remove(0));
        if gateway == 0 {
            on0.clear();
        } else {
            on1.clear();
        }
        let what = format!("leaves for gateway-{gateway}'s users {users:?}");
        let view = until_view(&mut watcher, room, &what, limit, |v| v.lacks(users)).await;
        let took = killed.elapsed();
        let how = if with_fanout { "with its fanout" } else { "alone, its fanout still up" };
        println!(
            "kill -9 gateway-{gateway} ({how}): its users left the presence seen on gateway-2 after {:.1} s \
             (bound here {limit:?}; the spec's 25 s)",
            took.as_secs_f64()
        );
        let left = leaves_since(&watcher.frames, mark, room);
        for user in users {
            assert!(left.contains(*user), "{user} was dropped without a leave in a presence_diff: {left:?}");
        }
        assert!(!left.contains("both"), "both is still connected to other gateways, yet left: {left:?}");
        assert_eq!(view.users(), remaining);
        // A fresh question lists none of them either.
        let answer = ask_presence(&mut watcher, room).await;
        let asked = View::full(&answer, "presence");
        assert_eq!(asked.count, remaining.len() as u64, "{answer}");
        assert_eq!(asked.users(), remaining, "{answer}");
    }
    // A newcomer's joined snapshot holds no ghost.
    let mut late = Client::connect(&stack.ws_url(2), "late").await;
    late.join(room, None).await;
    let snapshot = view_of(&late.frames, room).expect("joined");
    let others: Vec<String> = snapshot.users().into_iter().filter(|u| u != "late").collect();
    assert_eq!(others, ["both", "watcher"], "the joined presence of a newcomer: {snapshot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_is_batched() {
    const STORM: usize = 500;
    let room: &'static str = "storm";
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, _) = start_roomcast("presence-storm", dir.path(), &[]);
    let base = format!("ws://127.0.0.1:{port}");
    let mut watcher = Client::connect(&base, "watcher").await;
    watcher.join(room, None).await;
    let everyone = STORM as u64 + 1;

    // Connect first, then every join at once.
    let clients: Vec<Client> = futures::stream::iter(0..STORM)
        .map(|i| {
            let base = base.clone();
            async move { Client::connect(&base, &format!("u{i}")).await }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let mark = watcher.frames.len();
    let started = Instant::now();
    let joins: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                client.send_json(json!({"type": "join", "room": room})).await;
                let joined =
                    next_matching(&mut client, "joined", |f| f["type"] == "joined" || f["type"] == "error").await;
                assert_eq!(joined["type"], "joined", "{}: {joined}", client.user);
                (client, joined)
            })
        })
        .collect();

    let view =
        until_view(&mut watcher, room, "all 501 users present", Duration::from_secs(60), |v| v.count == everyone).await;
    let counted = started.elapsed();
    assert!(view.members.is_none(), "{everyone} users is over {LIST_MAX}: a count only");
    let counts: Vec<u64> = watcher.frames[mark..]
        .iter()
        .filter(|f| f["type"] == "presence_diff" && f["room"] == room)
        .map(|f| f["count"].as_u64().expect("count"))
        .collect();
    let frames = counts.len();
    println!(
        "join storm: {STORM} joins; the watcher counted {everyone} after {counted:?} in {frames} diffs: {counts:?}"
    );
    assert!(!counts.is_empty(), "the joins came as presence_diff frames");
    assert!(frames <= 40, "{frames} presence_diff frames for one join storm: not batched");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "while users only join, the count only grows: {counts:?}");

    let mut clients = Vec::new();
    for join in joins {
        let (client, joined) = join.await.expect("join task");
        // A list within the threshold, a count only over it (View::full checks both).
        let snapshot = View::full(&joined["presence"], &format!("{}'s joined", client.user));
        assert!((1..=everyone).contains(&snapshot.count), "{}: {joined}", client.user);
        clients.push(client);
    }
    println!("join storm: all {STORM} joined after {:?}", started.elapsed());

    // Asked, the count is exact and the list left out.
    for client in [&mut watcher, &mut clients[STORM / 2]] {
        let answer = ask_presence(client, room).await;
        assert_eq!(answer["count"], everyone, "{answer}");
        assert!(answer.get("members").is_none(), "over {LIST_MAX} users the presence has no members: {answer}");
    }

    // Everyone leaves: when the count falls back to the threshold or below, the full list
    // is pushed unasked, and the watcher ends alone.
    let mark = watcher.frames.len();
    for client in clients {
        client.close().await;
    }
    let view = until_view(&mut watcher, room, "the watcher alone, listed", Duration::from_secs(60), |v| {
        v.count == 1 && v.members.is_some()
    })
    .await;
    assert_eq!(view.users(), ["watcher"]);
    assert!(
        watcher.frames[mark..]
            .iter()
            .any(|f| f["type"] == "presence" && f["room"] == room && f.get("members").is_some()),
        "the full presence was pushed when the count fell back to {LIST_MAX} or below: {:?}",
        last_frames(&watcher.frames)
    );
}

/// `{"type":"rooms",...}`, answered with a page.
async fn rooms_page(client: &mut Client, query: Value) -> Value {
    client.send_json(query.clone()).await;
    let page = next_matching(client, "a rooms page", |f| f["type"] == "rooms" || f["type"] == "error").await;
    assert_eq!(page["type"], "rooms", "{query} was refused: {page}");
    page
}

/// (room, members) of a page's entries, in order, after checking each entry's shape
/// and the order (most recently active first).
fn listed(page: &Value) -> Vec<(String, u64)> {
    let rooms = page["rooms"].as_array().unwrap_or_else(|| panic!("a rooms page without rooms: {page}"));
    let mut active = Vec::new();
    let listed = rooms
        .iter()
        .map(|r| {
            let room = r["room"].as_str().unwrap_or_else(|| panic!("an entry without a room: {r}"));
            assert_eq!(r["name"], room, "a room joined by id is named by its id: {r}");
            let members = r["members"].as_u64().unwrap_or_else(|| panic!("an entry without members: {r}"));
            let at = r["active_at"].as_i64().unwrap_or_else(|| panic!("an entry without active_at: {r}"));
            assert_millis(at, &format!("{room}'s active_at"));
            active.push(at);
            (room.to_owned(), members)
        })
        .collect();
    assert!(active.windows(2).all(|w| w[0] >= w[1]), "most recently active first: {page}");
    listed
}

/// Every page of `limit` from offset 0, following `next`: the rooms in order.
async fn all_pages(client: &mut Client, limit: u64, total: u64) -> Vec<String> {
    let mut rooms = Vec::new();
    let mut offset = 0;
    loop {
        let page = rooms_page(client, json!({"type": "rooms", "offset": offset, "limit": limit})).await;
        assert_eq!(page["total"], total, "{page}");
        let got = listed(&page);
        let remaining = total - offset;
        assert_eq!(got.len() as u64, remaining.min(limit), "the page at offset {offset} by {limit}: {page}");
        rooms.extend(got.into_iter().map(|(room, _)| room));
        if remaining > limit {
            assert_eq!(page["next"], offset + limit, "next is where the following page starts: {page}");
            offset += limit;
        } else {
            assert!(page.get("next").is_none(), "the last page has no next: {page}");
            return rooms;
        }
    }
}

/// [`all_pages`], again if the order moved between two pages (rooms' activity may change
/// while paging): each room must be listed once.
async fn every_room_once(client: &mut Client, limit: u64, total: u64) -> Vec<String> {
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let rooms = all_pages(client, limit, total).await;
        let distinct = rooms.iter().collect::<BTreeSet<_>>().len();
        if distinct as u64 == total {
            return rooms;
        }
        attempts.push(rooms);
    }
    panic!("paging by {limit} never listed the {total} rooms once each in three tries: {attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_lists_rooms_with_member_counts() {
    let stack = Stack::start("presence-dir", 2);
    let (a, b) = (stack.ws_url(0), stack.ws_url(1));
    let mut held = Vec::new();
    let mut d1 = Client::connect(&a, "d1").await;
    for room in ["dir-1", "dir-2", "dir-3"] {
        d1.join(room, None).await;
    }
    for (url, user, rooms) in [
        (&a, "d2", ["dir-2", "dir-3"].as_slice()),
        (&a, "d3", ["dir-3"].as_slice()),
        (&a, "d3", ["dir-3"].as_slice()), // d3's second tab: one member still
        (&a, "d4", ["dir-4"].as_slice()),
        (&b, "d4", ["dir-4"].as_slice()), // d4 on both gateways: one member
    ] {
        let mut client = Client::connect(url, user).await;
        for room in rooms {
            client.join(room, None).await;
        }
        held.push(client);
    }
    // dir-5's only member leaves: listed with 0 members (it drops out only when idle a day).
    let mut d5 = Client::connect(&a, "d5").await;
    d5.join("dir-5", None).await;
    leave(&mut d5, "dir-5").await;

    // Asked on gateway B, once the counts settled (presence crosses gateways, and a leave
    // waits out the grace).
    let mut lister = Client::connect(&b, "lister").await;
    let expected: BTreeMap<String, u64> = [("dir-1", 1u64), ("dir-2", 2), ("dir-3", 3), ("dir-4", 1), ("dir-5", 0)]
        .map(|(r, n)| (r.to_owned(), n))
        .into();
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let page = rooms_page(&mut lister, json!({"type": "rooms"})).await;
        let counts: BTreeMap<String, u64> = listed(&page).into_iter().collect();
        if counts == expected && page["total"] == 5 {
            break page;
        }
        assert!(Instant::now() < deadline, "the directory never listed {expected:?}; last page {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(page.get("next").is_none(), "5 rooms fit the default page of 50: {page}");

    // Pages of 2: 2, 2 and 1, each with the total, `next` on all but the last.
    let rooms = every_room_once(&mut lister, 2, 5).await;
    assert_eq!(rooms.iter().cloned().collect::<BTreeSet<_>>(), expected.keys().cloned().collect::<BTreeSet<_>>());
    let beyond = rooms_page(&mut lister, json!({"type": "rooms", "offset": 10})).await;
    assert_eq!((beyond["rooms"].as_array().map(Vec::len), &beyond["total"]), (Some(0), &json!(5)), "{beyond}");
    assert!(beyond.get("next").is_none(), "{beyond}");

    // Activity moves a room to the front: a message in dir-1, the oldest.
    d1.send("dir-1", "wake up", "w1").await;
    next_matching(&mut d1, "the ack", |f| f["type"] == "ack" && f["client_id"] == "w1").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let page = rooms_page(&mut lister, json!({"type": "rooms", "limit": 1})).await;
        if page["rooms"][0]["room"] == "dir-1" {
            assert_eq!(page["next"], 1, "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "dir-1 never came first after its message; last page {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 100 more rooms (4 connections, 25 joins each: within the frame burst): the default
    // page of 50, a limit over 100 held to 100, and the total.
    for c in 0..4 {
        let mut client = Client::connect(&a, &format!("bulk{c}")).await;
        for n in 0..25 {
            client.send_json(json!({"type": "join", "room": format!("bulk-{:03}", c * 25 + n)})).await;
        }
        for _ in 0..25 {
            let joined = next_matching(&mut client, "joined", |f| f["type"] == "joined" || f["type"] == "error").await;
            assert_eq!(joined["type"], "joined", "{joined}");
        }
        held.push(client);
    }
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let page = rooms_page(&mut lister, json!({"type": "rooms"})).await;
        if page["total"] == 105 {
            break page;
        }
        assert!(Instant::now() < deadline, "the directory never counted 105 rooms; last page {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(listed(&first).len(), 50, "the default page is 50 rooms: {first}");
    assert_eq!(first["next"], 50, "{first}");
    let capped = rooms_page(&mut lister, json!({"type": "rooms", "limit": 1000})).await;
    assert_eq!(listed(&capped).len(), 100, "a page holds at most 100 rooms");
    assert_eq!(capped["next"], 100, "{capped}");
    let rooms = every_room_once(&mut lister, 50, 105).await;
    let bulk: Vec<&String> = rooms.iter().filter(|r| r.starts_with("bulk-")).collect();
    assert_eq!(bulk.len(), 100, "{rooms:?}");
    // Each bulk room has one member, once the last joins' batches have been announced.
    let deadline = Instant::now() + WAIT;
    loop {
        let page = rooms_page(&mut lister, json!({"type": "rooms", "limit": 100})).await;
        let counts: BTreeMap<String, u64> = listed(&page).into_iter().collect();
        let bulk: Vec<u64> = counts.iter().filter(|(room, _)| room.starts_with("bulk-")).map(|(_, n)| *n).collect();
        if !bulk.is_empty() && bulk.iter().all(|n| *n == 1) {
            break;
        }
        assert!(bulk.iter().all(|n| *n <= 1), "a bulk room counts more than its one member: {page}");
        assert!(Instant::now() < deadline, "the bulk rooms never showed one member each: {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `roomcast token ...`, as a developer would run it.
fn mint(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("roomcast")).arg("token").args(args).output().expect("run roomcast token");
    assert!(out.status.success(), "roomcast token failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 token").trim().to_owned()
}

/// A minimal Socket.IO v5 client (Engine.IO 4, WebSocket transport only), enough to
/// connect without a user name, which `/ws` does not allow, and emit events with acks.
struct Sio {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    acks: u64,
}

impl Sio {
    /// Connects to the default namespace with the auth payload `auth`.
    async fn connect(port: u16, auth: Value) -> Sio {
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("Socket.IO WebSocket upgrade");
        let mut sio = Sio { ws, acks: 0 };
        let open = sio.packet().await;
        assert!(open.starts_with('0'), "Engine.IO opens with its open packet: {open}");
        sio.send(format!("40{auth}")).await;
        let connected = sio.packet().await;
        assert!(connected.starts_with("40"), "the Socket.IO connect was refused: {connected}");
        sio
    }

    async fn send(&mut self, packet: String) {
        self.ws.send(Message::Text(packet.into())).await.expect("send a Socket.IO packet");
    }

    /// The next Engine.IO packet; pings are answered on the way.
    async fn packet(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next =
                tokio::time::timeout_at(deadline, self.ws.next()).await.expect("Socket.IO: no packet within WAIT");
            match next {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => self.send("3".to_owned()).await,
                Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                Some(Ok(_)) => {}
                other => panic!("the Socket.IO connection ended: {other:?}"),
            }
        }
    }

    /// Emits `event` with `data` and an ack callback; returns the ack's first argument.
    async fn emit_with_ack(&mut self, event: &str, data: Value) -> Value {
        let id = self.acks;
        self.acks += 1;
        self.send(format!("42{id}{}", json!([event, data]))).await;
        let prefix = format!("43{id}");
        loop {
            let packet = self.packet().await;
            if let Some(args) = packet.strip_prefix(&prefix).filter(|a| a.starts_with('[')) {
                let args: Value = serde_json::from_str(args).expect("an ack's arguments are JSON");
                return args[0].clone();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_bad_input() {
    // The checks are the connection core's, the same in `roomcast` and the gateway; the
    // one-process server takes the token secret the rooms claim needs.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, _) = start_roomcast("presence-bad", dir.path(), &["--auth-jwt-secret", SECRET]);
    let base = format!("ws://127.0.0.1:{port}");
    let token = mint(&["--user", "ada", "--rooms", "team-*", "--secret", SECRET]);
    let mut ada = Client::connect_query(&base, "ada", &format!("token={token}")).await.expect("ada's token");
    ada.join("team-red", None).await;

    // Not joined, and not granted: the room is named in the error.
    for (kind, room, code) in [
        ("presence", "team-blue", "not_joined"),
        ("typing", "team-blue", "not_joined"),
        ("presence", "admin", "forbidden_room"),
        ("typing", "admin", "forbidden_room"),
    ] {
        let error = refusal(&mut ada, json!({"type": kind, "room": room})).await;
        assert_eq!(error["code"], code, "{kind} of {room}: {error}");
        assert_eq!(error["room"], room, "{kind} of {room}: {error}");
    }

    // Names outside the rules, on a connection without a rooms claim.
    let mut free = Client::connect(&base, "free").await;
    let long = "x".repeat(65);
    let huge = "y".repeat(10_000);
    for kind in ["presence", "typing"] {
        for room in [long.as_str(), huge.as_str(), "../etc", "has space", "", "~rooms", "a/b"] {
            let error = refusal(&mut free, json!({"type": kind, "room": room})).await;
            assert_eq!(error["code"], "invalid_room", "{kind} of {room:?}: {error}");
        }
    }
    // A room the connection never joined.
    let error = refusal(&mut free, json!({"type": "presence", "room": "never-joined"})).await;
    assert_eq!(error["code"], "not_joined", "{error}");
    // Malformed frames.
    for frame in [
        json!({"type": "typing", "room": "team-red", "text": "hi"}),
        json!({"type": "typing"}),
        json!({"type": "typing", "room": 5}),
        json!({"type": "presence", "room": "team-red", "members": true}),
        json!({"type": "rooms", "limit": "ten"}),
        json!({"type": "rooms", "offset": -1}),
        json!({"type": "rooms", "page": 2}),
    ] {
        let error = refusal(&mut free, frame.clone()).await;
        assert_eq!(error["code"], "bad_request", "{frame}: {error}");
    }

    // Typing past the frame rate (20/s, burst 40 by default): refused with rate_limited
    // only, and the connection stays open.
    let mut flood = Client::connect(&base, "flood").await;
    flood.join("team-red", None).await;
    let mark = flood.frames.len();
    for _ in 0..60 {
        flood.send_json(json!({"type": "typing", "room": "team-red"})).await;
    }
    // The bucket refills meanwhile; the refusals are read and kept.
    read_for(&mut flood, Duration::from_millis(2500)).await;
    ask_presence(&mut flood, "team-red").await; // answered: still connected and served
    let errors: Vec<&Value> = flood.frames[mark..].iter().filter(|f| f["type"] == "error").collect();
    let limited = errors.iter().filter(|e| e["code"] == "rate_limited").count();
    println!("typing flood: 60 frames at once, {limited} refused with rate_limited");
    // 61 frames with the join against a burst of 40: at most 21 refused, at least one.
    assert!((1..=21).contains(&limited), "{limited} of 60 typing frames were rate_limited");
    assert_eq!(limited, errors.len(), "typing past the rate is refused only as rate_limited: {errors:?}");

    // A connection without a user: only Socket.IO allows one (`/ws` refuses it at connect).
    // It may listen in a room, but not type, and it is nobody in the presence.
    let mut listener = Sio::connect(port, json!({})).await;
    let joined = listener.emit_with_ack("join", json!({"room": "team-red"})).await;
    assert_eq!(joined["room"], "team-red", "a listener without a user may join: {joined}");
    assert!(joined.get("error").is_none(), "{joined}");
    let typed = listener.emit_with_ack("typing", json!({"room": "team-red"})).await;
    assert_eq!(typed["error"]["code"], "invalid_user", "typing needs a user name: {typed}");
    let mut late = Client::connect(&base, "late").await;
    late.join("team-red", None).await;
    let view = until_view(&mut ada, "team-red", "late's arrival", WAIT, |v| v.has("late")).await;
    assert_eq!(view.users(), ["ada", "flood", "late"], "the listener without a user is not in the presence");
    assert_eq!(view.count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_never_stored() {
    use futures::TryStreamExt;
    use mongodb::bson::{doc, Bson, Document};

    let mut stack = Stack::start("presence-store", 2);
    let (talk, quiet) = ("talk-room", "quiet-room");
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    ada.join(talk, None).await;
    ada.join(quiet, None).await;
    let mut ada2 = Client::connect(&stack.ws_url(1), "ada").await;
    ada2.join(talk, None).await;
    let mut bo = Client::connect(&stack.ws_url(1), "bo").await;
    bo.join(talk, None).await;
    bo.join(quiet, None).await;
    until_view(&mut bo, talk, "ada and bo in talk-room", WAIT, |v| v.users() == ["ada", "bo"]).await;
    until_view(&mut ada, quiet, "ada and bo in quiet-room", WAIT, |v| v.users() == ["ada", "bo"]).await;

    // Presence asked, typing both ways, a leave and a rejoin on each gateway, the directory.
    ask_presence(&mut ada, talk).await;
    ask_presence(&mut bo, quiet).await;
    for room in [talk, quiet] {
        ada.send_json(json!({"type": "typing", "room": room})).await;
        next_matching(&mut bo, "ada typing", |f| f["type"] == "typing" && f["room"] == room).await;
    }
    bo.send_json(json!({"type": "typing", "room": talk})).await;
    next_matching(&mut ada, "bo typing", |f| f["type"] == "typing" && f["user"] == "bo").await;
    leave(&mut ada2, talk).await;
    rejoin(&mut ada2, talk).await;
    leave(&mut bo, quiet).await;
    rejoin(&mut bo, quiet).await;
    rooms_page(&mut ada, json!({"type": "rooms"})).await;
    read_for(&mut bo, Duration::from_secs(1)).await;

    // The first message of each room takes seq 1: none of that took a seq.
    for (client, room, id) in [(&mut ada, talk, "t1"), (&mut bo, quiet, "q1")] {
        client.send(room, "first words", id).await;
        let ack =
            next_matching(client, "the ack", |f| f["client_id"] == id && (f["type"] == "ack" || f["type"] == "error"))
                .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], 1, "the first message of {room} after presence and typing: {ack}");
    }
    // History holds only the messages.
    for room in [talk, quiet] {
        ada.send_json(json!({"type": "history", "room": room})).await;
        let page = next_matching(&mut ada, "history", |f| f["type"] == "history" && f["room"] == room).await;
        let texts: Vec<&str> =
            page["messages"].as_array().expect("messages").iter().map(|m| m["text"].as_str().expect("text")).collect();
        assert_eq!(texts, ["first words"], "{page}");
    }

    // The store: no presence or typing anywhere, and in `messages` just the two.
    let client = stack.mongo.client().await;
    let db = client.database(&stack.database);
    let names = db.list_collection_names().await.expect("list the store's collections");
    assert!(names.iter().any(|n| n.as_str() == "messages"), "{names:?}");
    let mut stored: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
    for name in names.iter().filter(|n| !n.starts_with("system.")) {
        let lower = name.to_lowercase();
        assert!(
            !["presence", "typing", "gateway"].iter().any(|w| lower.contains(w)),
            "the store has a collection {name}: presence and typing are never stored"
        );
        let docs: Vec<Document> =
            db.collection::<Document>(name).find(doc! {}).await.expect("find").try_collect().await.expect("collect");
        for d in &docs {
            for field in ["joined_at", "typing", "gateway", "joins", "leaves"] {
                assert!(!d.contains_key(field), "{name} holds a presence or typing document: {d}");
            }
        }
        if name != "messages" {
            continue;
        }
        for d in docs {
            let room = d.get_str("room").unwrap_or_else(|_| panic!("a message without a room: {d}")).to_owned();
            assert!(room == talk || room == quiet || room.starts_with('~'), "a message in a room nobody wrote to: {d}");
            let seq = match d.get("seq") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => i64::from(*n),
                _ => panic!("a message without a seq: {d}"),
            };
            stored.entry(room).or_default().push((seq, d.get_bool("tombstone").unwrap_or(false)));
        }
    }
    for room in [talk, quiet] {
        assert_eq!(stored.get(room).map(Vec::as_slice), Some([(1, false)].as_slice()), "stored in {room}: {stored:?}");
    }
    // Redis: typing is only published, never kept.
    let keys: Vec<String> = stack.redis().cli(&["KEYS", "*"]).lines().map(str::to_owned).collect();
    assert!(!keys.iter().any(|k| k.to_lowercase().contains("typing")), "typing kept in Redis: {keys:?}");
}

/// A gateway drained with SIGTERM closes its clients with 1012 at random within its drain
/// window; a member that reconnects through another gateway at once does not flicker out
/// and back in for the others, and the drained gateway's farewell leaves no ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_member_reconnecting_elsewhere_does_not_flicker() {
    let stack = Stack::start("presence-drain", 2);
    let room = "presence-drain-room";
    let mut obs = Client::connect(&stack.ws_url(1), "obs").await;
    obs.join(room, None).await;
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    ada.join(room, None).await;
    let mut bo = Client::connect(&stack.ws_url(0), "bo").await;
    bo.join(room, None).await;
    until_view(&mut obs, room, "ada, bo and obs present", WAIT, |v| v.users() == ["ada", "bo", "obs"]).await;

    let mark = obs.frames.len();
    let sigterm = std::process::Command::new("kill")
        .args(["-TERM", &stack.gateways[0].pid().to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(sigterm.success(), "kill -TERM gateway-0 failed");
    // ada reconnects through gateway 1 as soon as she is closed (a client's reconnect);
    // bo does not come back.
    assert_eq!(ada.wait_close().await, Some(1012), "a drain closes with 1012");
    let mut ada = Client::connect(&stack.ws_url(1), "ada").await;
    ada.join(room, None).await;
    assert_eq!(bo.wait_close().await, Some(1012));

    let view = until_view(&mut obs, room, "bo gone, ada still there", WAIT, |v| v.users() == ["ada", "obs"]).await;
    assert_eq!(view.count, 2);
    assert!(leaves_since(&obs.frames, mark, room).contains("bo"), "bo, who did not come back, left");
    stays(&mut obs, mark, room, "ada", "ada reconnected through gateway 1 within the grace", &["ada", "obs"]).await;
}
