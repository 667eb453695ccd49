//! The gateway: holds client connections, runs the send path (seq, store, publish, ack)
//! and the delivery path (broker to rooms to members). It keeps no chat state beyond
//! its open connections; the broker and the store behind it are traits, so the same
//! code runs against remote tiers (`gateway`) or embedded ones (`roomcast`).

mod admission;
mod auth;
mod config;
#[cfg(test)]
mod fuzz;
mod http;
mod limits;
mod link;
mod metrics;
mod outbox;
mod protocol;
mod rooms;
mod send;
mod session;
mod socketio;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout::Broker;
use metrics_exporter_prometheus::PrometheusHandle;
use persister::Archive;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use admission::Access;
pub use auth::mint as mint_token;
pub use config::{Edge, EdgeArgs};
pub use limits::Limits;
pub use metrics::describe as describe_metrics;
pub use protocol::{ClientFrame, Refusal};
pub use session::SERVICE_RESTART;

use admission::Admission;
use rooms::Rooms;

/// What every connection shares.
pub(crate) struct Core {
    broker: Arc<dyn Broker>,
    archive: Arc<dyn Archive>,
    rooms: Arc<Rooms>,
    limits: Limits,
    admission: Arc<Admission>,
    broker_up: Arc<AtomicBool>,
    store_up: AtomicBool,
    /// `Some(window)` once draining: connections close at random within the window.
    drain: watch::Sender<Option<Duration>>,
    next_member: AtomicU64,
    connections: AtomicUsize,
}

impl Core {
    fn next_member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    fn draining(&self) -> watch::Receiver<Option<Duration>> {
        self.drain.subscribe()
    }

    fn not_ready_reason(&self) -> Option<&'static str> {
        if self.drain.borrow().is_some() {
            Some("draining")
        } else if !self.broker_up.load(Ordering::Relaxed) {
            Some("broker unreachable")
        } else if !self.store_up.load(Ordering::Relaxed) {
            Some("store unreachable")
        } else {
            None
        }
    }

    fn connection_opened(&self, protocol: &'static str) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!("roomcast_gateway_connects_total", "protocol" => protocol).increment(1);
        ::metrics::gauge!("roomcast_gateway_connections", "protocol" => protocol).increment(1.0);
    }

    fn connection_closed(&self, protocol: &'static str, reason: &'static str) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        ::metrics::counter!("roomcast_gateway_disconnects_total", "protocol" => protocol, "reason" => reason)
            .increment(1);
        ::metrics::gauge!("roomcast_gateway_connections", "protocol" => protocol).decrement(1.0);
    }
}

/// A running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    core: Arc<Core>,
    sio: socketioxide::service::SocketIoService<http::Router>,
    /// True once no new connections are accepted.
    closed: watch::Sender<bool>,
    /// True once the background tasks (broker link, store probe) should end.
    stop: watch::Sender<bool>,
}

impl Gateway {
    /// Starts the broker link and the store probe.
    pub fn start(broker: Arc<dyn Broker>, archive: Arc<dyn Archive>, limits: Limits, access: Access) -> Self {
        let (interests, interest_rx) = mpsc::unbounded_channel();
        let rooms = Arc::new(Rooms::new(archive.clone(), interests, limits.clone()));
        let (stop, stopped) = watch::channel(false);
        let core = Arc::new(Core {
            broker: broker.clone(),
            archive,
            rooms: rooms.clone(),
            admission: Arc::new(Admission::new(access, limits.max_connections, limits.max_connections_per_ip)),
            limits,
            broker_up: Arc::new(AtomicBool::new(false)),
            store_up: AtomicBool::new(false),
            drain: watch::channel(None).0,
            next_member: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        });
        tokio::spawn(link::keep_link(broker, rooms, interest_rx, core.broker_up.clone(), stopped.clone()));
        tokio::spawn(probe_store(core.clone(), stopped));
        // The same frame limits as /ws, on both transports: max_payload covers
        // long-polling, ws_max_* the WebSocket transport (whose default is 64 MiB).
        let (sio, io) = socketioxide::SocketIo::builder()
            .max_payload(core.limits.max_frame_bytes as u64)
            .ws_max_message_size(core.limits.max_frame_bytes)
            .ws_max_frame_size(core.limits.max_frame_bytes)
            .build_with_inner_svc(http::Router { core: core.clone() });
        socketio::install(&io, core.clone());
        let gateway = Self { core, sio, closed: watch::channel(false).0, stop };
        gateway.publish_readiness();
        gateway
    }

