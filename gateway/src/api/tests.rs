//! The server API in-process, over the embedded broker and store (as `roomcast` runs):
//! the document against the routes, then each endpoint as the backend calls it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use fanout::MemoryBroker;
use persister::{BatcherConfig, Persister, RedbStore};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::{app, ApiKeys};
use crate::admission::{Access, Offer};
use crate::Gateway;

const KEY: &str = "test-api-key-0123456789abcdef";

struct Fixture {
    gateway: Gateway,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path()).expect("open the embedded store");
        let archive = Arc::new(Persister::new(Arc::new(store), BatcherConfig::default()));
        let gateway = Gateway::start(Arc::new(MemoryBroker::default()), archive, Default::default(), Access::default());
        let keys = ApiKeys::new(Some(KEY.into()), None).expect("keys");
        let app = app(gateway.hub.clone(), Arc::new(keys));
        Fixture { gateway, app, _dir: dir }
    }

    /// Calls the API; answers the status and the JSON body.
    async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            req = req.header("authorization", format!("apikey {key}"));
        }
        let req = match body {
            Some(body) => req.header("content-type", "application/json").body(Body::from(body.to_string())),
            None => req.body(Body::empty()),
        };
        let response = self.app.clone().oneshot(req.expect("request")).await.expect("answered");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(KEY), body).await
    }
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_and_every_one_needs_the_key() {
    let fixture = Fixture::new();
    let (status, doc) = fixture.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "the document is public on the API port");
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys().filter(|k| *k != "parameters") {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /api/rooms/{room}/messages/{seq}",
            "GET /api/rooms",
            "GET /api/rooms/{room}/messages",
            "GET /api/rooms/{room}/presence",
            "POST /api/rooms/{room}/messages",
            "POST /api/users/{user}/disconnect",
        ]
    );
    for operation in &operations {
        let (method, path) = operation.split_once(' ').expect("method and path");
        let path = path.replace("{room}", "lobby").replace("{seq}", "1").replace("{user}", "ada");
        let method: Method = method.parse().expect("method");
        let (status, body) = fixture.call(method.clone(), &path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{operation} is routed and needs the key");
        assert_eq!(body["code"], "unauthorized");
        let (status, _) = fixture.call(method, &path, Some("not-the-key-0123456789abcdef"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{operation} with a wrong key");
    }
    let (status, body) = fixture.api(Method::GET, "/api/users/ada/disconnect", None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    let (status, body) = fixture.api(Method::GET, "/api/nothing-here", None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_such_route")));
}

#[tokio::test]
async fn post_read_delete_and_remove_a_user_through_the_embedded_tiers() {
    let fixture = Fixture::new();
    let post = |key: &str| json!({"user": "bot", "text": "hello", "idempotency_key": key});
    let (status, first) = fixture.api(Method::POST, "/api/rooms/lobby/messages", Some(post("k1"))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = fixture.api(Method::POST, "/api/rooms/lobby/messages", Some(post("k1"))).await;
    assert_eq!((again["seq"].clone(), again["id"].clone()), (first["seq"].clone(), first["id"].clone()), "one copy");
    let (_, second) = fixture.api(Method::POST, "/api/rooms/lobby/messages", Some(post("k2"))).await;
    assert_eq!(second["seq"], 3, "the repeat's seq was sealed, the next post follows it");

    let (status, body) = fixture.api(Method::POST, "/api/rooms/lobby/messages", Some(json!({"user": "bot"}))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_request")), "{body}");
    let empty_key = json!({"user": "bot", "text": "x", "idempotency_key": ""});
    let (status, body) = fixture.api(Method::POST, "/api/rooms/lobby/messages", Some(empty_key)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an empty key would make every later post a repeat: {body}");
    let (status, body) = fixture.api(Method::DELETE, "/api/rooms/lobby/messages/first", None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{body}");
    let bad_room = fixture.api(Method::POST, "/api/rooms/~rooms/messages", Some(post("k3"))).await;
    assert_eq!((bad_room.0, bad_room.1["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_room")));

    let (status, page) = fixture.api(Method::GET, "/api/rooms/lobby/messages", None).await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> =
        page["messages"].as_array().expect("messages").iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![1, 3], "the sealed seq is not shown");
    let (status, body) = fixture.api(Method::GET, "/api/rooms/empty/messages", None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("room_not_found")));

    // A member of the room sees the removal live; history shows the tombstone.
    let hub = fixture.gateway.hub.clone();
    let admitted =
        hub.admission.admit(Offer { ip: None, origin: None, token: None, user: Some("ada") }).expect("admit");
    let ada = crate::conn::Conn::open(hub.clone(), "ws", admitted);
    let (sink, mut seen) = crate::conn::tests::probe();
    ada.join("lobby", None, sink).expect("join");
    crate::conn::tests::next(&mut seen).await;
    let (_, taken) = crate::conn::tests::send(&ada, crate::conn::tests::request("lobby", "x", Some("api:k1"))).await;
    assert_eq!(taken.err().map(|e| e.code()), Some("bad_request"), "clients cannot use the API's client ids");
    let (status, removed) = fixture.api(Method::DELETE, "/api/rooms/lobby/messages/1", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!((removed["message"]["deleted"].clone(), removed["message"]["text"].clone()), (json!(true), json!("")));
    assert_eq!(crate::conn::tests::next(&mut seen).await, crate::conn::tests::Seen::Deleted(1));
    let (_, page) = fixture.api(Method::GET, "/api/rooms/lobby/messages", None).await;
    assert_eq!(page["messages"][0]["deleted"], true);
    let (status, _) = fixture.api(Method::DELETE, "/api/rooms/lobby/messages/2", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a sealed seq is no message");

    // Removing the user closes its connection and refuses it until the ban ends.
    let (status, body) = fixture
        .api(Method::POST, "/api/users/ada/disconnect", Some(json!({"reason": "spam", "ban_seconds": 60})))
        .await;
    assert_eq!((status, body["closed_here"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
    let ban = tokio::time::timeout(Duration::from_secs(5), ada.removed()).await.expect("removed in time");
    assert_eq!(ban.reason, "spam");
    let refused = hub.admission.admit(Offer { ip: None, origin: None, token: None, user: Some("ada") });
    assert_eq!(refused.err().map(|e| e.code()), Some("banned"));
    let (status, body) = fixture.api(Method::POST, "/api/users/ada/disconnect", Some(json!({"reason": ""}))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}
