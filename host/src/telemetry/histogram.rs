//! Latency histograms in Prometheus form: fixed buckets, lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds, in seconds: 100 µs to 10 s.
const BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Durations per bucket, as `Histogram::counts` reads them.
pub(crate) type Counts = [u64; BOUNDS.len() + 1];

/// The smallest bucket bound under which `quantile` of the durations
/// counted fall (an upper estimate; `None` when none are).
pub(crate) fn quantile_of(counts: &Counts, quantile: f64) -> Option<Duration> {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return None;
    }
    let wanted = (count as f64 * quantile).ceil() as u64;
    let mut seen = 0;
    for (n, bound) in counts.iter().zip(BOUNDS) {
        seen += n;
        if seen >= wanted {
            return Some(Duration::from_secs_f64(bound));
        }
    }
    Some(Duration::from_secs_f64(BOUNDS[BOUNDS.len() - 1]))
}

/// Counts of observed durations per bucket, their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bucket bound under which `quantile` of the durations
    /// fall (an upper estimate; `None` before any).
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        quantile_of(&self.counts(), quantile)
    }

    /// Each bucket's own count (not cumulative), durations past the last
    /// bound last: what `quantile_of` reads, and what two readings a while
    /// apart subtract to give the durations recorded in between.
    pub(crate) fn counts(&self) -> Counts {
        let mut counts = [0; BOUNDS.len() + 1];
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        let bounded: u64 = counts.iter().sum();
        counts[BOUNDS.len()] = self.count().saturating_sub(bounded);
        counts
    }

    /// The sum of durations in seconds, their count, and each bucket's own
    /// count by upper bound (not cumulative; `+Inf` last), as exposed.
    pub(crate) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        let bounded: u64 = buckets.iter().map(|(_, n)| n).sum();
        // `max`: an observation may be in its bucket and not yet counted.
        let count = self.count().max(bounded);
        buckets.push((f64::INFINITY, count - bounded));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_quantiles_bounded() {
        let h = Histogram::default();
        for ms in [1, 2, 3, 40, 900] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert!((sum - 0.946).abs() < 1e-9, "{sum}");
        let count_under = |bound: f64| -> u64 {
            buckets
                .iter()
                .filter(|(b, _)| *b <= bound)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(count_under(0.001), 1);
        assert_eq!(count_under(0.005), 3);
        assert_eq!(count_under(1.0), 5);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
        // The median (3 ms) lies in the bucket up to 5 ms; 2 of 5 are under 2.5 ms.
        assert_eq!(h.quantile(0.5), Some(Duration::from_secs_f64(0.005)));
        assert_eq!(h.quantile(0.4), Some(Duration::from_secs_f64(0.0025)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_secs_f64(1.0)));
    }
}
