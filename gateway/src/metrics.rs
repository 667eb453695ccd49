//! The gateway's hot-path metrics, registered once so the fan-out loop does no lookups.
//! Colder metrics are recorded with the `metrics` macros where they happen.

use std::sync::LazyLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram, Unit,
};

use crate::error::{ClientError, ConnectError};

/// Every front door's `protocol` label.
pub const PROTOCOLS: [&str; 3] = ["ws", "socketio", "webtransport"];

/// The series of one front door (`protocol` label).
pub struct ProtocolMetrics {
    pub frames_sent: Counter,
    pub frames_received: Counter,
    /// From a send's arrival to its answer.
    pub send_duration: Histogram,
}

impl ProtocolMetrics {
    fn new(protocol: &'static str) -> Self {
        ProtocolMetrics {
            frames_sent: counter!("roomcast_gateway_frames_sent_total", "protocol" => protocol),
            frames_received: counter!("roomcast_gateway_frames_received_total", "protocol" => protocol),
            send_duration: histogram!("roomcast_gateway_send_duration_seconds", "protocol" => protocol),
        }
    }
}

pub struct GatewayMetrics {
    pub send_queue_bytes: Gauge,
    pub slow_consumer_disconnects: Counter,
    ws: ProtocolMetrics,
    socketio: ProtocolMetrics,
    webtransport: ProtocolMetrics,
    pub deliveries: Counter,
    pub delivery_latency: Histogram,
    pub joins_from_memory: Counter,
    pub joins_from_store: Counter,
    pub room_loads: Counter,
    pub presence_entries: Gauge,
    pub presence_diffs: Counter,
    pub typing_relayed: Counter,
    pub typing_dropped: Counter,
}

