//! Timers: a handler's `schedule` and `cancel` outputs, kept in the store
//! (`store::timers`), and the task that fires them. A timer fires by
//! publishing its record, at least once, with a `sluice-id` of
//! `timer:<route>:<id>:<due>` so that consumers can drop a duplicate; then
//! its row is marked fired. Hosts sharing a store share the firing: each
//! claims a batch of due timers for a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), so that one host fires a timer at a time and a host that
//! dies while firing leaves its claims to the others once the lease ends.
//!
//! The task claims timers a little before they are due (`HORIZON`) and
//! publishes each at its due time, so that the store's round trips are not
//! added to the lateness. In between it sleeps until the soonest pending
//! timer is near, woken early when this host schedules one, and asks the
//! store at least every `timers.poll-ms` for what other hosts scheduled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::config::{BreakerPolicy, RetryPolicy, Route, TimerSettings};
use crate::contract::{Header, Publish};
use crate::effects::publish::Publisher;
use crate::effects::{EffectError, Failure, admit_and_drive};
use crate::policy::breaker::{Breakers, Waiting};
use crate::store::timers::{KEEP_FINISHED, PendingTimer, Timer};
use crate::store::{LazyStore, Store, StoreError, epoch_ms as now_ms};
use crate::telemetry::repeats::Repeats;
use crate::telemetry::{PendingTimers, Record, Telemetry};
use crate::wire;

/// Timers claimed at once.
const BATCH: usize = 1024;
/// Claimed batches being fired at once, at most.
const BATCHES_IN_FLIGHT: usize = 8;
/// How far ahead of due timers are claimed (see `Timers::horizon`).
const HORIZON: Duration = Duration::from_millis(250);
/// How often the firing task refreshes what the status page and
/// `/metrics` show of the pending timers.
const VIEW_EVERY: Duration = Duration::from_secs(1);
/// How many of the soonest timers they show.
const SOONEST: usize = 10;
/// How often finished rows older than `KEEP_FINISHED` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The pending timers as last counted: how many, and the soonest.
#[derive(Debug, Clone, Default)]
pub struct Upcoming {
    /// How many are pending.
    pub pending: u64,
    /// The soonest of them, soonest first.
    pub soonest: Vec<PendingTimer>,
}

impl Upcoming {
    /// As the admin server's `/timers` and `sluice timers --json` write it.
    pub fn to_json(&self) -> serde_json::Value {
        let timers: Vec<_> = self
            .soonest
            .iter()
            .map(|t| {
                serde_json::json!({ "route": t.route, "id": t.id, "due": t.due, "topic": t.topic })
            })
            .collect();
        serde_json::json!({ "pending": self.pending, "timers": timers })
    }
}

/// What a route's timers fire with: its retry and breaker rules, and where
/// a timer that cannot be published is dead-lettered.
struct RouteRules {
    retry: RetryPolicy,
    breaker: BreakerPolicy,
    dead_letter_topic: String,
}

/// Schedules, cancels and fires the timers of every route.
pub(crate) struct Timers {
    store: Arc<LazyStore>,
    publisher: Arc<Publisher>,
    breakers: Arc<Breakers>,
    telemetry: Arc<Telemetry>,
    routes: HashMap<String, RouteRules>,
    /// Woken when this host scheduled a timer.
    scheduled: Notify,
    /// Firing never pauses a partition; breakers count it here.
    waiting: Waiting,
    settings: TimerSettings,
    /// Refreshed by the firing task, so that a page or a scrape never
    /// waits for the store; none before the store was first read.
    view: Mutex<Option<(Instant, Upcoming)>>,
}

/// Why scheduling or cancelling failed: the store did not take it.
fn transient(error: StoreError) -> EffectError {
    EffectError::Transient(error.to_string())
}

impl Timers {
    pub(crate) fn new(
        routes: &[Route],
        settings: TimerSettings,
        store: Arc<LazyStore>,
        publisher: Arc<Publisher>,
        breakers: Arc<Breakers>,
        telemetry: Arc<Telemetry>,
    ) -> Timers {
        let rules = |route: &Route| RouteRules {
            retry: route.retry.clone(),
            breaker: route.breaker.clone(),
            dead_letter_topic: route.dead_letter_topic(),
        };
        Timers {
            store,
            publisher,
            breakers,
            telemetry,
            routes: routes
                .iter()
                .map(|route| (route.topic.clone(), rules(route)))
                .collect(),
            scheduled: Notify::new(),
            waiting: Waiting::default(),
            settings,
            view: Mutex::new(None),
        }
    }

