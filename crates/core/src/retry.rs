//! What to do after a delivery attempt: the retry policy.
//!
//! The schedule lists the wait before each attempt: the default `0s, 5s, 5m, 30m, 2h, 5h, 10h,
//! 10h` makes eight attempts over about 28 hours. Waits get ±`jitter_percent` so retries of many
//! deliveries spread out. Following the Standard Webhooks guidance, `410 Gone` disables the
//! endpoint, `429`, `502` and `504` slow the endpoint down (so does a `503` that says how long,
//! with `Retry-After`), and `Retry-After` is honoured up to a cap. An endpoint that has failed without a single success for `disable_after` is disabled.

use std::time::Duration;

use rand::{Rng, RngExt};

use crate::time::Timestamp;

/// The retry policy of a billhook instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    /// Each wait is moved by up to this percentage either way.
    pub jitter_percent: u32,
    /// `Retry-After` is honoured up to this long.
    pub retry_after_cap: Duration,
    /// An endpoint failing continuously for this long is disabled.
    pub disable_after: Duration,
    /// How long an endpoint pauses after `502`/`504` or a `429` without `Retry-After`.
    pub slow_down: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            jitter_percent: 10,
            retry_after_cap: minutes(60),
            disable_after: Duration::from_secs(5 * 86_400),
            slow_down: Duration::from_secs(5),
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The endpoint answered 2xx.
    Success,
    /// Any other status, or no status at all (timeout, refused connection, SSRF refusal).
    Failure {
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

/// What follows an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again at this time; pause the endpoint for `slow_down` first if given.
    Retry {
        at: Timestamp,
        slow_down: Option<Duration>,
    },
    /// Out of attempts; pause the endpoint for `slow_down` if given, as a retry would.
    Dead {
        slow_down: Option<Duration>,
    },
    /// Disable the endpoint and hold its deliveries (they can be recovered once it is fixed).
    DisableEndpoint {
        reason: String,
    },
}

impl RetryPolicy {
    /// The number of attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.schedule.len())
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// The wait before attempt number `attempt` (1-based), jittered.
    pub fn wait_before(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let base = self
            .schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or_default();
        jitter(base, self.jitter_percent, rng)
    }

    /// Decides what follows attempt number `attempt` (1-based) of a delivery, made at `now`, for an
    /// endpoint that has been failing since `failing_since` (`None` when its last attempt
    /// succeeded).
    pub fn decide(
        &self,
        attempt: u32,
        outcome: AttemptOutcome,
        now: Timestamp,
        failing_since: Option<Timestamp>,
        rng: &mut impl Rng,
    ) -> Decision {
        let (status, retry_after) = match outcome {
            AttemptOutcome::Success => return Decision::Delivered,
            AttemptOutcome::Failure {
                status,
                retry_after,
            } => (status, retry_after),
        };
        if status == Some(410) {
            return Decision::DisableEndpoint {
                reason: "the endpoint answered 410 Gone".to_owned(),
            };
        }
        if let Some(since) = failing_since
            && now.since(since) >= self.disable_after
        {
            return Decision::DisableEndpoint {
                reason: format!(
                    "the endpoint has failed every attempt since {since} ({} days)",
                    self.disable_after.as_secs() / 86_400
                ),
            };
        }
        let capped_retry_after = retry_after.map(|wait| wait.min(self.retry_after_cap));
        // A receiver that says how long it will be unavailable (RFC 9110: 503 with
        // `Retry-After`) is left alone that long, as one rate limiting is; a bare 503 may be
        // one request's trouble and pauses nothing. The pause is the endpoint's, so a delivery
        // on its last attempt asks for it too.
        let slow_down = match (status, capped_retry_after) {
            (Some(429 | 502 | 504), _) => Some(capped_retry_after.unwrap_or(self.slow_down)),
            (Some(503), Some(wait)) => Some(wait),
            _ => None,
        };
        if attempt >= self.max_attempts() {
            return Decision::Dead { slow_down };
        }
        let scheduled = self.wait_before(attempt + 1, rng);
        let wait = capped_retry_after.map_or(scheduled, |honoured| honoured.max(scheduled));
        Decision::Retry {
            at: now.add(wait),
            slow_down,
        }
    }
}

