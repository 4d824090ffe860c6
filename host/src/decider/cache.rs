//! States in memory: (handler version, stream) → (state, version). An entry
//! is only a starting point: every decision reads the stream's events after
//! its version from the store, so a stale entry costs a longer fold, never a
//! wrong decision. When full, the least recently used eighth goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::store::SnapshotKey;

/// A stream's state as of a version.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cached {
    /// The folded state; `None` for an empty stream not yet folded.
    pub(crate) state: Option<Arc<Vec<u8>>>,
    pub(crate) version: u64,
    /// The version of the latest persisted snapshot known.
    pub(crate) snapshot_version: u64,
}

type Key = (String, String, String);

pub(crate) struct StateCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, (Cached, u64)>,
    clock: u64,
}

fn key(key: &SnapshotKey<'_>) -> Key {
    (
        key.handler.to_owned(),
        key.handler_version.to_owned(),
        key.stream.to_owned(),
    )
}

impl StateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            capacity,
            entries: Mutex::default(),
        }
    }

    pub(crate) fn get(&self, at: &SnapshotKey<'_>) -> Option<Cached> {
        let mut entries = self.entries.lock().expect("state cache lock");
        entries.clock += 1;
        let now = entries.clock;
        let (cached, used) = entries.map.get_mut(&key(at))?;
        *used = now;
        Some(cached.clone())
    }

    /// Keeps a state, unless a later one of the stream is kept already.
    pub(crate) fn put(&self, at: &SnapshotKey<'_>, cached: Cached) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().expect("state cache lock");
        entries.clock += 1;
        let now = entries.clock;
        let key = key(at);
        if entries
            .map
            .get(&key)
            .is_some_and(|(kept, _)| kept.version > cached.version)
        {
            return;
        }
        if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            entries.evict(self.capacity.div_ceil(8));
        }
        entries.map.insert(key, (cached, now));
    }
}

impl Entries {
    fn evict(&mut self, count: usize) {
        let mut uses: Vec<u64> = self.map.values().map(|(_, used)| *used).collect();
        uses.sort_unstable();
        let Some(&cutoff) = uses.get(count.saturating_sub(1)) else {
            return;
        };
        self.map.retain(|_, (_, used)| *used > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &str) -> SnapshotKey<'_> {
        SnapshotKey {
            stream,
            handler: "h",
            handler_version: "1",
        }
    }

    fn state(version: u64) -> Cached {
        Cached {
            state: Some(Arc::new(version.to_be_bytes().to_vec())),
            version,
            snapshot_version: 0,
        }
    }

    #[test]
    fn keeps_the_latest_version_and_evicts_the_least_recently_used() {
        let cache = StateCache::new(8);
        cache.put(&at("a"), state(5));
        cache.put(&at("a"), state(3));
        assert_eq!(
            cache.get(&at("a")).unwrap().version,
            5,
            "an older state never replaces a newer one"
        );
        for i in 0..7 {
            cache.put(&at(&format!("s{i}")), state(i));
        }
        cache.get(&at("a"));
        cache.put(&at("new"), state(1));
        assert!(cache.get(&at("a")).is_some(), "recently used stays");
        assert!(cache.get(&at("s0")).is_none(), "least recently used went");
        assert!(cache.get(&at("new")).is_some());
        let other_version = SnapshotKey {
            handler_version: "2",
            ..at("a")
        };
        assert!(
            cache.get(&other_version).is_none(),
            "states are per handler version"
        );
    }
}
