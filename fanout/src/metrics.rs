//! The fanout's metrics: described once at start, with the error series at zero so
//! dashboards and alerts see them before the first failure.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

pub fn describe() {
    describe_counter!("roomcast_fanout_publishes_total", "Messages published to Redis, by result.");
    describe_histogram!(
        "roomcast_fanout_publish_duration_seconds",
        Unit::Seconds,
        "Time of one Redis PUBLISH (SPUBLISH on a cluster)."
    );
    describe_gauge!("roomcast_fanout_room_subscriptions", "Rooms this fanout is subscribed to.");
    describe_counter!("roomcast_fanout_deliveries_total", "Messages streamed to gateways.");
    describe_counter!(
        "roomcast_fanout_redis_reconnects_total",
        "Times the Redis subscriptions came back after a lost connection (a cluster: a node's)."
    );
    describe_counter!("roomcast_fanout_redis_errors_total", "Failed Redis operations, by operation.");
    describe_gauge!("roomcast_fanout_redis_up", "1 while Redis answers (a cluster: every primary).");
    describe_gauge!("roomcast_fanout_ready", "1 while ready: serving and not shutting down (what /readyz answers).");
    describe_gauge!("roomcast_fanout_gateways", "Gateways with an open subscription stream.");
    describe_counter!("roomcast_fanout_links_closed_total", "Gateway streams closed by the fanout, by reason.");
    describe_counter!("roomcast_fanout_signals_total", "Room signals carried (presence changes, typing), by kind.");
    counter!("roomcast_fanout_publishes_total", "result" => "ok").absolute(0);
    counter!("roomcast_fanout_publishes_total", "result" => "error").absolute(0);
    counter!("roomcast_fanout_redis_reconnects_total").absolute(0);
    for kind in ["presence", "typing"] {
        counter!("roomcast_fanout_signals_total", "kind" => kind).absolute(0);
    }
    for op in ["next_seq", "seed", "publish", "subscribe", "signal", "presence", "heartbeat", "touch", "rooms"] {
        counter!("roomcast_fanout_redis_errors_total", "op" => op).absolute(0);
    }
    counter!("roomcast_fanout_links_closed_total", "reason" => "lagging").absolute(0);
    gauge!("roomcast_fanout_redis_up").set(0.0);
    gauge!("roomcast_fanout_gateways").set(0.0);
    gauge!("roomcast_fanout_room_subscriptions").set(0.0);
}
