//! States in memory: (handler version, stream) → (state, version). An entry
//! is only a starting point: every decision reads the stream's events after
//! its version from the store, so a stale entry costs a longer fold, never a
//! wrong decision. The cache is bounded in entries and in bytes (states and
//! keys): when either is full, the least recently used eighth of the
//! entries goes (more, until the bytes fit). A state larger than the whole
//! byte budget is not kept.

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
    max_bytes: u64,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, (Cached, u64)>,
    clock: u64,
    /// Bytes of the states and keys kept.
    bytes: u64,
}

/// What an entry holds in memory, as counted against the byte budget.
fn size(key: &Key, cached: &Cached) -> u64 {
    let state = cached.state.as_ref().map_or(0, |s| s.len());
    (key.0.len() + key.1.len() + key.2.len() + state) as u64
}

fn key(key: &SnapshotKey<'_>) -> Key {
    (
        key.handler.to_owned(),
        key.handler_version.to_owned(),
        key.stream.to_owned(),
    )
}

impl StateCache {
    /// At most `capacity` states, of `max_bytes` in all.
    pub(crate) fn new(capacity: usize, max_bytes: u64) -> Self {
        StateCache {
            capacity,
            max_bytes,
            entries: Mutex::default(),
        }
    }

    /// Bytes of the states (and keys) kept.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.entries.lock().expect("state cache lock").bytes
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
        entries.remove(&key);
        let bytes = size(&key, &cached);
        if bytes > self.max_bytes {
            return;
        }
        if entries.map.len() >= self.capacity {
            entries.evict(self.capacity.div_ceil(8));
        }
        while entries.bytes + bytes > self.max_bytes {
            let eighth = entries.map.len().div_ceil(8);
            entries.evict(eighth);
        }
        entries.bytes += bytes;
        entries.map.insert(key, (cached, now));
    }
}

impl Entries {
    fn remove(&mut self, key: &Key) {
        if let Some((cached, _)) = self.map.remove(key) {
            self.bytes -= size(key, &cached);
        }
    }

    /// Drops the `count` least recently used entries (at least one).
    fn evict(&mut self, count: usize) {
        let mut uses: Vec<u64> = self.map.values().map(|(_, used)| *used).collect();
        uses.sort_unstable();
        let Some(&cutoff) = uses.get(count.max(1) - 1) else {
            return;
        };
        let mut freed = 0;
        self.map.retain(|key, (cached, used)| {
            let keep = *used > cutoff;
            if !keep {
                freed += size(key, cached);
            }
            keep
        });
        self.bytes -= freed;
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
        let cache = StateCache::new(8, u64::MAX);
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

    fn sized(version: u64, bytes: usize) -> Cached {
        Cached {
            state: Some(Arc::new(vec![7; bytes])),
            version,
            snapshot_version: 0,
        }
    }

    #[test]
    fn states_are_bounded_in_bytes_as_well_as_in_number() {
        // Keys "h", "1" and "sN": 4 bytes each, besides the state.
        let cache = StateCache::new(1000, 10_000);
        for i in 0..50 {
            cache.put(&at(&format!("s{i:02}")), sized(1, 996));
            assert!(cache.bytes() <= 10_000, "{} bytes kept", cache.bytes());
        }
        assert!(cache.get(&at("s49")).is_some(), "the newest is kept");
        assert!(cache.get(&at("s00")).is_none(), "the oldest went");
        // Replacing a state gives its old bytes back first.
        let before = cache.bytes();
        cache.put(&at("s49"), sized(2, 996));
        assert_eq!(cache.bytes(), before);
        // A state larger than the whole budget is never kept, and the
        // stream's older state goes with it.
        cache.put(&at("s49"), sized(3, 20_000));
        assert!(cache.get(&at("s49")).is_none());
        assert!(cache.bytes() < before);
    }
}
