//! The gateway's hot-path metrics, registered once so the fan-out loop does no lookups.
//! Colder metrics are recorded with the `metrics` macros where they happen.

use std::sync::LazyLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub struct GatewayMetrics {
    pub send_queue_bytes: Gauge,
    pub slow_consumer_disconnects: Counter,
    pub frames_sent_ws: Counter,
    pub frames_received_ws: Counter,
    pub deliveries: Counter,
    pub delivery_latency: Histogram,
}

/// Created on first use, which is after `main` installed the recorder.
pub static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(|| GatewayMetrics {
    send_queue_bytes: gauge!("roomcast_gateway_send_queue_bytes"),
    slow_consumer_disconnects: counter!("roomcast_gateway_slow_consumer_disconnects_total"),
    frames_sent_ws: counter!("roomcast_gateway_frames_sent_total", "protocol" => "ws"),
    frames_received_ws: counter!("roomcast_gateway_frames_received_total", "protocol" => "ws"),
    deliveries: counter!("roomcast_gateway_deliveries_total"),
    delivery_latency: histogram!("roomcast_gateway_delivery_latency_seconds"),
});
