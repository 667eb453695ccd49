//! Who gets in and what they may do: JWT (HS256 and RS256) on `/ws`, the rooms claim,
//! the origin allow-list, connection and rate limits, TLS, and stored text that is never
//! interpreted by the store.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{bin, metric, openssl, start_roomcast, Client, Stack};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-test-secret-test-secret";

/// `roomcast token ...`, as a developer would run it.
fn mint(args: &[&str]) -> String {
    let out = Command::new(bin("roomcast")).arg("token").args(args).output().expect("run roomcast token");
    assert!(out.status.success(), "roomcast token failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 token").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tokens_name_the_user_and_limit_the_rooms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, metrics) = start_roomcast(
        "auth-hs256",
        dir.path(),
        &["--auth-jwt-secret", SECRET, "--auth-required", "--allowed-origins", "https://chat.example"],
    );
    let base = format!("ws://127.0.0.1:{port}");

    let refused = Client::connect_query(&base, "anon", "user=anon").await.err().expect("no token, no entry");
    assert!(refused.starts_with("401 token_missing"), "{refused}");
    let forged = mint(&["--user", "ada", "--secret", "another-secret-another-secret-xx"]);
    let refused = Client::connect_query(&base, "forged", &format!("token={forged}")).await.err().expect("forged");
    assert!(refused.starts_with("401 token_invalid"), "{refused}");
    let expired = mint(&["--user", "ada", "--ttl", "1s", "--secret", SECRET]);
    tokio::time::sleep(Duration::from_secs(7)).await; // past the 5 s leeway
    let refused = Client::connect_query(&base, "late", &format!("token={expired}")).await.err().expect("expired");
    assert!(refused.starts_with("401 token_expired"), "{refused}");
    assert_eq!(metric(metrics, "roomcast_gateway_refused_connections_total{reason=\"token_missing\"}"), 1.0);
    assert_eq!(metric(metrics, "roomcast_gateway_refused_connections_total{reason=\"token_invalid\"}"), 1.0);

    // The token names the user; ?user= is ignored. The rooms claim limits join and history.
    let token = mint(&["--user", "ada", "--rooms", "team-*,lobby", "--secret", SECRET]);
    let mut ada = Client::connect_query(&base, "ada", &format!("user=mallory&token={token}")).await.expect("ada");
    ada.join("team-red", None).await;
    ada.send("team-red", "hello", "a1").await;
    let message = ada.wait_for(|f| f["type"] == "message").await;
    assert_eq!(message["user"], "ada", "the name comes from the token, not the query");
    ada.send_json(json!({"type": "join", "room": "admin"})).await;
    let error = ada.wait_for(|f| f["type"] == "error").await;
    assert_eq!(error["code"], "forbidden_room", "{error}");
    ada.frames.clear();
    ada.send_json(json!({"type": "history", "room": "admin"})).await;
    let error = ada.wait_for(|f| f["type"] == "error").await;
    assert_eq!(error["code"], "forbidden_room", "{error}");

    // A browser from another site is refused; one from the allowed origin is let in.
    let mut request = http_request(port, &format!("/ws?token={token}"));
    request.headers_mut().insert("Origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!("a foreign origin got in: {:?}", other.map(|_| ())),
    }
    let mut request = http_request(port, &format!("/ws?token={token}"));
    request.headers_mut().insert("Origin", "https://chat.example".parse().expect("header"));
    tokio_tungstenite::connect_async(request).await.expect("the allowed origin connects");
}

