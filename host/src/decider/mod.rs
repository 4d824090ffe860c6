//! Event-sourced handlers: load a message's stream (a snapshot, then the
//! events after it) → fold it into a state → decide → append the decided
//! events with the version the state was folded at. When another writer got
//! there first the append conflicts; the tail is loaded and the decision
//! made again (safe: decide is pure), after a jittered backoff, up to
//! `conflict-attempts` times. A message whose events are already in the
//! stream (a redelivery) is decided again on the state before them, which
//! gives its outputs back without appending anything.
//!
//! States stay in memory (`cache`), checked against the store by version on
//! every decision, and are persisted every `snapshot-every` events, keyed by
//! handler version: a state is only ever read by the version that encoded it.

mod cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::DeciderSettings;
use crate::contract::{Decision, Event, Message, Output};
use crate::policy::retry::Backoff;
use crate::runtime::{CallError, DeciderInstance, Handler, decider_of};
use crate::store::{
    Cause, EventStore, LazyStore, Snapshot, SnapshotKey, Store, StoreError, StoredEvent,
};
pub use crate::telemetry::decider::DeciderStats;
use crate::workers::WorkerPool;
use cache::{Cached, StateCache};

/// Events handed to one `fold` call.
const FOLD_BATCH: usize = 256;

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What came of deciding one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The outputs to run now.
    pub outputs: Vec<Output>,
    /// Events appended for it (0 when it decided none, or on a redelivery).
    pub appended: u64,
    /// The stream's version after it.
    pub version: u64,
    /// Whether its events were appended by an earlier delivery.
    pub redelivered: bool,
}

/// Why a message could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// `fold` or `decide` refused or trapped.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Every attempt's append met a version conflict.
    #[error(
        "a version conflict on every attempt ({attempts}) on stream {stream:?}: other writers kept appending first"
    )]
    Conflict {
        /// The stream.
        stream: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The event store failed (transient).
    #[error(transparent)]
    Store(StoreError),
}

/// Decides messages of decider handlers against the event store.
pub struct Decider {
    store: Arc<LazyStore>,
    settings: DeciderSettings,
    cache: StateCache,
    stats: Arc<DeciderStats>,
}

/// The source id recorded with appended events (as in `sluice-id`).
fn source_of(message: &Message) -> String {
    format!("{}/{}/{}", message.topic, message.partition, message.offset)
}

impl Decider {
    /// A decider over an open store.
    pub fn new(
        store: Arc<dyn Store>,
        settings: DeciderSettings,
        stats: Arc<DeciderStats>,
    ) -> Decider {
        Decider::lazy(Arc::new(LazyStore::open_already(store)), settings, stats)
    }

    /// A decider over a store opened when it is first needed, so that
    /// hosts without deciders never create one.
    pub(crate) fn lazy(
        store: Arc<LazyStore>,
        settings: DeciderSettings,
        stats: Arc<DeciderStats>,
    ) -> Decider {
        Decider {
            store,
            cache: StateCache::new(settings.cache_streams, settings.cache_mib << 20),
            settings,
            stats,
        }
    }

    /// The store, opened now if it was not yet.
    pub(crate) async fn store(&self) -> Result<&Arc<dyn Store>, StoreError> {
        self.store.get().await
    }

