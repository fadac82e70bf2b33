//! Retry policy for the sender: exponential backoff with full jitter, a per-chunk budget that
//! starts afresh whenever the server's position moves, and the size of the pieces a chunk is
//! sent in over a link that breaks more often than it carries a chunk.

use std::time::Duration;

use rand::Rng as _;

use super::session::SessionError;
use crate::progress::{Event, Progress};

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

/// The retry budget ran out: the last of `attempts` failures was `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("giving up after {attempts} failed attempts (last: {reason})")]
pub struct Exhausted {
    /// Failed attempts counted.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
}

/// How a retried request ended, short of success.
#[derive(Debug)]
pub enum Stopped {
    /// It kept failing in ways worth retrying, past the budget.
    Exhausted(Exhausted),
    /// It failed in a way retrying does not change (the caller decides what that means).
    Failed(SessionError),
}

/// The one retry loop of the client: every failure worth retrying is counted against a
/// [`Budget`], waited out with the policy's backoff, and reported (a [`Event::Retry`] to the
/// job's progress, else a warning in the log); progress starts the budget afresh.
pub struct Retrier<'a> {
    policy: RetryPolicy,
    budget: Budget,
    progress: Option<&'a dyn Progress>,
}

impl<'a> Retrier<'a> {
    /// A fresh budget under `policy`, reporting waits to `progress` (or the log).
    pub fn new(policy: RetryPolicy, progress: Option<&'a dyn Progress>) -> Self {
        Retrier {
            policy,
            budget: Budget::default(),
            progress,
        }
    }

    /// Failures counted since the last progress.
    pub fn used(&self) -> u32 {
        self.budget.used()
    }

    /// The request made progress: the budget starts afresh.
    pub fn progressed(&mut self) {
        self.budget.reset();
    }

    /// Counts one failure and waits its backoff; [`Exhausted`] once the budget is spent. With
    /// `at_once` the first failure in a row is retried without waiting (a connection that broke
    /// while it was carrying bytes).
    pub async fn wait_out(&mut self, reason: String, at_once: bool) -> Result<(), Exhausted> {
        let Some(delay) = self.budget.fail(&self.policy) else {
            return Err(Exhausted {
                attempts: self.budget.used(),
                reason,
            });
        };
        let delay = if at_once && self.budget.used() == 1 {
            Duration::ZERO
        } else {
            delay
        };
        let event = Event::Retry {
            attempt: self.budget.used(),
            retries: self.policy.retries,
            delay_ms: delay.as_millis() as u64,
            reason,
        };
        match (self.progress, &event) {
            (Some(p), _) => p.event(&event),
            (None, Event::Retry { attempt, reason, .. }) => tracing::warn!(
                "retry {attempt}/{} in {:.1}s: {reason}",
                self.policy.retries,
                delay.as_secs_f32()
            ),
            (None, _) => {}
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `attempt` until it succeeds, waiting out transient failures within the budget.
    pub async fn run<T>(&mut self, mut attempt: impl AsyncFnMut() -> Result<T, SessionError>) -> Result<T, Stopped> {
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => self.wait_out(e.reason(), false).await.map_err(Stopped::Exhausted)?,
                Err(e) => return Err(Stopped::Failed(e)),
            }
        }
    }
}

/// The smallest piece a chunk is cut into.
pub const MIN_PIECE: u64 = 64 << 10;

/// How big a piece of a chunk to send to a server that checks every request's checksum but
/// cannot hold what arrived of a cut-off one: a cut then costs the whole request, so after the
/// first cut the client sends pieces of a sixteenth of what the link carried between its last
/// two cuts (in whole [`MIN_PIECE`]s, at least one), each with its own checksum: a cut costs
/// half a piece on average, about 3 % of what the link carries. As the link carries more
/// without a cut, pieces grow with it, back to whole chunks.
#[derive(Clone, Debug)]
pub struct Pieces {
    chunk: u64,
    /// Body bytes carried since the last cut.
    carried: u64,
    /// What the link carried between its last two cuts (`None` before the first).
    between_cuts: Option<u64>,
}

impl Pieces {
    /// Whole chunks of `chunk` bytes until the first cut.
    pub fn new(chunk: u64) -> Self {
        Pieces {
            chunk,
            carried: 0,
            between_cuts: None,
        }
    }

    /// The largest piece to send next, or `None` for a whole chunk.
    pub fn size(&self) -> Option<u64> {
        let seen = self.between_cuts?.max(self.carried);
        let piece = (seen / 16 / MIN_PIECE).max(1) * MIN_PIECE;
        (piece < self.chunk).then_some(piece)
    }

    /// The link carried `bytes` of a request the server acknowledged.
    pub fn carried(&mut self, bytes: u64) {
        self.carried = self.carried.saturating_add(bytes);
    }

    /// The link broke after `sent` more bytes.
    pub fn cut(&mut self, sent: u64) {
        self.between_cuts = Some(self.carried.saturating_add(sent));
        self.carried = 0;
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
    fn pieces_shrink_after_a_cut_and_grow_back() {
        const MIB: u64 = 1 << 20;
        let mut p = Pieces::new(8 * MIB);
        assert_eq!(p.size(), None, "whole chunks until the link breaks");
        p.cut(2_000_000);
        assert_eq!(p.size(), Some(MIN_PIECE), "a sixteenth of 2 MB, in whole 64 KiB");
        p.cut(4 * MIB);
        assert_eq!(p.size(), Some(256 << 10));
        for _ in 0..15 {
            p.carried(256 << 10);
        }
        assert_eq!(p.size(), Some(256 << 10), "the same link: the same pieces");
        p.carried(8 * MIB);
        assert_eq!(p.size(), Some(11 * MIN_PIECE), "carrying more without a cut grows them");
        p.carried(128 * MIB);
        assert_eq!(p.size(), None, "back to whole chunks");
        p.cut(0);
        assert!(p.size().is_none(), "a long run between cuts keeps whole chunks");
        p.cut(1000);
        assert_eq!(p.size(), Some(MIN_PIECE), "never below the smallest piece");
        p.cut(10_000_000);
        assert_eq!(p.size(), Some(9 * MIN_PIECE));
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
