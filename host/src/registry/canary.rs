//! Which keys a canary gets, and when it has failed too often.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Shares are in basis points: 10_000 is every key.
pub(crate) const ALL: u32 = 10_000;
/// Buckets a window is counted in: rates move in steps of a twentieth of it.
const BUCKETS: u32 = 20;

/// Whether a message goes to the canary: by a stable hash of its key, so a
/// key always goes to the same version and its order holds. A message with
/// no key has no order to keep; its offset decides.
pub(crate) fn takes(share: u32, key: Option<&[u8]>, offset: i64) -> bool {
    let hash = match key {
        Some(key) => fnv1a(key),
        None => fnv1a(&offset.to_le_bytes()),
    };
    (hash % u64::from(ALL)) < u64::from(share)
}

/// FNV-1a, 64 bit: stable across processes and builds, unlike std's hasher,
/// so two hosts (and a restart) agree on every key.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Messages the canary handled and dead-lettered over a sliding window.
pub(crate) struct Window {
    span: Duration,
    /// (bucket start, handled, dead-lettered), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
}

impl Window {
    pub(crate) fn new(span: Duration) -> Self {
        Window {
            span,
            buckets: VecDeque::new(),
        }
    }

    /// Counts one message; returns the totals over the window.
    pub(crate) fn record(&mut self, now: Instant, dead: bool) -> (u64, u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(start, _, _)| now.duration_since(*start) > self.span)
        {
            self.buckets.pop_front();
        }
        let step = self.span / BUCKETS;
        match self.buckets.back_mut() {
            Some((start, handled, dead_lettered)) if now.duration_since(*start) < step => {
                *handled += 1;
                *dead_lettered += u64::from(dead);
            }
            _ => self.buckets.push_back((now, 1, u64::from(dead))),
        }
        self.buckets
            .iter()
            .fold((0, 0), |(h, d), (_, bh, bd)| (h + bh, d + bd))
    }

    pub(crate) fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_keys_goes_to_the_canary_and_each_key_always_the_same_way() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("customer-{i}")).collect();
        let taken = keys
            .iter()
            .filter(|k| takes(2_000, Some(k.as_bytes()), 0))
            .count();
        assert!((1_500..=2_500).contains(&taken), "{taken} of 10000 at 20%");
        for key in &keys {
            let first = takes(2_000, Some(key.as_bytes()), 1);
            assert_eq!(first, takes(2_000, Some(key.as_bytes()), 99), "{key}");
        }
        assert!(!takes(0, Some(b"k"), 0));
        assert!(takes(ALL, Some(b"k"), 0));
    }

    #[test]
    fn the_window_forgets_what_is_older_than_its_span() {
        let start = Instant::now();
        let mut window = Window::new(Duration::from_secs(10));
        assert_eq!(window.record(start, true), (1, 1));
        assert_eq!(window.record(start + Duration::from_secs(5), false), (2, 1));
        assert_eq!(
            window.record(start + Duration::from_secs(12), false),
            (2, 0)
        );
        window.clear();
        assert_eq!(
            window.record(start + Duration::from_secs(13), false),
            (1, 0)
        );
    }
}
