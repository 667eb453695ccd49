//! The gateway: holds client connections, runs the send path (seq, store, publish, ack)
//! and the delivery path (broker to rooms to members). It keeps no chat state beyond
//! its open connections; the broker and the store behind it are traits, so the same
//! code runs against remote tiers (`gateway`) or embedded ones (`roomcast`).
//!
//! A connection is one [`conn::Conn`], the core every front door shares; Socket.IO
//! ([`sio`]) and the JSON protocol ([`json`]) are codecs over it, the latter carried by
//! WebSockets ([`ws`]) or WebTransport ([`wt`]) (ARCHITECTURE.md).

mod admission;
mod api;
mod auth;
mod budgets;
mod config;
mod conn;
mod directory;
mod error;
#[cfg(test)]
mod fuzz;
mod http;
mod hub;
mod json;
mod jwks;
mod limits;
mod link;
mod metrics;
mod outbox;
mod presence;
mod protocol;
mod rooms;
mod signals;
mod sink;
mod sio;
mod tls;
mod upstream;
mod watch;
mod ws;
mod wt;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout::Broker;
use metrics_exporter_prometheus::PrometheusHandle;
use persister::Archive;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use admission::Access;
pub use api::{ApiArgs, ApiConfig};
pub use auth::mint as mint_token;
pub use config::{Edge, EdgeArgs, SelfSign};
pub use limits::Limits;
pub use metrics::describe as describe_metrics;
pub use upstream::Metered;
pub use wt::WebTransport;

use hub::{Hub, DRAINING};
use presence::PresenceConfig;
use rooms::Rooms;