/// `base` moved by a random amount of at most `percent` percent either way.
fn jitter(base: Duration, percent: u32, rng: &mut impl Rng) -> Duration {
    let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let spread = millis / 100 * u64::from(percent) + millis % 100 * u64::from(percent) / 100;
    if spread == 0 {
        return base;
    }
    let offset = rng.random_range(0..=spread.saturating_mul(2));
    Duration::from_millis((millis - spread).saturating_add(offset))
}

/// Parses a `Retry-After` header: delay-seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(value, &format).ok()?;
    let millis = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Timestamp::from_unix_millis(millis).since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(1)
    }

    const NOW: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

    fn failure(status: u16) -> AttemptOutcome {
        AttemptOutcome::Failure {
            status: Some(status),
            retry_after: None,
        }
    }

    #[test]
    fn success_delivers_and_the_schedule_drives_retries() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.decide(1, AttemptOutcome::Success, NOW, None, &mut rng()),
            Decision::Delivered
        );
        match policy.decide(1, failure(503), NOW, Some(NOW), &mut rng()) {
            Decision::Retry { at, slow_down } => {
                let wait = at.since(NOW);
                assert!(wait >= Duration::from_millis(4500) && wait <= Duration::from_millis(5500));
                assert_eq!(slow_down, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            policy.decide(8, failure(503), NOW, Some(NOW), &mut rng()),
            Decision::Dead { slow_down: None }
        );
        // A receiver asking for time on a delivery's last attempt still gets it: the pause is
        // the endpoint's, and the rest of its backlog waits.
        let asked = AttemptOutcome::Failure {
            status: Some(429),
            retry_after: Some(Duration::from_secs(600)),
        };
        assert_eq!(
            policy.decide(8, asked, NOW, Some(NOW), &mut rng()),
            Decision::Dead {
                slow_down: Some(Duration::from_secs(600))
            }
        );
        assert_eq!(
            policy.decide(8, failure(429), NOW, Some(NOW), &mut rng()),
            Decision::Dead {
                slow_down: Some(policy.slow_down)
            }
        );
        assert_eq!(policy.max_attempts(), 8);
    }

    #[test]
    fn gone_disables_and_long_failure_disables() {
        let policy = RetryPolicy::default();
        assert!(matches!(
            policy.decide(1, failure(410), NOW, None, &mut rng()),
            Decision::DisableEndpoint { .. }
        ));
        let six_days_ago = NOW.sub(Duration::from_secs(6 * 86_400));
        assert!(matches!(
            policy.decide(2, failure(500), NOW, Some(six_days_ago), &mut rng()),
            Decision::DisableEndpoint { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_slows_the_endpoint() {
        let policy = RetryPolicy {
            schedule: vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(100),
            ],
            jitter_percent: 0,
            ..RetryPolicy::default()
        };
        let limited = AttemptOutcome::Failure {
            status: Some(429),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            policy.decide(1, limited, NOW, Some(NOW), &mut rng()),
            Decision::Retry {
                at: NOW.add(Duration::from_secs(2)),
                slow_down: Some(Duration::from_secs(2))
            }
        );
        let forever = AttemptOutcome::Failure {
            status: Some(503),
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert_eq!(
            policy.decide(1, forever, NOW, Some(NOW), &mut rng()),
            Decision::Retry {
                at: NOW.add(policy.retry_after_cap),
                slow_down: Some(policy.retry_after_cap)
            },
            "a 503 with Retry-After pauses the endpoint too, up to the cap"
        );
        assert!(matches!(
            policy.decide(1, failure(503), NOW, Some(NOW), &mut rng()),
            Decision::Retry {
                slow_down: None,
                ..
            }
        ));
        assert!(matches!(
            policy.decide(1, failure(502), NOW, Some(NOW), &mut rng()),
            Decision::Retry {
                slow_down: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let mut rng = rng();
        for _ in 0..1000 {
            let wait = jitter(Duration::from_secs(300), 10, &mut rng);
            assert!(wait >= Duration::from_secs(270) && wait <= Duration::from_secs(330));
        }
        assert_eq!(jitter(Duration::ZERO, 10, &mut rng), Duration::ZERO);
        // A wait past what milliseconds can count stays a wait, not an overflow.
        assert!(jitter(Duration::MAX, 100, &mut rng) > Duration::from_secs(1));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2", NOW), Some(Duration::from_secs(2)));
        let later = "Tue, 14 Nov 2023 22:14:20 +0000";
        assert_eq!(parse_retry_after(later, NOW), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("soon", NOW), None);
    }
}
