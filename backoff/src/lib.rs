//! roomcast's one way to wait between attempts: exponential delays from `min` to `max`,
//! jittered so that many processes retrying at once do not do so in step, and without a
//! limit on attempts (the caller decides when to give up). Built on `backon`.

use std::time::Duration;

pub use backon::{Backoff, BackoffBuilder, ExponentialBuilder, Retryable};

/// Delays from `min`, doubling up to `max`, each with random jitter.
pub fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times()
}

/// For reconnecting to a peer that went away: 100 ms doubling to 2 s.
pub fn reconnect() -> ExponentialBuilder {
    exponential(Duration::from_millis(100), Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_never_stop() {
        let delays: Vec<Duration> = reconnect().build().take(12).collect();
        assert_eq!(delays.len(), 12, "no limit on attempts");
        // With jitter each delay lies in [d, 2d) of its step, capped at 2 s (plus its jitter).
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200), "{delays:?}");
        assert!(delays[11] >= Duration::from_secs(2) && delays[11] < Duration::from_secs(4), "{delays:?}");
    }
}