    /// Keeps `timer` durably (retried behind the store's breaker, within the
    /// route's budget): once this returns, the message that scheduled it
    /// may be committed.
    pub(crate) async fn schedule(
        &self,
        timer: &Timer,
        rules: (&RetryPolicy, &BreakerPolicy),
        waiting: &Waiting,
    ) -> Result<(), Failure> {
        let attempt = || async { self.open().await?.schedule(timer).await.map_err(transient) };
        self.with_store(attempt, rules, waiting).await?;
        self.telemetry.timer_scheduled();
        self.scheduled.notify_one();
        Ok(())
    }

    /// Cancels `route`'s pending timer `id`, durably, if there is one.
    pub(crate) async fn cancel(
        &self,
        route: &str,
        id: &str,
        rules: (&RetryPolicy, &BreakerPolicy),
        waiting: &Waiting,
    ) -> Result<(), Failure> {
        let attempt = || async {
            self.open()
                .await?
                .cancel(route, id)
                .await
                .map_err(transient)
        };
        self.with_store(attempt, rules, waiting).await?;
        self.telemetry.timer_cancelled();
        Ok(())
    }

    /// The pending timers as the firing task last counted them.
    pub(crate) fn upcoming(&self) -> Option<Upcoming> {
        let view = self.view.lock().expect("timer view lock");
        view.as_ref().map(|(_, upcoming)| upcoming.clone())
    }

    /// Whether no pending timer is due within `timers.drain-within-ms`
    /// (for a run until drained); not when the store cannot say.
    pub(crate) async fn none_due_soon(&self) -> bool {
        if !self.store.may_hold_anything() {
            return true;
        }
        let next = async { self.store.get().await?.next_due().await };
        match next.await {
            Ok(None) => true,
            Ok(Some(due)) => due > now_ms() + self.settings.drain_within.as_millis() as u64,
            Err(error) => {
                tracing::debug!(%error, "timer drain check failed; will check again");
                false
            }
        }
    }

