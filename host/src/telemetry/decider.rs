//! What deciders did, counted where they do it and read by metrics and
//! the run report.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what deciders did, for metrics and the run report.
#[derive(Debug, Default)]
pub struct DeciderStats {
    pub(crate) decisions: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) redeliveries: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
}

/// A reading of `DeciderStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeciderCounts {
    /// Decisions made (each attempt counts).
    pub decisions: u64,
    /// Successful appends.
    pub appends: u64,
    /// Events appended.
    pub events: u64,
    /// Appends refused by a version conflict.
    pub conflicts: u64,
    /// Messages found already appended (redeliveries).
    pub redeliveries: u64,
    /// Snapshots persisted.
    pub snapshots: u64,
    /// Decisions that started from the in-memory state.
    pub cache_hits: u64,
}

impl DeciderStats {
    /// The counters now.
    pub fn counts(&self) -> DeciderCounts {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeciderCounts {
            decisions: read(&self.decisions),
            appends: read(&self.appends),
            events: read(&self.events),
            conflicts: read(&self.conflicts),
            redeliveries: read(&self.redeliveries),
            snapshots: read(&self.snapshots),
            cache_hits: read(&self.cache_hits),
        }
    }
}
