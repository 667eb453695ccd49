//! The admin HTTP endpoint: `/metrics` for Prometheus, `/healthz` for liveness,
//! `/readyz` for readiness. It runs on its own port so scrapes never queue behind clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Not ready: the process is not serving yet.
pub const STARTING: &str = "starting";
/// Not ready: the process got SIGTERM and is on its way out.
pub const SHUTTING_DOWN: &str = "shutting down";

/// Whether the service can do its work: ready while none of its reasons for not being
/// ready holds. Whoever knows a reason sets it; `/readyz` and the `ready` gauge read the
/// same state, so they never disagree.
#[derive(Clone)]
pub struct Readiness(Arc<Inner>);

struct Inner {
    gauge: metrics::Gauge,
    /// Each reason, and whether it holds now.
    reasons: Mutex<Vec<(&'static str, bool)>>,
}

impl Readiness {
    /// Not ready for any of `reasons` until each is cleared; `gauge` (e.g.
    /// `roomcast_gateway_ready`) is 1 while ready.
    pub fn new(gauge: &'static str, reasons: &[&'static str]) -> Self {
        let inner = Inner {
            gauge: metrics::gauge!(gauge),
            reasons: Mutex::new(reasons.iter().map(|reason| (*reason, true)).collect()),
        };
        let readiness = Self(Arc::new(inner));
        readiness.publish();
        readiness
    }

    /// Sets whether `reason` holds; a reason not given to [`Readiness::new`] is added.
    pub fn set(&self, reason: &'static str, holds: bool) {
        {
            let mut reasons = self.reasons();
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some(entry) => entry.1 = holds,
                None => reasons.push((reason, holds)),
            }
        }
        self.publish();
    }

    /// The first reason that holds, or None when ready.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        self.reasons().iter().find(|(_, holds)| *holds).map(|(reason, _)| *reason)
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    fn reasons(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, bool)>> {
        self.0.reasons.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self) {
        self.0.gauge.set(if self.is_ready() { 1.0 } else { 0.0 });
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` is cancelled.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let collector = Arc::new(metrics_process::Collector::default());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "admin endpoint: accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (handle, ready, collector) = (handle.clone(), ready.clone(), collector.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = match req.uri().path() {
                    "/metrics" => {
                        collector.collect();
                        text(StatusCode::OK, handle.render())
                    }
                    "/healthz" => text(StatusCode::OK, "ok\n".into()),
                    "/readyz" => match ready.not_ready_reason() {
                        None => text(StatusCode::OK, "ready\n".into()),
                        Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    },
                    _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                tracing::debug!(%err, "admin connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// Binds `addr`, with an error that names what could not be bound.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen for {what} on {addr}: {err} (is the port in use?)"))
}
