//! Retrying transient effect failures: exponential backoff with full jitter,
//! bounded by attempts and by time spent (time waiting on an open breaker is
//! not counted: the target is known to be down, the effect is not failing).

use std::time::{Duration, Instant};

use super::breaker::Admission;
use crate::config::RetryPolicy;

/// Exponential backoff with full jitter: each delay is uniform in
/// `[0, min(max, initial × 2^attempt)]`, so retrying clients spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt += 1;
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// One effect's retry budget.
#[derive(Debug)]
pub(crate) struct Retries {
    backoff: Backoff,
    max_attempts: u32,
    max_elapsed: Duration,
    /// Attempts made.
    made: u32,
    /// Attempts that count against the budget (not breaker probes).
    counted: u32,
    started: Instant,
    excused: Duration,
}

impl Retries {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Retries {
            backoff: Backoff::new(policy.initial, policy.max_interval),
            max_attempts: policy.max_attempts,
            max_elapsed: policy.max_elapsed,
            made: 0,
            counted: 0,
            started: Instant::now(),
            excused: Duration::ZERO,
        }
    }

    /// Counts an attempt the breaker let through. Time waiting on the
    /// breaker, and a probe of a breaker that was open, are not charged.
    pub(crate) fn admitted(&mut self, admission: &Admission) {
        self.made += 1;
        if !admission.probe {
            self.counted += 1;
        }
        self.excused += admission.waited;
    }

    /// Attempts made so far (probes included).
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// After a transient failure: the delay before trying again, or `None`
    /// when the budget is spent.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let spent = self.started.elapsed().saturating_sub(self.excused);
        if self.counted >= self.max_attempts || spent >= self.max_elapsed {
            return None;
        }
        let delay = self.backoff.next_delay();
        Some(delay.min(self.max_elapsed - spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..30).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        // Full jitter: not all the same once the cap is reached.
        assert!(delays[10..].windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn the_budget_ends_after_max_attempts() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(1),
            max_interval: Duration::from_millis(1),
            max_attempts: 3,
            max_elapsed: Duration::from_millis(60_000),
        };
        let mut retries = Retries::new(&policy);
        let mut delays = 0;
        loop {
            retries.admitted(&Admission::closed());
            if retries.next_delay().is_none() {
                break;
            }
            delays += 1;
        }
        assert_eq!((retries.made(), delays), (3, 2));
        // A probe is made but not charged.
        let mut retries = Retries::new(&policy);
        for _ in 0..2 {
            retries.admitted(&Admission::closed());
        }
        retries.admitted(&Admission::probe());
        assert!(retries.next_delay().is_some());
        assert_eq!(retries.made(), 3);
    }

    #[test]
    fn the_budget_ends_after_max_elapsed_unless_excused() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(1),
            max_interval: Duration::from_millis(1),
            max_attempts: 1000,
            max_elapsed: Duration::from_millis(50),
        };
        let mut retries = Retries::new(&policy);
        retries.started -= Duration::from_millis(80);
        retries.admitted(&Admission::closed());
        assert!(retries.next_delay().is_none(), "80 ms spent of 50");
        retries.excused += Duration::from_millis(60);
        assert!(
            retries.next_delay().is_some(),
            "60 of the 80 ms were excused"
        );
    }
}