    /// Serves HTTP and WebSockets (over TLS when `tls` is set) on `listener` until
    /// [`Gateway::drain`] or [`Gateway::stop`].
    pub async fn serve(&self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        http::serve(self.core.clone(), self.sio.clone(), listener, tls, self.closed.subscribe()).await;
    }

    pub fn is_ready(&self) -> bool {
        self.core.not_ready_reason().is_none()
    }

    pub fn connections(&self) -> usize {
        self.core.connections.load(Ordering::Relaxed)
    }

    /// Graceful drain: turns not-ready, stops accepting, closes every connection with
    /// 1012 at a random moment within `window`, and returns once all are gone (or
    /// `window` plus 5 s has passed).
    pub async fn drain(&self, window: Duration) {
        tracing::info!(?window, connections = self.connections(), "draining");
        self.core.drain.send_replace(Some(window));
        self.closed.send_replace(true);
        let deadline = tokio::time::Instant::now() + window + Duration::from_secs(5);
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(left = self.connections(), "drained");
    }

    /// Runs a gateway process's life: the admin endpoint (metrics, health, readiness),
    /// the front door on `listen`, and on SIGTERM the drain, then stop.
    pub async fn run(
        self,
        listen: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        admin: SocketAddr,
        metrics: PrometheusHandle,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let (admin_stop, admin_stopped) = watch::channel(false);
        let ready = telemetry::Readiness::default();
        let admin = telemetry::bind(admin, "metrics").await?;
        tokio::spawn(telemetry::serve_admin(admin, metrics, ready.clone(), admin_stopped));
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                ready.set(readiness.is_ready());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let listener = telemetry::bind(listen, "HTTP").await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(url = %format!("{scheme}://{listen}"), "serving");
        let server = self.clone();
        tokio::spawn(async move { server.serve(listener, tls).await });

        telemetry::terminated().await;
        self.drain(drain).await;
        self.stop();
        let _ = admin_stop.send(true);
        tracing::info!("stopped");
        Ok(())
    }

    /// Stops accepting and ends the background tasks, without closing connections.
    pub fn stop(&self) {
        self.closed.send_replace(true);
        self.stop.send_replace(true);
    }

    fn publish_readiness(&self) {
        let core = self.core.clone();
        let mut stopped = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                ::metrics::gauge!("roomcast_gateway_ready").set(if core.not_ready_reason().is_none() {
                    1.0
                } else {
                    0.0
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = wait_until(&mut stopped, |s| *s) => {
                        ::metrics::gauge!("roomcast_gateway_ready").set(0.0);
                        return;
                    }
                }
            }
        });
    }
}

/// Asks the store for a cheap answer every second, for readiness.
async fn probe_store(core: Arc<Core>, mut stopped: watch::Receiver<bool>) {
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), core.archive.max_seq("_readyz")).await;
        core.store_up.store(matches!(answer, Ok(Ok(_))), Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = wait_until(&mut stopped, |s| *s) => return,
        }
    }
}

/// Waits until `rx` holds a value `until` accepts, or its sender is gone. Unlike a bare
/// `wait_for`, it keeps no borrow of the value, so the caller's future stays `Send`.
pub(crate) async fn wait_until<T>(rx: &mut watch::Receiver<T>, until: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(until).await.map(drop);
}