/// A running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    hub: Arc<Hub>,
    sio: socketioxide::service::SocketIoService<http::Router>,
    /// The presence heartbeat, which says farewell when the gateway stops.
    heartbeat: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Gateway {
    /// Starts the broker link and the store probe.
    pub fn start(broker: Arc<dyn Broker>, archive: Arc<dyn Archive>, limits: Limits, access: Access) -> Self {
        let (interests, interest_rx) = mpsc::unbounded_channel();
        let gateway_id: Arc<str> = ulid::Ulid::new().to_string().into();
        let presence = PresenceConfig {
            gateway: gateway_id.clone(),
            list_max: limits.presence_list_max,
            grace: limits.presence_grace,
        };
        let rooms = Arc::new(Rooms::new(archive.clone(), broker.clone(), interests, limits.clone(), presence));
        let jwks = access.auth.as_ref().and_then(|auth| auth.key_set()).cloned();
        let hub = Arc::new(Hub::new(broker.clone(), archive, rooms.clone(), limits, access, gateway_id.clone()));
        let stopped = hub.lifecycle.stopped.clone();
        let housekeeping = {
            let hub = hub.clone();
            move || hub.room_creations.retain_recent()
        };
        let heartbeat =
            tokio::spawn(signals::heartbeat(broker.clone(), rooms.clone(), gateway_id, housekeeping, stopped.clone()));
        tokio::spawn(link::keep_link(hub.clone(), interest_rx));
        tokio::spawn(stopped.clone().run_until_cancelled_owned(probe_store(hub.clone())));
        if let Some(jwks) = jwks {
            tokio::spawn(stopped.clone().run_until_cancelled_owned(jwks.keep_fresh()));
        }
        tokio::spawn(stopped.run_until_cancelled_owned(publish_send_queue(hub.clone())));
        // The same frame limits as /ws, on both transports: max_payload covers
        // long-polling, ws_max_* the WebSocket transport (whose default is 64 MiB).
        let (sio, io) = socketioxide::SocketIo::builder()
            .max_payload(hub.limits.max_frame_bytes as u64)
            .ws_max_message_size(hub.limits.max_frame_bytes)
            .ws_max_frame_size(hub.limits.max_frame_bytes)
            .build_with_inner_svc(http::Router { hub: hub.clone() });
        sio::install(&io, hub.clone());
        Self { hub, sio, heartbeat: Arc::new(std::sync::Mutex::new(Some(heartbeat))) }
    }

    /// Serves HTTP and WebSockets (over TLS when `tls` is set) on `listener` until
    /// [`Gateway::drain`] or [`Gateway::stop`].
    pub async fn serve(&self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        http::serve(self.hub.clone(), self.sio.clone(), listener, tls).await;
    }

    pub fn is_ready(&self) -> bool {
        self.hub.ready.is_ready()
    }

    pub fn connections(&self) -> usize {
        self.hub.connections()
    }

    /// Graceful drain: turns not-ready, stops accepting, closes every connection with
    /// 1012 at a random moment within `window`, and returns once all are gone (or
    /// `window` plus 5 s has passed).
    pub async fn drain(&self, window: Duration) {
        tracing::info!(?window, connections = self.connections(), "draining");
        self.hub.ready.set(DRAINING, true);
        self.hub.lifecycle.drain(window);
        let deadline = tokio::time::Instant::now() + window + Duration::from_secs(5);
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(left = self.connections(), "drained");
    }

    /// Runs a gateway process's life: the admin endpoint (metrics, health, readiness),
    /// the server API when `api` is set, the front doors (TCP on `listen`, WebTransport
    /// when `wt` is set), and on SIGTERM the drain, then stop.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        self,
        listen: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        wt: Option<WebTransport>,
        api: Option<ApiConfig>,
        admin: SocketAddr,
        metrics: PrometheusHandle,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let admin = telemetry::bind(admin, "metrics").await?;
        let stopped = self.hub.lifecycle.stopped.clone();
        tokio::spawn(telemetry::serve_admin(admin, metrics, self.hub.ready.clone(), stopped.clone()));
        if let Some(api) = api {
            let listener = telemetry::bind(api.listen, "server API").await?;
            tracing::info!(url = %format!("http://{}/api/openapi.json", api.listen), "serving the server API");
            tokio::spawn(api::serve(self.hub.clone(), api.keys, listener, stopped));
        }
        let listener = telemetry::bind(listen, "HTTP").await?;
        let webtransport = wt.map(|wt| {
            tracing::info!(udp_port = wt.offered.port, hash = ?wt.offered.sha256, "serving WebTransport on /wt");
            // Known before the first page asks where it is.
            let _ = self.hub.webtransport.set(wt.offered.clone());
            tokio::spawn(wt::serve(self.hub.clone(), wt))
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(url = %format!("{scheme}://{listen}"), "serving");
        let server = self.clone();
        tokio::spawn(async move { server.serve(listener, tls).await });

        telemetry::terminated().await;
        self.drain(drain).await;
        self.stop();
        let heartbeat = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The last beat, then the farewell; and WebTransport's closes sent: each under its
        // own deadline.
        let finished = futures::future::join_all(heartbeat.into_iter().chain(webtransport));
        let _ = tokio::time::timeout(Duration::from_secs(10), finished).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Stops accepting and ends the background tasks, without closing connections.
    pub fn stop(&self) {
        self.hub.ready.set(DRAINING, true);
        self.hub.lifecycle.stopped.cancel();
    }
}

/// Asks the store for a cheap answer every second, for `roomcast_gateway_store_up` (not
/// for readiness: the store is shared by every pod).
async fn probe_store(hub: Arc<Hub>) {
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), hub.archive.max_seq("_readyz")).await;
        ::metrics::gauge!("roomcast_gateway_store_up").set(if matches!(answer, Ok(Ok(_))) { 1.0 } else { 0.0 });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets `roomcast_gateway_send_queue_bytes` from the send budget every second: one
/// store per second instead of a shared gauge updated on every frame.
async fn publish_send_queue(hub: Arc<Hub>) {
    loop {
        metrics::METRICS.send_queue_bytes.set(hub.send_budget.queued() as f64);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