fn http_request(port: u16, path: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    format!("ws://127.0.0.1:{port}{path}").into_client_request().expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_against_the_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl(dir.path(), &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"]);
    openssl(dir.path(), &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    let public = dir.path().join("pub.pem").display().to_string();
    let (_proc, port, _) =
        start_roomcast("auth-rs256", &dir.path().join("data"), &["--auth-jwt-public-key", &public, "--auth-required"]);
    let base = format!("ws://127.0.0.1:{port}");
    let token = rs256_token(&dir.path().join("key.pem"), "grace");
    let mut grace = Client::connect_query(&base, "grace", &format!("token={token}")).await.expect("RS256 token");
    grace.join("lobby", None).await;
    grace.send("lobby", "signed in", "g1").await;
    assert_eq!(grace.wait_for(|f| f["type"] == "message").await["user"], "grace");
    // An HS256 token is refused by an RS256 server, even one "signed" with the public key.
    let hs = mint(&["--user", "grace", "--secret", SECRET]);
    let refused = Client::connect_query(&base, "hs", &format!("token={hs}")).await.err().expect("wrong algorithm");
    assert!(refused.starts_with("401 token_invalid"), "{refused}");
}

/// An RS256 JWT made with openssl alone, so the test does not share the server's code.
fn rs256_token(key: &Path, user: &str) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let signing_input = format!(
        "{}.{}",
        b64(json!({"alg": "RS256", "typ": "JWT"}).to_string().as_bytes()),
        b64(json!({"sub": user, "exp": exp}).to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(signing_input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl dgst failed");
    format!("{signing_input}.{}", b64(&out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_rate_limits_refuse_with_their_own_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, metrics) = start_roomcast(
        "limits",
        dir.path(),
        &["--max-connections-per-ip", "3", "--max-connections", "5", "--frames-per-second", "5", "--frame-burst", "5"],
    );
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(Client::connect_from("127.0.0.1", port, &format!("u{n}")).await.expect("under the per-IP limit"));
    }
    let refused = Client::connect_from("127.0.0.1", port, "u3").await.err().expect("4th from one address");
    assert!(refused.starts_with("429 too_many_connections"), "{refused}");
    // 127.0.0.2 is another client address (Linux routes all of 127/8 to loopback).
    held.push(Client::connect_from("127.0.0.2", port, "v0").await.expect("another address"));
    held.push(Client::connect_from("127.0.0.2", port, "v1").await.expect("another address"));
    let refused = Client::connect_from("127.0.0.2", port, "v2").await.err().expect("6th on the gateway");
    assert!(refused.starts_with("503 server_full"), "{refused}");
    assert_eq!(metric(metrics, "roomcast_gateway_refused_connections_total{reason=\"server_full\"}"), 1.0);
    // A closed connection gives its place back.
    held.pop().expect("held").close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.push(Client::connect_from("127.0.0.2", port, "v3").await.expect("the freed place"));

    // 20 frames at once against 5/s with a burst of 5: some are refused, the connection lives.
    let mut fast = held.remove(0);
    for _ in 0..20 {
        fast.send_json(json!({"type": "history", "room": "lobby"})).await;
    }
    let (mut answered, mut limited) = (0, 0);
    while answered < 20 {
        let frame = tokio::time::timeout(support::WAIT, fast.next_frame()).await.expect("an answer").expect("open");
        if frame["type"] == "history" || frame["type"] == "error" {
            answered += 1;
            limited += usize::from(frame["code"] == "rate_limited");
        }
    }
    assert!((10..=15).contains(&limited), "{limited} of 20 refused; 5 (burst) plus what 5/s refilled are allowed");
    assert!(metric(metrics, "roomcast_gateway_bad_frames_total{kind=\"rate_limited\"}") >= limited as f64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fast.join("lobby", None).await; // the bucket refilled: the connection carries on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_with_the_given_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (_proc, port, _) = start_roomcast(
        "tls",
        &dir.path().join("data"),
        &["--tls-cert", &cert.display().to_string(), "--tls-key", &key.display().to_string()],
    );
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    for c in tokio_rustls::rustls::pki_types::CertificateDer::pem_file_iter(&cert).expect("cert") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake against the given certificate");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws?user=tess"), tls)
        .await
        .expect("WebSocket over TLS");
    ws.send(Message::Text(json!({"type": "join", "room": "secure"}).to_string().into())).await.expect("send");
    let joined = ws.next().await.expect("frame").expect("read");
    let joined: Value = serde_json::from_str(joined.to_text().expect("text")).expect("json");
    assert_eq!(joined["type"], "joined");
    // Plain HTTP on the TLS port gets no answer it could mistake for a page.
    assert!(support::http_get(port, "/").map(|(status, _)| status != 200).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_shaped_text_is_stored_verbatim() {
    let stack = Stack::start("verbatim", 1);
    let mut eve = Client::connect(&stack.ws_url(0), "eve").await;
    eve.join("lobby", None).await;
    let payloads = [
        r#"{"$gt": ""}"#,
        r#"{"$where": "sleep(1000)"}"#,
        "$set",
        r#"{"room": {"$ne": null}}"#,
        "'; db.messages.drop(); //",
        r#"{"$regex": ".*"}"#,
    ];
    for (n, text) in payloads.iter().enumerate() {
        eve.send("lobby", text, &format!("p{n}")).await;
    }
    eve.wait_messages("lobby", payloads.len()).await;
    use futures::TryStreamExt;
    let client = stack.mongo.client().await;
    let coll = client.database(&stack.database).collection::<mongodb::bson::Document>("messages");
    let docs: Vec<mongodb::bson::Document> = coll
        .find(mongodb::bson::doc! {"room": "lobby"})
        .sort(mongodb::bson::doc! {"seq": 1})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("collect");
    let stored: Vec<&str> = docs.iter().map(|d| d.get_str("text").expect("text is a plain string")).collect();
    assert_eq!(stored, payloads, "every payload is stored as the string it was, nothing evaluated");
    // Nothing was dropped or widened: exactly these documents, all in their room.
    assert_eq!(docs.len(), payloads.len());
    assert_eq!(coll.count_documents(mongodb::bson::doc! {"room": {"$ne": "lobby"}}).await.expect("count"), 0);
}

/// An HS256 token with these claims, signed with [`SECRET`].
fn signed(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign a token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_by_name_for_nbf_audience_issuer_and_algorithm() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, _) = start_roomcast(
        "auth-claims",
        dir.path(),
        &[
            "--auth-jwt-secret",
            SECRET,
            "--auth-required",
            "--auth-audience",
            "roomcast",
            "--auth-issuer",
            "https://app",
        ],
    );
    let base = format!("ws://127.0.0.1:{port}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "ada", "exp": now + 600, "aud": "roomcast", "iss": "https://app"});
        claims.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        claims
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!("{}.{}.", engine.encode(br#"{"alg":"none"}"#), engine.encode(claims(json!({})).to_string()));
    let cases = [
        ("nbf an hour ahead", signed(claims(json!({"nbf": now + 3600}))), "not valid yet"),
        ("another audience", signed(claims(json!({"aud": "other-app"}))), "aud"),
        ("another issuer", signed(claims(json!({"iss": "https://evil"}))), "iss"),
        ("alg none", none, "algorithm \"none\" is not accepted"),
    ];
    for (case, token, says) in cases {
        let refused = Client::connect_query(&base, "ada", &format!("token={token}")).await.err();
        let refused = refused.unwrap_or_else(|| panic!("{case}: the token was accepted"));
        assert!(refused.starts_with("401 token_invalid") && refused.contains(says), "{case}: {refused}");
    }
    let good = signed(claims(json!({})));
    Client::connect_query(&base, "ada", &format!("token={good}")).await.expect("audience and issuer match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_or_the_connection_closes_with_4401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, metrics) = start_roomcast(
        "auth-refresh",
        dir.path(),
        &["--auth-jwt-secret", SECRET, "--auth-required", "--auth-refresh-grace-seconds", "2"],
    );
    let base = format!("ws://127.0.0.1:{port}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let short = |user: &str| signed(json!({"sub": user, "exp": now + 3, "rooms": ["lobby", "team-*"]}));
    let mut ada = Client::connect_query(&base, "ada", &format!("token={}", short("ada"))).await.expect("ada");
    let mut bo = Client::connect_query(&base, "bo", &format!("token={}", short("bo"))).await.expect("bo");
    ada.join("lobby", None).await;
    ada.join("team-red", None).await;
    bo.join("lobby", None).await;

    // Ada is asked when her token's exp passes, and refreshes it: a new exp, a narrower
    // grant (team-red is left), the same connection.
    let asked = ada.wait_for(|f| f["type"] == "refresh_needed").await;
    assert_eq!(asked["grace_seconds"], 2.0, "{asked}");
    let exp = now + 3600;
    ada.send_json(json!({"type": "refresh", "token": signed(json!({"sub": "ada", "exp": exp, "rooms": ["lobby"]}))}))
        .await;
    let refreshed = ada.wait_for(|f| f["type"] == "refreshed").await;
    assert_eq!((refreshed["exp"].as_u64(), &refreshed["left"]), (Some(exp), &json!(["team-red"])), "{refreshed}");
    // A token for another user is refused, and the connection keeps its own.
    ada.send_json(json!({"type": "refresh", "token": signed(json!({"sub": "mallory", "exp": exp}))})).await;
    let refused = ada.wait_for(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "token_invalid", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("mallory")), "{refused}");

    // Bo never refreshes, but keeps talking: asked, then closed with 4401 once the grace
    // period is over (his frames do not stretch it).
    bo.wait_for(|f| f["type"] == "refresh_needed").await;
    let asked_at = std::time::Instant::now();
    let code = loop {
        // Once the server has closed, a send may fail: the close is what is read next.
        let _ = bo.send_raw(Message::Text(json!({"type": "rooms"}).to_string().into())).await;
        if let Ok(code) = tokio::time::timeout(Duration::from_millis(500), bo.wait_close()).await {
            break code;
        }
        assert!(asked_at.elapsed() < Duration::from_secs(6), "bo's talking kept his expired token's connection open");
    };
    assert_eq!(code, Some(4401), "an expired token's connection is closed with 4401");
    // Well past the old token's exp and grace, Ada still sends.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ada.send("lobby", "still here", "a1").await;
    ada.wait_for(|f| f["type"] == "ack" && f["client_id"] == "a1").await;
    let closed = "roomcast_gateway_disconnects_total{protocol=\"ws\",reason=\"token_expired\"}";
    assert_eq!(metric(metrics, closed), 1.0);
    assert_eq!(metric(metrics, "roomcast_gateway_token_refreshes_total{result=\"ok\"}"), 1.0);
    assert_eq!(metric(metrics, "roomcast_gateway_token_refreshes_total{result=\"refused\"}"), 1.0);
}

#[test]
fn a_request_head_over_16_kib_is_answered_431() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, _) = start_roomcast("big-head", dir.path(), &[]);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    // The server stops reading at 16 KiB, so the rest of the write may fail: that is fine.
    let _ = tcp.write_all(head.as_bytes());
    let mut answer = [0u8; 64];
    let read = tcp.read(&mut answer).expect("an answer before the close");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 431"), "a 200 KB header line: {answer}");
    let (status, _) = support::http_get(port, "/healthz").expect("a normal request");
    assert_eq!(status, 200, "normal requests still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, _) = start_roomcast("slowloris", dir.path(), &[]);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    tcp.write_all(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\n").await.expect("half a request");
    // The server gives a request head 10 s; it closes (or answers 408) rather than wait.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the half-sent request still held its connection after 30 s");
    let text = String::from_utf8_lossy(&rest);
    assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "unexpected answer: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_nothing_is_closed_and_a_live_one_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_proc, port, metrics) = start_roomcast("silent", dir.path(), &["--ping-seconds", "0.5"]);
    let base = format!("ws://127.0.0.1:{port}");
    // A peer that vanished: its socket is open but nothing reads it, so no pong comes back.
    let (gone, _) = tokio_tungstenite::connect_async(format!("{base}/ws?user=gone")).await.expect("connect");
    // A live client that only listens: reading answers the pings.
    let mut live = Client::connect(&base, "live").await;
    live.join("lobby", None).await;
    live.settle(Duration::from_secs(4)).await; // 8 pings, over 3 silence limits (1.25 s)
    live.send("lobby", "still here", "l1").await;
    live.wait_for(|f| f["type"] == "ack" && f["client_id"] == "l1").await;
    assert_eq!(metric(metrics, "roomcast_gateway_disconnects_total{protocol=\"ws\",reason=\"silent\"}"), 1.0);
    drop(gone);
}

/// `--auth-required` without a key to check tokens with would refuse everyone, or (with
/// a bug) let everyone in: both binaries refuse to start instead, saying why. The GKE
/// overlay relies on this to fail closed.
#[test]
fn auth_required_without_a_key_refuses_to_start() {
    for binary in ["gateway", "roomcast"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin(binary))
            .args(["--auth-required", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env_remove("ROOMCAST_AUTH_JWT_SECRET")
            .env_remove("ROOMCAST_AUTH_JWT_PUBLIC_KEY")
            .current_dir(dir.path())
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} started with --auth-required and no key");
        assert!(stderr.contains("--auth-required needs --auth-jwt-secret"), "{binary}: {stderr}");
        // An empty key (a Secret with an empty value) is no key either.
        let out = Command::new(bin(binary))
            .args(["--auth-required", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("ROOMCAST_AUTH_JWT_SECRET", "")
            .current_dir(dir.path())
            .output()
            .expect("run the binary");
        assert!(!out.status.success(), "{binary} started with an empty key");
    }
}
