//! What every roomcast binary shares for being operated: JSON logs, the Prometheus
//! recorder, process metrics, and the admin endpoint (`/metrics`, `/healthz`, `/readyz`).

mod admin;
mod logging;
mod signal;

pub use admin::{bind, serve_admin, Readiness, SHUTTING_DOWN, STARTING};
pub use logging::init_logging;
pub use signal::terminated;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// This build's version: the crate version and the git commit it was built from
/// (telemetry/build.rs), e.g. `0.1.0+3f2a9c1d0`.
pub const VERSION: &str = env!("ROOMCAST_BUILD_VERSION");

/// Histogram buckets in seconds, from 100 µs to 10 s: chat latencies live in that span.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for counts (batch sizes).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Installs the global Prometheus recorder and records `roomcast_build_info`.
pub fn init_metrics(service: &'static str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("setting latency buckets")?
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_size".into()), SIZE_BUCKETS)
        .context("setting size buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder (is another one installed?)")?;
    metrics::gauge!("roomcast_build_info", "service" => service, "version" => VERSION).set(1.0);
    metrics_process::Collector::default().describe();
    Ok(handle)
}
