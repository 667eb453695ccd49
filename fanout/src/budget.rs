//! Shared send budgets (per user, per room) as GCRA, the generic cell rate algorithm: a
//! budget is one number per key, the theoretical arrival time (TAT) of the next send. A
//! send at `now` may go when `TAT - burst × interval <= now`, and moves the TAT one
//! interval on; a TAT beyond `now + tolerance` (the clock stepped back) counts as that,
//! so a clock step cannot freeze a budget. The embedded broker runs [`take`]; Redis runs [`TAKE_SCRIPT`], the same
//! arithmetic on Redis's clock, so every gateway spends from one budget.

use roomcast_proto::Budget;

/// One send from the budget at KEYS[1]; ARGV[1] the interval and ARGV[2] the tolerance
/// (burst × interval), in microseconds. Answers 0 when the send may go, else the
/// microseconds until it may. The key expires once the budget is full again.
pub const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat > now + tolerance then tat = now + tolerance end
local allowed_at = tat + interval - tolerance
if allowed_at > now then return allowed_at - now end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1)
return 0";

/// A budget's GCRA parameters in microseconds: (interval, tolerance); None for no budget.
pub fn gcra(budget: Option<&Budget>) -> Option<(u64, u64)> {
    let budget = budget.filter(|b| b.per_second > 0.0 && b.per_second.is_finite())?;
    let interval = (1_000_000.0 / budget.per_second).ceil().max(1.0) as u64;
    Some((interval, interval.saturating_mul(u64::from(budget.burst.max(1)))))
}

/// [`TAKE_SCRIPT`] in memory: `tat` is the key's state (0 for none), `now` in
/// microseconds. Answers Ok(new TAT) when the send may go, Err(µs to wait) when not.
pub fn take(tat: u64, now: u64, (interval, tolerance): (u64, u64)) -> Result<u64, u64> {
    let tat = tat.clamp(now, now.saturating_add(tolerance));
    let allowed_at = tat.saturating_add(interval).saturating_sub(tolerance);
    if allowed_at > now {
        return Err(allowed_at - now);
    }
    Ok(tat.saturating_add(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_sends_follow_the_rate() {
        let budget = gcra(Some(&Budget { per_second: 10.0, burst: 3 })).expect("a budget");
        assert_eq!(budget, (100_000, 300_000));
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..3 {
            tat = take(tat, now, budget).expect("within the burst");
        }
        assert_eq!(take(tat, now, budget), Err(100_000), "the fourth waits one interval");
        assert_eq!(take(tat, now + 99_999, budget), Err(1));
        tat = take(tat, now + 100_000, budget).expect("one interval later");
        assert!(take(tat, now + 100_000, budget).is_err());
        assert!(take(tat, now + 10_000_000, budget).is_ok(), "an idle budget fills up again");
        assert_eq!(take(tat, now - 60_000_000, budget), Err(100_000), "a clock a minute back waits one interval");
    }

    #[test]
    fn a_rate_of_zero_is_no_budget() {
        assert_eq!(gcra(None), None);
        assert_eq!(gcra(Some(&Budget { per_second: 0.0, burst: 10 })), None);
        assert_eq!(gcra(Some(&Budget { per_second: f64::NAN, burst: 10 })), None);
        assert_eq!(gcra(Some(&Budget { per_second: 2.0, burst: 0 })), Some((500_000, 500_000)), "burst 0 is 1");
    }
}