    /// Decides `message` on `stream` with `handler`'s decider functions,
    /// run on `pool`: loads, folds, decides and appends, again on a
    /// conflict.
    pub async fn decide(
        &self,
        pool: &WorkerPool,
        handler: &Arc<dyn Handler>,
        message: &Arc<Message>,
        stream: &str,
    ) -> Result<Decided, DecideError> {
        let attempts = self.settings.conflict_attempts.max(1);
        let mut backoff = Backoff::new(
            self.settings.conflict_backoff_initial,
            self.settings.conflict_backoff_max,
        );
        let mut attempt = 1;
        loop {
            match self.attempt(pool, handler, message, stream).await {
                Err(DecideError::Store(StoreError::Conflict { expected, .. })) => {
                    bump(&self.stats.conflicts, 1);
                    if attempt >= attempts {
                        return Err(DecideError::Conflict {
                            stream: stream.to_owned(),
                            attempts,
                        });
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(
                        input = %message.id(),
                        stream,
                        expected,
                        attempt,
                        delay_us = delay.as_micros() as u64,
                        "version conflict: another writer appended first; deciding again"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One load → fold → decide → append.
    async fn attempt(
        &self,
        pool: &WorkerPool,
        handler: &Arc<dyn Handler>,
        message: &Arc<Message>,
        stream: &str,
    ) -> Result<Decided, DecideError> {
        let store = self.store().await.map_err(DecideError::Store)?;
        let key = key_of(handler.as_ref(), stream);
        let start = match self.cache.get(&key) {
            Some(cached) => {
                bump(&self.stats.cache_hits, 1);
                cached
            }
            None => self.persisted(store.as_ref(), key, None).await?,
        };
        let source = source_of(message);
        let tail = store
            .read(stream, start.version, None, &source)
            .await
            .map_err(DecideError::Store)?;
        if let Some(decided_at) = tail.decided_at {
            return self
                .redelivered(pool, handler, message, store.as_ref(), key, decided_at)
                .await;
        }
        let version = tail.events.last().map_or(start.version, |e| e.version);
        let (state, decision) = fold_and_decide(pool, handler, message, start.state, tail.events)
            .await
            .map_err(DecideError::Call)?;
        bump(&self.stats.decisions, 1);
        let mut snapshot_version = start.snapshot_version;
        let every = self.settings.snapshot_every;
        if every > 0 && version >= snapshot_version + every {
            let snapshot = Snapshot {
                version,
                state: state.as_ref().clone(),
            };
            match store.save_snapshot(key, &snapshot).await {
                Ok(()) => {
                    bump(&self.stats.snapshots, 1);
                    snapshot_version = version;
                }
                // Only a cost: the next cold load folds more events.
                Err(error) => tracing::warn!(stream, %error, "could not save a snapshot"),
            }
        }
        self.cache.put(
            &key,
            Cached {
                state: Some(state.clone()),
                version,
                snapshot_version,
            },
        );
        let Decision { events, outputs } = decision;
        let cause = Cause {
            handler: handler.name().to_owned(),
            handler_version: handler.version().to_owned(),
            source,
        };
        if events.is_empty() {
            // Remembered, so that a redelivery decides on this same state.
            store
                .mark_decided(stream, version, &cause)
                .await
                .map_err(DecideError::Store)?;
            return Ok(Decided {
                outputs,
                appended: 0,
                version,
                redelivered: false,
            });
        }
        let appended = store
            .append(stream, version, &events, &cause)
            .await
            .map_err(DecideError::Store)?;
        bump(&self.stats.appends, 1);
        bump(&self.stats.events, events.len() as u64);
        Ok(Decided {
            outputs,
            appended: events.len() as u64,
            version: appended,
            redelivered: false,
        })
    }

    /// The persisted starting point of a stream for a handler version: its
    /// snapshot (at or before `upto`, if given), or the empty stream.
    async fn persisted(
        &self,
        store: &dyn EventStore,
        key: SnapshotKey<'_>,
        upto: Option<u64>,
    ) -> Result<Cached, DecideError> {
        let snapshot = store.snapshot(key).await.map_err(DecideError::Store)?;
        Ok(
            match snapshot.filter(|s| upto.is_none_or(|upto| s.version <= upto)) {
                Some(snapshot) => Cached {
                    version: snapshot.version,
                    snapshot_version: snapshot.version,
                    state: Some(Arc::new(snapshot.state)),
                },
                None => Cached::default(),
            },
        )
    }

    /// A message decided before, on the stream at version `before`:
    /// decided again on that state, for its outputs, appending nothing.
    async fn redelivered(
        &self,
        pool: &WorkerPool,
        handler: &Arc<dyn Handler>,
        message: &Arc<Message>,
        store: &dyn EventStore,
        key: SnapshotKey<'_>,
        before: u64,
    ) -> Result<Decided, DecideError> {
        let start = self.persisted(store, key, Some(before)).await?;
        let tail = store
            .read(key.stream, start.version, Some(before), &source_of(message))
            .await
            .map_err(DecideError::Store)?;
        let (_, decision) = fold_and_decide(pool, handler, message, start.state, tail.events)
            .await
            .map_err(DecideError::Call)?;
        bump(&self.stats.redeliveries, 1);
        tracing::info!(
            input = %message.id(),
            stream = key.stream,
            version = before,
            "decided by an earlier delivery: nothing appended, its outputs run again"
        );
        Ok(Decided {
            outputs: decision.outputs,
            appended: 0,
            version: before,
            redelivered: true,
        })
    }

    /// The state of `stream` as `handler` folds it, from a snapshot when
    /// `snapshots` allows, and its version (for tools and tests).
    pub async fn state(
        &self,
        pool: &WorkerPool,
        handler: &Arc<dyn Handler>,
        stream: &str,
        snapshots: bool,
    ) -> Result<(Vec<u8>, u64), DecideError> {
        let store = self.store().await.map_err(DecideError::Store)?;
        let key = key_of(handler.as_ref(), stream);
        let start = match snapshots {
            true => self.persisted(store.as_ref(), key, None).await?,
            false => Cached::default(),
        };
        let tail = store
            .read(stream, start.version, None, "")
            .await
            .map_err(DecideError::Store)?;
        let version = tail.events.last().map_or(start.version, |e| e.version);
        let events = events_of(tail.events);
        let state = start.state;
        let folded = pool
            .with_instance(handler, move |instance| {
                fold(decider_of(instance)?, &message_for_fold(), state, &events)
            })
            .await?;
        Ok((folded.as_ref().clone(), version))
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<DeciderStats> {
        &self.stats
    }
}

/// Where a handler version's state of a stream is kept (cache, snapshots).
fn key_of<'a>(handler: &'a dyn Handler, stream: &'a str) -> SnapshotKey<'a> {
    SnapshotKey {
        stream,
        handler: handler.name(),
        handler_version: handler.version(),
    }
}

/// The message whose clocks a fold outside any decision runs with.
fn message_for_fold() -> Message {
    Message {
        topic: String::new(),
        partition: 0,
        offset: 0,
        key: None,
        payload: Vec::new(),
        headers: Vec::new(),
        timestamp: 0,
    }
}

/// `state` (the initial one if none) with `events` folded in, in batches.
fn fold(
    decider: &mut dyn DeciderInstance,
    message: &Message,
    state: Option<Arc<Vec<u8>>>,
    events: &[Event],
) -> Result<Arc<Vec<u8>>, CallError> {
    let mut state = match state {
        Some(state) => state,
        None => Arc::new(decider.initial(message)?),
    };
    for batch in events.chunks(FOLD_BATCH) {
        state = Arc::new(decider.fold(message, &state, batch)?);
    }
    Ok(state)
}

/// The events of a tail, without their versions.
fn events_of(tail: Vec<StoredEvent>) -> Vec<Event> {
    tail.into_iter().map(|stored| stored.event).collect()
}

/// Folds the tail into the state and decides, in one trip to a worker.
async fn fold_and_decide(
    pool: &WorkerPool,
    handler: &Arc<dyn Handler>,
    message: &Arc<Message>,
    state: Option<Arc<Vec<u8>>>,
    events: Vec<StoredEvent>,
) -> Result<(Arc<Vec<u8>>, Decision), CallError> {
    let message = message.clone();
    let events = events_of(events);
    pool.with_instance(handler, move |instance| {
        let decider = decider_of(instance)?;
        let state = fold(decider, &message, state, &events)?;
        let decision = decider.decide(&message, &state)?;
        Ok((state, decision))
    })
    .await
}
