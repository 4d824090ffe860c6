//! Circuit breakers, one per effect target (an output topic, an HTTP host).
//! After `failures` consecutive transient failures a breaker opens: effects
//! on its target wait instead of failing, and the partitions whose messages
//! wait are paused (`Waiting`), while nothing is dead-lettered. After
//! `open-ms` one probe goes through (half-open): success closes the breaker,
//! failure opens it again.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::BreakerPolicy;
use crate::telemetry::exposition::Exposition;

/// What an effect acts on; each has its own breaker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Topic(String),
    Host(String),
    /// The event store of deciders.
    Store,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Topic(topic) => write!(f, "topic {topic}"),
            Target::Host(host) => write!(f, "host {host}"),
            Target::Store => write!(f, "the event store"),
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; if its verdict has not come by `until` (its
    /// message was dropped: the partition revoked), another probe goes.
    HalfOpen {
        until: Instant,
    },
}

/// One target's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    target: Target,
    policy: BreakerPolicy,
    state: Mutex<BreakerState>,
    changed: Notify,
    /// Transient failures retried on this target.
    retries: AtomicU64,
}

/// Leave to act on a target; report how it went with `Breaker::record`.
#[derive(Debug)]
#[must_use = "report the outcome to the breaker"]
pub(crate) struct Admission {
    /// Time spent waiting for the breaker.
    pub(crate) waited: Duration,
    /// Whether this attempt is the probe of a breaker that was open.
    pub(crate) probe: bool,
}

#[cfg(test)]
impl Admission {
    pub(crate) fn closed() -> Self {
        Admission {
            waited: Duration::ZERO,
            probe: false,
        }
    }

    pub(crate) fn probe() -> Self {
        Admission {
            waited: Duration::ZERO,
            probe: true,
        }
    }
}

/// How many of a partition's messages wait for an open breaker. While any
/// does, the partition stops fetching: its target is down, and the messages
/// after would only wait too. (The consumer keeps polling, so the host stays
/// in its group.)
#[derive(Debug)]
pub(crate) struct Waiting {
    count: watch::Sender<usize>,
}

/// One message waiting for an open breaker, for as long as it lives.
struct Waits<'a>(&'a Waiting);

impl Drop for Waits<'_> {
    fn drop(&mut self) {
        self.0.count.send_modify(|count| *count -= 1);
    }
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting {
            count: watch::Sender::new(0),
        }
    }
}

impl Waiting {
    /// Whether any message waits.
    pub(crate) fn any(&self) -> bool {
        *self.count.borrow() > 0
    }

    /// Resolves once no message waits.
    pub(crate) async fn until_none(&self) {
        let _ = self.count.subscribe().wait_for(|count| *count == 0).await;
    }

    /// Resolves once a message waits.
    pub(crate) async fn until_some(&self) {
        let _ = self.count.subscribe().wait_for(|count| *count > 0).await;
    }

    fn starts(&self) -> Waits<'_> {
        self.count.send_modify(|count| *count += 1);
        Waits(self)
    }
}

/// How an attempt on a target went, as far as its breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It worked, or failed for a reason that is not the target's (a 4xx).
    Healthy,
    /// The target failed transiently.
    Failed,
}

impl Breaker {
    fn new(target: Target, policy: BreakerPolicy) -> Self {
        Breaker {
            target,
            policy,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            changed: Notify::new(),
            retries: AtomicU64::new(0),
        }
    }

