//! The admin HTTP endpoint: `/metrics` for Prometheus, `/healthz` for liveness,
//! `/readyz` for readiness. It runs on its own port so scrapes never queue behind clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A shared ready flag: set by whoever knows whether the service can do its work.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
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
            _ = shutdown.wait_for(|stop| *stop) => return,
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
                    "/readyz" if ready.get() => text(StatusCode::OK, "ready\n".into()),
                    "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
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
