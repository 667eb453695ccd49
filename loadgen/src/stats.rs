//! Accounting: what was sent, what each receiver got, and how long it took. Loss and
//! duplicates are counted from what arrived, never assumed.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Every load message's text starts with this tag, then `sender:n:sent_micros:`.
pub const TAG: &str = "lg";

pub fn encode(sender: u32, n: u32, sent_micros: u64, size: usize) -> String {
    let mut text = format!("{TAG}:{sender}:{n}:{sent_micros}:");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// (sender, n, sent_micros) of a load message, `None` for anything else.
pub fn decode(text: &str) -> Option<(u32, u32, u64)> {
    let mut parts = text.splitn(5, ':');
    if parts.next()? != TAG {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What one receiver saw, per sender: messages from one sender arrive in its send order.
/// Senders are numbered 0..N; the table is allocated at the first delivery, so idle
/// clients cost nothing.
#[derive(Default)]
pub struct Receiver {
    /// Per sender, 1 + the highest number received (0: nothing yet).
    next: Vec<u32>,
    pub unique: u64,
    /// Unique deliveries that arrived after the drain window: slow, but not lost.
    pub late: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl Receiver {
    /// Records message `n` of `sender` (of `senders`); returns false for a duplicate or
    /// late copy. `late` says it arrived after the drain window.
    pub fn record(&mut self, sender: u32, n: u32, senders: usize, late: bool) -> bool {
        let sender = sender as usize;
        if sender >= self.next.len() {
            self.next.resize(senders.max(sender + 1), 0);
        }
        let seen = self.next[sender];
        match seen.checked_sub(1) {
            Some(last) if n == last => {
                self.duplicates += 1;
                false
            }
            Some(last) if n < last => {
                // Either a duplicate or out of order: both break the contract.
                self.reordered += 1;
                false
            }
            _ => {
                self.next[sender] = n + 1;
                self.unique += 1;
                self.late += u64::from(late);
                true
            }
        }
    }
}

/// Latency in microseconds, up to 60 s, 2 significant digits (within 1%). One per client:
/// at 3 digits each took ~360 KiB, and recording into a thousand of them missed the cache.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant histogram bounds are valid")
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        samples: h.len(),
    }
}

/// Expected deliveries minus unique ones received, never below zero, with the excess
/// reported separately (more received than expected means extra copies).
pub fn loss(expected: u64, unique: u64) -> (u64, u64) {
    (expected.saturating_sub(unique), unique.saturating_sub(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_pad_to_size() {
        let text = encode(7, 42, 123456, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(decode(&text), Some((7, 42, 123456)));
        assert_eq!(decode("hello"), None);
        assert_eq!(decode("lg:1:x:3:"), None);
    }

    #[test]
    fn receivers_count_duplicates_reordering_and_late_deliveries() {
        let mut r = Receiver::default();
        assert!(r.record(1, 0, 3, false));
        assert!(r.record(1, 1, 3, false));
        assert!(!r.record(1, 1, 3, false), "same message twice");
        assert!(r.record(2, 0, 3, false), "another sender has its own order");
        assert!(r.record(1, 3, 3, false), "a gap is not a duplicate (loss is counted at the end)");
        assert!(!r.record(1, 2, 3, false), "arriving after a later one");
        assert!(r.record(0, 0, 3, true), "late, but unique");
        assert!(r.record(7, 0, 3, false), "a sender beyond the table grows it");
        assert_eq!((r.unique, r.late, r.duplicates, r.reordered), (6, 1, 1, 1));
    }

    #[test]
    fn loss_is_expected_minus_unique() {
        assert_eq!(loss(100, 97), (3, 0));
        assert_eq!(loss(100, 100), (0, 0));
        assert_eq!(loss(100, 101), (0, 1));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).expect("in range");
        }
        let p = percentiles(&h);
        // Two significant digits: within 1%.
        assert!((p.p50_ms - 500.0).abs() <= 5.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() <= 9.9, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() <= 10.0, "{p:?}");
        assert_eq!(p.samples, 1000);
    }
}
