//! The send budgets a user and a room share across connections and gateways, kept by the
//! broker (GCRA, `fanout::budget`): ten tabs of one user get one user's budget, and one
//! busy room cannot take the whole store. The connection's own frame limit stays in
//! `Conn::received`.
//!
//! When the broker cannot answer, sends go unchecked for `--budget-fail-open-seconds`
//! (counted and logged): a broker hiccup must not stop the chat. Past that, sends are
//! refused (`unavailable`) until it answers again, so a long outage cannot lift the
//! budgets for good. A broker of an older release, which has no budgets, leaves them
//! unchecked (logged once) until it is upgraded.

use std::sync::Mutex;
use std::time::Duration;

use fanout::{Broker, BrokerError};
use roomcast_proto::{Budget, SpendReply, SpendRequest};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::limits::Limits;

/// How long a budget check may take before the broker counts as failing.
const SPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The log line of a failing broker is written at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Budgets {
    user: Option<Budget>,
    room: Option<Budget>,
    fail_open: Duration,
    failing: Mutex<Failing>,
}

#[derive(Default)]
struct Failing {
    /// Since when the broker has failed to answer, if it does now.
    since: Option<Instant>,
    logged: Option<Instant>,
    unsupported_logged: bool,
}

impl Budgets {
    pub fn new(limits: &Limits) -> Self {
        let budget = |per_second: f64, burst: u32| (per_second > 0.0).then_some(Budget { per_second, burst });
        Self {
            user: budget(limits.user_sends_per_second, limits.user_send_burst),
            room: budget(limits.room_sends_per_second, limits.room_send_burst),
            fail_open: limits.budget_fail_open,
            failing: Mutex::default(),
        }
    }

    /// Takes one send of `user` into `room` from their budgets, or says why not.
    pub async fn spend(&self, broker: &dyn Broker, user: &str, room: &str) -> Result<(), ClientError> {
        if self.user.is_none() && self.room.is_none() {
            return Ok(());
        }
        let request = SpendRequest {
            user: user.to_owned(),
            room: room.to_owned(),
            user_budget: self.user,
            room_budget: self.room,
        };
        // Its own short limit, inside the send's deadline: a slow answer is a failing broker.
        let answer =
            tokio::time::timeout(SPEND_TIMEOUT, broker.spend(&request)).await.unwrap_or(Err(BrokerError::Timeout));
        self.judge(room, answer)
    }

    /// What the broker's answer means for the send.
    fn judge(&self, room: &str, answer: Result<SpendReply, BrokerError>) -> Result<(), ClientError> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let reply = match answer {
            Ok(reply) => {
                if failing.since.take().is_some() {
                    tracing::info!("the broker answers for the send budgets again");
                }
                reply
            }
            Err(BrokerError::Unsupported(call)) => {
                if !std::mem::replace(&mut failing.unsupported_logged, true) {
                    tracing::warn!(%call, "the broker has no send budgets (an older release): user and room budgets are not checked until it is upgraded");
                }
                metrics::counter!("roomcast_gateway_budget_fail_open_total", "reason" => "unsupported").increment(1);
                return Ok(());
            }
            Err(err) => {
                let now = Instant::now();
                let since = *failing.since.get_or_insert(now);
                if now.duration_since(since) > self.fail_open {
                    let message = format!(
                        "send budgets cannot be checked: the broker has failed for {} s ({err}); resend later",
                        now.duration_since(since).as_secs()
                    );
                    return Err(ClientError::Unavailable(message));
                }
                if failing.logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
                    failing.logged = Some(now);
                    let left = self.fail_open.saturating_sub(now.duration_since(since));
                    tracing::warn!(%err, left_s = left.as_secs(), "the broker cannot answer for the send budgets: sends go unchecked for at most --budget-fail-open-seconds");
                }
                metrics::counter!("roomcast_gateway_budget_fail_open_total", "reason" => "broker_error").increment(1);
                return Ok(());
            }
        };
        let retry = reply.retry_after_ms;
        let message = match reply.over.as_str() {
            "" => return Ok(()),
            "user" => {
                let Budget { per_second, burst } = self.user.unwrap_or_default();
                format!("over your budget of {per_second} sends per second (burst {burst}) across all your connections: resend in {retry} ms")
            }
            _ => {
                let Budget { per_second, burst } = self.room.unwrap_or_default();
                format!("room {room} is over its budget of {per_second} sends per second (burst {burst}): resend in {retry} ms")
            }
        };
        let scope = if reply.over == "user" { "user" } else { "room" };
        metrics::counter!("roomcast_gateway_rate_limited_total", "scope" => scope).increment(1);
        Err(ClientError::RateLimited(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(fail_open: Duration) -> Budgets {
        Budgets::new(&Limits { budget_fail_open: fail_open, ..Limits::default() })
    }

    fn down() -> Result<SpendReply, BrokerError> {
        Err(BrokerError::Unavailable("Redis spend failed: connection refused".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_broker_lets_sends_through_for_the_window_then_refuses_until_it_answers() {
        let budgets = budgets(Duration::from_secs(30));
        assert_eq!(budgets.judge("r", down()), Ok(()), "fails open at first");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(budgets.judge("r", down()), Ok(()), "within the window");
        tokio::time::advance(Duration::from_secs(2)).await;
        let refused = budgets.judge("r", down()).expect_err("past the window");
        assert_eq!(refused.code(), "unavailable");
        assert!(refused.to_string().contains("31 s"), "{refused}");
        assert_eq!(budgets.judge("r", Ok(SpendReply::default())), Ok(()), "it answers again");
        assert_eq!(budgets.judge("r", down()), Ok(()), "a new failure opens a new window");
    }

    #[test]
    fn over_a_budget_names_the_scope_and_when_to_resend_and_an_old_broker_is_no_budget() {
        let budgets = budgets(Duration::ZERO);
        let over = |scope: &str| SpendReply { over: scope.into(), retry_after_ms: 120 };
        let user = budgets.judge("lobby", Ok(over("user"))).expect_err("over the user's");
        assert_eq!(user.code(), "rate_limited");
        assert!(user.to_string().contains("across all your connections") && user.to_string().contains("120 ms"));
        let room = budgets.judge("lobby", Ok(over("room"))).expect_err("over the room's");
        assert!(room.to_string().starts_with("room lobby is over its budget"), "{room}");
        assert_eq!(budgets.judge("lobby", Err(BrokerError::Unsupported("fanout spend".into()))), Ok(()));
    }
}
