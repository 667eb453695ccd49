//! The persister's metrics: described once at start, with the error series at zero so
//! dashboards and alerts see them before the first failure.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

pub fn describe() {
    describe_gauge!("roomcast_persister_queue_depth", "Writes waiting for a batch.");
    describe_gauge!("roomcast_persister_ready", "1 while ready: serving and not shutting down (what /readyz answers).");
    describe_gauge!("roomcast_persister_store_up", "1 while MongoDB answers a probe.");
    describe_counter!("roomcast_persister_queue_rejections_total", "Writes refused because the queue was full.");
    describe_histogram!("roomcast_persister_batch_size", "Documents per insert_many.");
    describe_histogram!(
        "roomcast_persister_batch_duration_seconds",
        Unit::Seconds,
        "Time to commit one batch, retries included."
    );
    describe_counter!(
        "roomcast_persister_documents_written_total",
        "Messages stored (first writes and harmless repeats)."
    );
    describe_counter!("roomcast_persister_duplicates_total", "Resent client messages absorbed (stored once).");
    describe_counter!("roomcast_persister_write_errors_total", "Writes that failed, by kind.");
    describe_counter!("roomcast_persister_write_retries_total", "Batch writes retried after an error.");
    describe_histogram!("roomcast_persister_query_duration_seconds", Unit::Seconds, "Time of a read, by query.");
    gauge!("roomcast_persister_queue_depth").set(0.0);
    counter!("roomcast_persister_queue_rejections_total").absolute(0);
    counter!("roomcast_persister_documents_written_total").absolute(0);
    counter!("roomcast_persister_duplicates_total").absolute(0);
    counter!("roomcast_persister_write_retries_total").absolute(0);
    for kind in ["conflict", "unavailable"] {
        counter!("roomcast_persister_write_errors_total", "kind" => kind).absolute(0);
    }
}