    /// Counts a retry of an effect on this target.
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, AtomicOrdering::Relaxed);
    }

    pub(crate) fn state(&self) -> BreakerState {
        *self.state.lock().expect("breaker lock")
    }

    /// Waits until the target may be tried: at once when closed; after the
    /// open period, as the single probe, when open. Counted in `waiting`
    /// while it waits.
    pub(crate) async fn admit(&self, waiting: &Waiting) -> Admission {
        let started = Instant::now();
        let mut waits = None;
        loop {
            let changed = self.changed.notified();
            let wait = {
                let mut state = self.state.lock().expect("breaker lock");
                match *state {
                    BreakerState::Closed { .. } => None,
                    BreakerState::Open { until } | BreakerState::HalfOpen { until }
                        if Instant::now() >= until =>
                    {
                        *state = BreakerState::HalfOpen {
                            until: Instant::now() + self.policy.open,
                        };
                        tracing::info!(target_ = %self.target, "circuit breaker half-open: probing");
                        return Admission {
                            waited: started.elapsed(),
                            probe: true,
                        };
                    }
                    // Open: until a probe may go. Half-open: for the
                    // probe's verdict, or until another probe may go.
                    BreakerState::Open { until } | BreakerState::HalfOpen { until } => {
                        Some(until - Instant::now())
                    }
                }
            };
            if wait.is_some() && waits.is_none() {
                waits = Some(waiting.starts());
            }
            match wait {
                None => {
                    return Admission {
                        waited: started.elapsed(),
                        probe: false,
                    };
                }
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, changed).await;
                }
            }
        }
    }

    /// Reports how an admitted attempt went.
    pub(crate) fn record(&self, admission: Admission, outcome: Outcome) {
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (*state, outcome) {
            (BreakerState::HalfOpen { .. }, Outcome::Healthy) if admission.probe => {
                tracing::info!(target_ = %self.target, "circuit breaker closed: probe succeeded");
                BreakerState::Closed { failures: 0 }
            }
            (BreakerState::HalfOpen { .. }, Outcome::Failed) if admission.probe => {
                tracing::warn!(target_ = %self.target, "circuit breaker open again: probe failed");
                self.opened()
            }
            (BreakerState::Closed { .. }, Outcome::Healthy) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, Outcome::Failed) => {
                if failures + 1 >= self.policy.failures {
                    tracing::warn!(
                        target_ = %self.target,
                        failures = failures + 1,
                        open_ms = self.policy.open.as_millis() as u64,
                        "circuit breaker open"
                    );
                    self.opened()
                } else {
                    BreakerState::Closed {
                        failures: failures + 1,
                    }
                }
            }
            // Late reports from attempts admitted before the state changed.
            (state, _) => state,
        };
        *state = next;
        drop(state);
        self.changed.notify_waiters();
    }

    fn opened(&self) -> BreakerState {
        BreakerState::Open {
            until: Instant::now() + self.policy.open,
        }
    }
}

