//! A log line that keeps coming (a broker or a collector that stays
//! away): said when first seen, then at most once per `REPEAT_EVERY`, with
//! how many were held back meanwhile.

use std::time::{Duration, Instant};

/// How often a line that keeps coming is said again.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// One kind of line: when it was last said, and its repeats since.
#[derive(Debug, Default)]
pub(crate) struct Repeats {
    pub(crate) last: Option<Instant>,
    held_back: u64,
}

impl Repeats {
    /// Whether the line is to be said now: if so, how many were held back
    /// since it last was.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(at) if now.duration_since(at) < REPEAT_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}