    /// How many timers the store holds pending at the end of a run, if it
    /// can say within `deadline`.
    pub(crate) async fn left_pending(&self, deadline: Duration) -> Option<PendingTimers> {
        match tokio::time::timeout(deadline, self.list(1)).await {
            Ok(Ok(upcoming)) => Some(PendingTimers {
                count: upcoming.pending,
                next_due: upcoming.soonest.first().map(|timer| timer.due),
            }),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot count the timers left pending");
                None
            }
            Err(_) => None,
        }
    }

    /// How many timers are pending, and the `limit` soonest, from the
    /// store now.
    pub(crate) async fn list(&self, limit: usize) -> Result<Upcoming, StoreError> {
        list(&self.store, limit).await
    }

    async fn open(&self) -> Result<&Arc<dyn Store>, EffectError> {
        self.store.get().await.map_err(transient)
    }

    /// Runs a store write behind the store's breaker, within the route's
    /// retry budget.
    async fn with_store<T, Attempt, Next>(
        &self,
        attempt: Attempt,
        (retry, breaker): (&RetryPolicy, &BreakerPolicy),
        waiting: &Waiting,
    ) -> Result<T, Failure>
    where
        Attempt: FnMut() -> Next,
        Next: Future<Output = Result<T, EffectError>>,
    {
        let breaker = self.breakers.store(breaker);
        admit_and_drive(&breaker, (retry, waiting), attempt).await
    }

    /// Fires due timers until `stop` turns true, then lets the batches
    /// it claimed finish. A host whose store does not exist yet waits for
    /// its first timer before opening it.
    pub(crate) async fn fire(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        while !self.store.may_hold_anything() {
            tokio::select! {
                _ = self.scheduled.notified() => {}
                _ = stop.changed() => return,
            }
        }
        let batches = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let mut failing = Repeats::default();
        let mut pruned = None;
        while !*stop.borrow() {
            let wait = match self.round(&batches, &mut pruned).await {
                Ok(Some(wait)) => wait,
                Ok(None) => continue,
                Err(error) => {
                    if let Some(held_back) = failing.admit() {
                        tracing::warn!(%error, held_back, "timers cannot be fired now");
                    }
                    self.settings.poll
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.scheduled.notified() => {}
                _ = stop.changed() => {}
            }
        }
        // Claimed timers are at most `horizon` from due: firing them now
        // spares them waiting for their lease after a restart.
        let _ = batches.acquire_many(BATCHES_IN_FLIGHT as u32).await;
    }

    /// How far ahead of due a timer is claimed: its claim's round trip is
    /// then taken before it is due, not after. A cancel or replacement that
    /// reaches the store less than this before the due time may come too
    /// late to stop it.
    fn horizon(&self) -> Duration {
        HORIZON.min(self.settings.lease / 4)
    }

    /// Claims one batch of timers due within the horizon and sets it
    /// firing, each at its due time; `None` when there may be more to
    /// claim now, else how long to sleep.
    async fn round(
        self: &Arc<Self>,
        batches: &Arc<Semaphore>,
        pruned: &mut Option<Instant>,
    ) -> Result<Option<Duration>, StoreError> {
        let store = self.store.get().await?;
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            *pruned = Some(Instant::now());
            let before = now_ms().saturating_sub(KEEP_FINISHED.as_millis() as u64);
            store.prune(before).await?;
        }
        let stale = (self.view.lock().expect("timer view lock").as_ref())
            .is_none_or(|(at, _)| at.elapsed() >= VIEW_EVERY);
        if stale {
            let (pending, soonest) = store.pending(SOONEST).await?;
            *self.view.lock().expect("timer view lock") =
                Some((Instant::now(), Upcoming { pending, soonest }));
        }
        let batch = batches
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let horizon = self.horizon().as_millis() as u64;
        let now = now_ms();
        let due = store
            .claim_due(now, now + horizon, self.settings.lease, BATCH)
            .await?;
        let full = due.len() == BATCH;
        if !due.is_empty() {
            tokio::spawn(self.clone().fire_batch(store.clone(), due, batch));
        }
        if full {
            return Ok(None);
        }
        // Everything claimable within the horizon is claimed: sleep until
        // the soonest pending timer enters it, unless it has (another host
        // holds it, or this one is firing it).
        let next = store.next_due().await?;
        let now = now_ms();
        Ok(Some(match next {
            Some(due) if due > now + horizon => {
                Duration::from_millis(due - now - horizon).min(self.settings.poll)
            }
            _ => self.settings.poll,
        }))
    }

    /// Fires a claimed batch, each timer at its due time, then marks them
    /// fired at once.
    async fn fire_batch(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        due: Vec<Timer>,
        _batch: OwnedSemaphorePermit,
    ) {
        let fired = futures::future::join_all(due.into_iter().map(|timer| async {
            let wait = timer.due.saturating_sub(now_ms());
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            self.fire_one(timer).await
        }))
        .await;
        if let Err(error) = store.fired(&fired).await {
            // Their lease ends and they fire again, with the same sluice-ids.
            tracing::warn!(%error, timers = fired.len(), "fired timers could not be marked fired");
        }
    }

    /// Publishes one claimed timer within its route's rules, or
    /// dead-letters it when they give up: either way it is done with.
    async fn fire_one(&self, timer: Timer) -> Timer {
        // A route no longer configured: the default rules and dead-letter topic.
        let fallback;
        let rules = match self.routes.get(&timer.route) {
            Some(rules) => rules,
            None => {
                fallback = RouteRules {
                    retry: RetryPolicy::default(),
                    breaker: BreakerPolicy::default(),
                    dead_letter_topic: Route::default_dead_letter_topic(&timer.route),
                };
                &fallback
            }
        };
        let mut record = timer.record.clone();
        record.headers.push(Header::new(wire::ID, timer_id(&timer)));
        let breaker = self.breakers.topic(&record.topic, &rules.breaker);
        let attempt = || self.publisher.publish(&record);
        let published = admit_and_drive(&breaker, (&rules.retry, &self.waiting), attempt).await;
        let lateness = Duration::from_millis(now_ms().saturating_sub(timer.due));
        match published {
            Ok(landed) => {
                self.telemetry.timer_fired(lateness);
                if self.telemetry.keeps_records() {
                    self.telemetry.keep(Record::Fired {
                        route: timer.route.clone(),
                        id: timer.id.clone(),
                        due: timer.due,
                        late: lateness,
                        record: landed.of(&record),
                    });
                }
            }
            Err(failed) => self.dead_letter(rules, &timer, record, failed).await,
        }
        timer
    }

    async fn dead_letter(
        &self,
        rules: &RouteRules,
        timer: &Timer,
        record: Publish,
        failed: Failure,
    ) {
        tracing::warn!(
            route = %timer.route,
            id = %timer.id,
            topic = %record.topic,
            reason = failed.reason.as_str(),
            detail = %failed.detail,
            attempts = failed.attempts,
            "dead-lettering a timer"
        );
        let letter = wire::timer_dead_letter(record, &rules.dead_letter_topic, &failed);
        self.publisher.publish_stubbornly(&letter).await;
        self.telemetry.dead_lettered();
        self.telemetry
            .dead_lettered_for(wire::Stage::Timer.as_str(), failed.reason.as_str());
    }
}

/// How many timers `store` holds pending, and the `limit` soonest (nothing,
/// without creating a store that does not exist).
pub async fn list(store: &LazyStore, limit: usize) -> Result<Upcoming, StoreError> {
    if !store.may_hold_anything() {
        return Ok(Upcoming::default());
    }
    let (pending, soonest) = store.get().await?.pending(limit).await?;
    Ok(Upcoming { pending, soonest })
}

/// A fired timer's `sluice-id`: the same on every firing of that timer.
pub(crate) fn timer_id(timer: &Timer) -> String {
    format!("timer:{}:{}:{}", timer.route, timer.id, timer.due)
}