impl GatewayMetrics {
    /// The series of front door `protocol` (`ws`, `socketio` or `webtransport`).
    pub fn protocol(&'static self, protocol: &str) -> &'static ProtocolMetrics {
        match protocol {
            "ws" => &self.ws,
            "webtransport" => &self.webtransport,
            _ => &self.socketio,
        }
    }
}

/// Created on first use, which is after `main` installed the recorder.
pub static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(|| GatewayMetrics {
    send_queue_bytes: gauge!("roomcast_gateway_send_queue_bytes"),
    slow_consumer_disconnects: counter!("roomcast_gateway_slow_consumer_disconnects_total"),
    ws: ProtocolMetrics::new("ws"),
    socketio: ProtocolMetrics::new("socketio"),
    webtransport: ProtocolMetrics::new("webtransport"),
    deliveries: counter!("roomcast_gateway_deliveries_total"),
    delivery_latency: histogram!("roomcast_gateway_delivery_latency_seconds"),
    joins_from_memory: counter!("roomcast_gateway_joins_total", "source" => "memory"),
    joins_from_store: counter!("roomcast_gateway_joins_total", "source" => "store"),
    room_loads: counter!("roomcast_gateway_room_loads_total"),
    presence_entries: gauge!("roomcast_gateway_presence_entries"),
    presence_diffs: counter!("roomcast_gateway_presence_diffs_total"),
    typing_relayed: counter!("roomcast_gateway_typing_total", "result" => "relayed"),
    typing_dropped: counter!("roomcast_gateway_typing_total", "result" => "dropped"),
});

/// A presence write or read to the broker failed (`op`: heartbeat, announce, read).
pub fn presence_failed(op: &'static str) {
    counter!("roomcast_gateway_presence_refresh_failures_total", "op" => op).increment(1);
}

/// Describes every gateway metric and puts the error series at zero, so dashboards and
/// alerts see them before the first failure.
pub fn describe() {
    describe_gauge!("roomcast_gateway_connections", "Open client connections, by protocol.");
    describe_counter!("roomcast_gateway_connects_total", "Client connections accepted, by protocol.");
    describe_counter!("roomcast_gateway_disconnects_total", "Client connections ended, by protocol and reason.");
    describe_counter!("roomcast_gateway_frames_received_total", "Frames received from clients, by protocol.");
    describe_counter!("roomcast_gateway_frames_sent_total", "Frames written to clients, by protocol.");
    describe_counter!("roomcast_gateway_messages_sent_total", "Client sends, by result (acked or error).");
    describe_histogram!(
        "roomcast_gateway_send_duration_seconds",
        Unit::Seconds,
        "From a send's arrival to its answer (ack or error, refusals included), by protocol: what a sender waits."
    );
    describe_counter!(
        "roomcast_gateway_bad_frames_total",
        "Client frames refused, by kind (malformed, or over a limit)."
    );
    describe_counter!(
        "roomcast_gateway_refused_connections_total",
        "Connections refused before any room was touched, by reason."
    );
    describe_gauge!("roomcast_gateway_send_queue_bytes", "Bytes queued towards clients, all connections.");
    describe_counter!(
        "roomcast_gateway_slow_consumer_disconnects_total",
        "Clients closed for not reading fast enough."
    );
    describe_counter!("roomcast_gateway_deliveries_total", "Messages handed to members.");
    describe_histogram!(
        "roomcast_gateway_delivery_latency_seconds",
        Unit::Seconds,
        "From a send's acceptance to its delivery, per message and gateway."
    );
    describe_histogram!(
        "roomcast_gateway_upstream_request_duration_seconds",
        Unit::Seconds,
        "gRPC calls to fanout and persister, by upstream and method."
    );
    describe_counter!("roomcast_gateway_upstream_errors_total", "Failed gRPC calls, by upstream and method.");
    describe_gauge!(
        "roomcast_gateway_ready",
        "1 while ready: started, not draining, below its connection cap (what /readyz answers)."
    );
    describe_gauge!("roomcast_gateway_broker_up", "1 while the link to the broker (the fanout) is up.");
    describe_gauge!("roomcast_gateway_store_up", "1 while the store (the persister) answers a probe.");
    describe_gauge!("roomcast_gateway_rooms", "Rooms with members on this gateway.");
    describe_counter!("roomcast_gateway_gap_fills_total", "Holes in a room's order read from the store, by result.");
    describe_counter!(
        "roomcast_gateway_joins_total",
        "Joins answered, by source: the room's in-memory tail, or a read of the store."
    );
    describe_counter!(
        "roomcast_gateway_room_loads_total",
        "Rooms' first reads of the store (one per room starting on this gateway, shared by its joins)."
    );
    describe_counter!(
        "roomcast_gateway_store_reads_total",
        "Store queries made by rooms, by reason (room_load, join, gap_fill, catch_up)."
    );
    describe_gauge!("roomcast_gateway_presence_entries", "Users present through this gateway, summed over rooms.");
    describe_counter!(
        "roomcast_gateway_presence_diffs_total",
        "Presence batches sent to a room's members (at most one per room per 250 ms)."
    );
    describe_counter!(
        "roomcast_gateway_typing_total",
        "Typing signals, by result (relayed, or dropped by the 1/s limit)."
    );
    describe_gauge!("roomcast_gateway_directory_rooms", "Rooms in the room directory, as of the last heartbeat.");
    describe_counter!(
        "roomcast_gateway_presence_refresh_failures_total",
        "Presence writes and reads to the broker that failed, by op (heartbeat, announce, read)."
    );
    describe_histogram!(
        "roomcast_gateway_webtransport_rtt_seconds",
        Unit::Seconds,
        "QUIC's smoothed round-trip time of WebTransport sessions, sampled every ping interval and at the end."
    );
    describe_counter!(
        "roomcast_gateway_webtransport_lost_packets_total",
        "Packets QUIC declared lost on WebTransport sessions (sent by the gateway)."
    );
    describe_counter!(
        "roomcast_gateway_webtransport_handshake_failures_total",
        "WebTransport sessions that failed before admission (QUIC or HTTP/3 handshake, no stream, wrong path)."
    );
    describe_counter!(
        "roomcast_gateway_rate_limited_total",
        "Frames and sends refused with rate_limited, by scope: connection (its frames), user (across connections and gateways), room."
    );
    describe_counter!(
        "roomcast_gateway_budget_fail_open_total",
        "Sends let through unchecked because the broker could not answer for the user and room budgets, by reason."
    );
    describe_counter!(
        "roomcast_gateway_token_refreshes_total",
        "Token refreshes on open connections, by result (ok, refused)."
    );
    describe_counter!(
        "roomcast_gateway_api_requests_total",
        "Server API requests, by method, route (the matched pattern) and status; 401s are refused keys."
    );
    describe_histogram!(
        "roomcast_gateway_api_request_duration_seconds",
        Unit::Seconds,
        "Server API requests' time to answer, by method and route."
    );
    describe_counter!(
        "roomcast_gateway_jwks_refreshes_total",
        "Loads of the JWK Set that client tokens are checked with (--auth-jwks-url or --auth-jwks-file), by result \
         (ok, failed) and trigger (start, interval, unknown_kid, file). A failed load keeps the keys held."
    );
    describe_gauge!(
        "roomcast_gateway_jwks_keys",
        "Keys held from the JWK Set (0 without --auth-jwks-url or --auth-jwks-file, or before its first good load)."
    );
    describe_gauge!(
        "roomcast_gateway_jwks_last_success_timestamp_seconds",
        Unit::Seconds,
        "When a load of the JWK Set last succeeded (Unix time); absent before the first."
    );
    LazyLock::force(&METRICS);
    gauge!("roomcast_gateway_jwks_keys").set(0.0);
    for scope in ["connection", "user", "room"] {
        counter!("roomcast_gateway_rate_limited_total", "scope" => scope).absolute(0);
    }
    for reason in ["broker_error", "unsupported"] {
        counter!("roomcast_gateway_budget_fail_open_total", "reason" => reason).absolute(0);
    }
    for result in ["ok", "refused"] {
        counter!("roomcast_gateway_token_refreshes_total", "result" => result).absolute(0);
    }
    for result in ["ok", "failed"] {
        for trigger in ["start", "interval", "unknown_kid", "file"] {
            counter!("roomcast_gateway_jwks_refreshes_total", "result" => result, "trigger" => trigger).absolute(0);
        }
    }
    counter!("roomcast_gateway_webtransport_lost_packets_total").absolute(0);
    counter!("roomcast_gateway_webtransport_handshake_failures_total").absolute(0);
    for op in ["heartbeat", "announce", "read"] {
        counter!("roomcast_gateway_presence_refresh_failures_total", "op" => op).absolute(0);
    }
    gauge!("roomcast_gateway_directory_rooms").set(0.0);
    for result in ["acked", "error"] {
        counter!("roomcast_gateway_messages_sent_total", "result" => result).absolute(0);
    }
    for reason in ["room_load", "join", "gap_fill", "catch_up"] {
        counter!("roomcast_gateway_store_reads_total", "reason" => reason).absolute(0);
    }
    for result in ["filled", "sealed", "error"] {
        counter!("roomcast_gateway_gap_fills_total", "result" => result).absolute(0);
    }
    let methods = [
        "next_seq",
        "seed",
        "publish",
        "subscribe",
        "signal",
        "presence",
        "heartbeat",
        "touch",
        "rooms",
        "ban",
        "bans",
        "spend",
    ];
    for method in methods {
        counter!("roomcast_gateway_upstream_errors_total", "upstream" => "fanout", "method" => method).absolute(0);
    }
    for method in ["write", "history", "resolve", "max_seq", "delete"] {
        counter!("roomcast_gateway_upstream_errors_total", "upstream" => "persister", "method" => method).absolute(0);
    }
    for kind in ClientError::KINDS {
        counter!("roomcast_gateway_bad_frames_total", "kind" => *kind).absolute(0);
    }
    for reason in ConnectError::CODES {
        counter!("roomcast_gateway_refused_connections_total", "reason" => *reason).absolute(0);
    }
    for protocol in PROTOCOLS {
        let reasons =
            ["client_close", "error", "slow_consumer", "drain", "protocol_error", "silent", "token_expired", "kicked"];
        for reason in reasons {
            counter!("roomcast_gateway_disconnects_total", "protocol" => protocol, "reason" => reason).absolute(0);
        }
        gauge!("roomcast_gateway_connections", "protocol" => protocol).set(0.0);
    }
}
