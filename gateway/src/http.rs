//! The gateway's HTTP front: the web page, health and readiness, and the `/ws` upgrade.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::Core;

const INDEX_HTML: &str = include_str!("../../web/index.html");

type Reply = Response<Full<Bytes>>;

/// Accepts connections until `stop` turns true; open connections carry on.
pub async fn serve(core: Arc<Core>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::wait_until(&mut stop, |stop| *stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let core = core.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let core = core.clone();
                async move { Ok::<_, Infallible>(route(core, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = conn.await {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
        });
    }
}

fn route(core: Arc<Core>, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => match core.not_ready_reason() {
            None => respond(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        (&Method::GET, "/ws") => upgrade(core, req),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn bad_request(message: String) -> Reply {
    respond(StatusCode::BAD_REQUEST, "text/plain", message + "\n")
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

fn upgrade(core: Arc<Core>, mut req: Request<Incoming>) -> Reply {
    let user = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "user")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if let Err(refusal) = core.limits.check_user(&user) {
        return bad_request(format!("?user=NAME is required: {}", refusal.message));
    }
    if !header_has(&req, header::UPGRADE, "websocket") || !header_has(&req, header::CONNECTION, "upgrade") {
        return bad_request("/ws needs a WebSocket upgrade request".into());
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return bad_request("only WebSocket version 13 is supported".into());
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request("missing Sec-WebSocket-Key".into());
    };
    if let Some(why) = core.not_ready_reason() {
        return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not accepting connections: {why}\n"));
    }
    let accept = derive_accept_key(key.as_bytes());
    let config = ws_config(&core);
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                crate::session::serve(core, ws, user).await;
            }
            Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Small buffers: most connections are idle, and every byte here is paid per connection.
fn ws_config(core: &Core) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(core.limits.send_queue_bytes + core.limits.hard_frame_bytes)
        .max_message_size(Some(core.limits.hard_frame_bytes))
        .max_frame_size(Some(core.limits.hard_frame_bytes))
}
