//! Retry policy for the sender: exponential backoff with full jitter, and a per-chunk budget that
//! starts afresh after every chunk the server acknowledges.

use std::time::Duration;

use rand::Rng as _;

/// How long to wait between attempts, and how many attempts one chunk may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts allowed per chunk (`--retries`); the next failure ends the run (exit 75).
    pub retries: u32,
    /// The first backoff ceiling; each further failure doubles it.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 10,
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The ceiling for the `attempt`-th retry (1-based): `min(max, base × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A delay drawn uniformly from `0..=ceiling(attempt)` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// The failures counted against the chunk in flight.
#[derive(Debug, Default)]
pub struct Budget {
    used: u32,
}

impl Budget {
    /// Counts one failure; `Some(delay)` to wait before trying again, `None` once the budget is
    /// spent.
    pub fn fail(&mut self, policy: &RetryPolicy) -> Option<Duration> {
        self.used += 1;
        (self.used <= policy.retries).then(|| policy.delay(self.used))
    }

    /// Failures counted so far for this chunk.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// The server acknowledged a chunk: the next chunk starts with the whole budget.
    pub fn reset(&mut self) {
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max() {
        let p = RetryPolicy {
            retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(4), Duration::from_millis(500));
        assert_eq!(p.ceiling(60), Duration::from_millis(500));
        for attempt in 1..6 {
            assert!(p.delay(attempt) <= p.ceiling(attempt));
        }
    }

    #[test]
    fn budget_is_per_chunk() {
        let p = RetryPolicy {
            retries: 2,
            base: Duration::from_millis(1),
            max: Duration::from_millis(1),
        };
        let mut b = Budget::default();
        assert!(b.fail(&p).is_some());
        assert!(b.fail(&p).is_some());
        assert!(b.fail(&p).is_none(), "third failure is past a budget of 2");
        b.reset();
        assert!(b.fail(&p).is_some());
        assert_eq!(b.used(), 1);
    }
}