/// Every target's breaker, created on first use. A new breaker takes the
/// policy of the route that first uses its target.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    topics: Mutex<HashMap<String, Arc<Breaker>>>,
    hosts: Mutex<HashMap<String, Arc<Breaker>>>,
    store: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    /// The breaker of an output topic (looked up without allocating: it is
    /// on every publish's path).
    pub(crate) fn topic(&self, topic: &str, policy: &BreakerPolicy) -> Arc<Breaker> {
        Self::get(
            &self.topics,
            topic,
            || Target::Topic(topic.to_owned()),
            policy,
        )
    }

    /// The breaker of an HTTP host (`host:port`).
    pub(crate) fn host(&self, host: &str, policy: &BreakerPolicy) -> Arc<Breaker> {
        Self::get(&self.hosts, host, || Target::Host(host.to_owned()), policy)
    }

    /// Each target's breaker state (0 closed, 1 open, 2 half-open) and
    /// retries, for `/metrics`.
    pub(crate) fn encode(&self, metrics: &mut Exposition) -> std::fmt::Result {
        let all = self.all();
        let target = |breaker: &Breaker| vec![("target", breaker.target.to_string())];
        metrics.gauge(
            "sluice_breaker_state",
            "Circuit breaker per effect target: 0 closed, 1 open, 2 half-open.",
            all.iter().map(|breaker| {
                let state = match breaker.state() {
                    BreakerState::Closed { .. } => 0,
                    BreakerState::Open { .. } => 1,
                    BreakerState::HalfOpen { .. } => 2,
                };
                (target(breaker), state)
            }),
        )?;
        metrics.counter(
            "sluice_retries_total",
            "Effect attempts retried after a transient failure, per target.",
            all.iter().map(|breaker| {
                (
                    target(breaker),
                    breaker.retries.load(AtomicOrdering::Relaxed),
                )
            }),
        )
    }

    /// Every target's breaker (each map's lock taken in turn, briefly).
    fn all(&self) -> Vec<Arc<Breaker>> {
        [&self.topics, &self.hosts, &self.store]
            .into_iter()
            .flat_map(|map| {
                map.lock()
                    .expect("breakers lock")
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Effect attempts retried so far, every target's.
    pub(crate) fn retries(&self) -> u64 {
        self.all()
            .iter()
            .map(|b| b.retries.load(AtomicOrdering::Relaxed))
            .sum()
    }

    /// The targets whose breaker is open or half-open, by name.
    pub(crate) fn not_closed(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|b| !matches!(b.state(), BreakerState::Closed { .. }))
            .map(|b| b.target.to_string())
            .collect()
    }

    /// The breaker of the event store.
    pub(crate) fn store(&self, policy: &BreakerPolicy) -> Arc<Breaker> {
        Self::get(&self.store, "", || Target::Store, policy)
    }

    fn get(
        map: &Mutex<HashMap<String, Arc<Breaker>>>,
        name: &str,
        target: impl FnOnce() -> Target,
        policy: &BreakerPolicy,
    ) -> Arc<Breaker> {
        let mut breakers = map.lock().expect("breakers lock");
        if let Some(breaker) = breakers.get(name) {
            return breaker.clone();
        }
        let breaker = Arc::new(Breaker::new(target(), policy.clone()));
        breakers.insert(name.to_owned(), breaker.clone());
        breaker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> Breaker {
        Breaker::new(
            Target::Host("example:80".into()),
            BreakerPolicy {
                failures,
                open: Duration::from_millis(open_ms),
            },
        )
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_a_success_resets() {
        let b = breaker(3, 60_000);
        for _ in 0..2 {
            let a = b.admit(&Waiting::default()).await;
            b.record(a, Outcome::Failed);
        }
        let a = b.admit(&Waiting::default()).await;
        b.record(a, Outcome::Healthy);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        for _ in 0..3 {
            let a = b.admit(&Waiting::default()).await;
            b.record(a, Outcome::Failed);
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[tokio::test]
    async fn a_probe_that_never_reports_back_is_replaced_after_the_open_period() {
        let b = breaker(1, 20);
        let a = b.admit(&Waiting::default()).await;
        b.record(a, Outcome::Failed);
        let lost = b.admit(&Waiting::default()).await;
        assert!(lost.probe);
        // Its message went away (the partition was revoked) unreported.
        drop(lost);
        let next = tokio::time::timeout(Duration::from_secs(5), b.admit(&Waiting::default()))
            .await
            .expect("another probe goes after the open period");
        assert!(next.probe && next.waited >= Duration::from_millis(15));
        b.record(next, Outcome::Healthy);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test]
    async fn an_open_breaker_holds_callers_until_a_probe_closes_it() {
        let b = Arc::new(breaker(1, 30));
        let a = b.admit(&Waiting::default()).await;
        b.record(a, Outcome::Failed);
        assert!(matches!(b.state(), BreakerState::Open { .. }));

        // The first caller after the open period is the probe.
        let probe = b.admit(&Waiting::default()).await;
        assert!(probe.probe && probe.waited >= Duration::from_millis(20));
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        // Another caller waits for the probe's verdict, and is counted as
        // waiting (its partition pauses meanwhile).
        let waiting = Arc::new(Waiting::default());
        let waiter = {
            let (b, waiting) = (b.clone(), waiting.clone());
            tokio::spawn(async move { b.admit(&waiting).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(waiting.any());
        b.record(probe, Outcome::Healthy);
        let admitted = waiter.await.unwrap();
        assert!(!admitted.probe);
        assert!(!waiting.any(), "no longer waiting once admitted");
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test]
    async fn a_failed_probe_opens_it_again() {
        let b = breaker(1, 10);
        let a = b.admit(&Waiting::default()).await;
        b.record(a, Outcome::Failed);
        let probe = b.admit(&Waiting::default()).await;
        b.record(probe, Outcome::Failed);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }
}
