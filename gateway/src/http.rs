//! The gateway's HTTP front: the web page, health and readiness, the `/ws` upgrade, and
//! where WebTransport is (`/wt/cert-hash`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use socketioxide::service::SocketIoService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::admission::{credentials, Offer, PeerAddr, FULL};
use crate::hub::Hub;

const INDEX_HTML: &str = include_str!("../../web/index.html");

type Reply = Response<Full<Bytes>>;

/// The plain HTTP routes, behind Socket.IO's service (which takes `/socket.io/`).
#[derive(Clone)]
pub(crate) struct Router {
    pub(crate) hub: Arc<Hub>,
}

/// Marks a connection as upgraded to `/ws`: its session closes itself with 1012 when
/// draining, so the transport is not cut under it.
#[derive(Clone)]
struct OwnClose(Arc<AtomicBool>);

impl hyper::service::Service<Request<Incoming>> for Router {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(route(self.hub.clone(), req).map(Ok))
    }
}

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A request head (request line and headers) larger than this is answered 431 by hyper:
/// real clients send a few KiB, and a 200 KB header line is only ever an attack.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until the gateway closes; open connections carry on.
pub async fn serve(hub: Arc<Hub>, sio: SocketIoService<Router>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = hub.lifecycle.closing.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let draining = hub.lifecycle.drain_moment();
        let sio = sio.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(Drainable::new(stream, draining), peer, sio).await,
                Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_http(Drainable::new(stream, draining), peer, sio).await,
                    Ok(Err(err)) => tracing::debug!(%err, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_http<S>(stream: Drainable<S>, peer: std::net::SocketAddr, sio: SocketIoService<Router>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let own_close = OwnClose(stream.own_close.clone());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(own_close.clone());
        req.extensions_mut().insert(PeerAddr(peer));
        if req.uri().path().starts_with("/socket.io/") {
            detach_head(&mut req);
        }
        hyper::service::Service::call(&sio, req)
    });
    // A client has HEADER_TIMEOUT to send its request head (slowloris); an upgraded
    // connection is the session's from then on.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(err) = conn.await {
        tracing::debug!(%err, "HTTP connection ended with an error");
    }
}

/// Copies the URI and header values out of hyper's read buffer, of which they are slices:
/// Socket.IO keeps a connection's request head for its whole life, and with it the
/// whole 8 KiB buffer.
fn detach_head<B>(req: &mut Request<B>) {
    if let Ok(uri) = hyper::Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
    for value in req.headers_mut().values_mut() {
        if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            *value = copy;
        }
    }
}

async fn route(hub: Arc<Hub>, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => match hub.ready.not_ready_reason() {
            None => respond(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        (&Method::GET, "/ws") => upgrade(hub, req).await,
        (&Method::GET, "/wt/cert-hash") => match hub.webtransport.get().map(serde_json::to_string) {
            Some(Ok(offered)) => {
                let mut reply = respond(StatusCode::OK, "application/json", offered);
                // A restart may bring a new self-signed certificate.
                reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                reply
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "this server offers no WebTransport: use /ws\n"),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// A client connection that ends itself during a drain, at a random moment within the
/// drain window: Socket.IO clients see a transport close, which they retry (on another
/// pod). `/ws` connections close themselves with 1012 instead.
struct Drainable<S> {
    io: S,
    /// Dropped once a `/ws` session owns the connection: the pending wait holds the waker
    /// of the task that last polled it (hyper's, which has ended), and with it that task's
    /// memory, for as long as it is kept.
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    own_close: Arc<AtomicBool>,
}

impl<S> Drainable<S> {
    fn new(io: S, moment: impl Future<Output = ()> + Send + 'static) -> Self {
        Self { io, cut: Some(Box::pin(moment)), own_close: Arc::new(AtomicBool::new(false)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Drainable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.own_close.load(Ordering::Relaxed) {
            self.cut = None;
        } else if self.cut.as_mut().is_some_and(|cut| cut.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "server draining")));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Drainable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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

async fn upgrade(hub: Arc<Hub>, req: Request<Incoming>) -> Reply {
    let (user, token) = credentials(req.uri().query().unwrap_or_default());
    hub.admission.prepare(token.as_deref()).await;
    let offer = Offer {
        ip: req.extensions().get::<PeerAddr>().map(|p| p.0.ip()),
        origin: req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()),
        token: token.as_deref(),
        user: user.as_deref(),
    };
    // Starting or draining: no upgrade. A full gateway is refused by admission itself,
    // with its own code (server_full), and the place it takes must not count against it.
    if let Some(why) = hub.ready.not_ready_reason().filter(|why| *why != FULL) {
        return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not accepting connections: {why}\n"));
    }
    let admitted = match hub.admission.admit(offer) {
        Ok(admitted) => admitted,
        Err(refused) => return respond(refused.status(), "text/plain", format!("{}: {refused}\n", refused.code())),
    };
    if admitted.user.is_none() {
        return bad_request("a user name is required on /ws: connect with ?user=NAME, or a token".into());
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
    if let Some(own_close) = req.extensions().get::<OwnClose>() {
        own_close.0.store(true, Ordering::Relaxed);
    }
    let accept = derive_accept_key(key.as_bytes());
    let config = ws_config(&hub);
    // Only the upgrade is kept, not the request: its head is a slice of hyper's 8 KiB read
    // buffer, which the session would otherwise hold for the connection's life.
    let upgraded = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                crate::ws::serve(hub, ws, admitted).await;
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

const WRITE_GATHER: usize = 8 * 1024;

/// Small buffers: most connections are idle, and every byte here is paid per connection.
/// Chat frames are a few hundred bytes; a bigger one is read in several steps. Writes are
/// gathered up to [`WRITE_GATHER`] bytes, so that the writer's batch of frames goes out in
/// one or two syscalls rather than one per frame; an idle connection never grows it.
fn ws_config(hub: &Hub) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_GATHER)
        .max_write_buffer_size(hub.limits.send_queue_bytes + hub.limits.hard_frame_bytes)
        .max_message_size(Some(hub.limits.hard_frame_bytes))
        .max_frame_size(Some(hub.limits.hard_frame_bytes))
}
