//! Offset watermarks: per partition, the offset below which every message is
//! finished (outputs executed or dead-lettered). Only that offset may be
//! committed, whatever order messages finish in.
//!
//! Finished messages above a gap are not listed anywhere: the watermark is
//! the lowest offset still in flight, or one past the highest received when
//! nothing is, so the memory used is bounded by the messages in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

#[derive(Debug)]
struct PartitionOffsets {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    /// The watermark last handed out by `advanced`.
    reported: Option<i64>,
}

impl PartitionOffsets {
    fn watermark(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Watermarks of every partition this host is working on.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    partitions: Mutex<HashMap<TopicPartition, PartitionOffsets>>,
    generations: AtomicU64,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Proof that a message was received; `finish` it once its outputs are done.
/// Dropping it unfinished keeps the watermark below the message, so it will
/// be delivered again after a restart.
#[must_use = "a message's offset only advances once its ack is finished"]
pub(crate) struct Ack {
    offsets: Arc<Offsets>,
    tp: TopicPartition,
    generation: u64,
    offset: i64,
    settled: bool,
}

impl Offsets {
    /// Records that a message was received and is now in flight.
    pub(crate) fn begin(self: &Arc<Self>, tp: TopicPartition, offset: i64) -> Ack {
        let mut partitions = self.partitions.lock().expect("offsets lock");
        let state = partitions
            .entry(tp.clone())
            .or_insert_with(|| PartitionOffsets {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                in_flight: BTreeSet::new(),
                next: offset,
                reported: None,
            });
        state.in_flight.insert(offset);
        state.next = state.next.max(offset + 1);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ack {
            offsets: self.clone(),
            tp,
            generation: state.generation,
            offset,
            settled: false,
        }
    }

    fn settle(&self, ack: &mut Ack, finished: bool) {
        if ack.settled {
            return;
        }
        ack.settled = true;
        if finished {
            let mut partitions = self.partitions.lock().expect("offsets lock");
            if let Some(state) = partitions.get_mut(&ack.tp)
                && state.generation == ack.generation
            {
                state.in_flight.remove(&ack.offset);
            }
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Partitions whose watermark moved since the last call, with the offset
    /// to commit (the next one to consume).
    pub(crate) fn advanced(&self) -> Vec<(TopicPartition, i64)> {
        let mut partitions = self.partitions.lock().expect("offsets lock");
        partitions
            .iter_mut()
            .filter_map(|(tp, state)| {
                let watermark = state.watermark();
                (state.reported != Some(watermark)).then(|| {
                    state.reported = Some(watermark);
                    (tp.clone(), watermark)
                })
            })
            .collect()
    }

    /// The offset to commit for a partition, if any message of it was seen.
    pub(crate) fn watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let partitions = self.partitions.lock().expect("offsets lock");
        partitions.get(tp).map(PartitionOffsets::watermark)
    }

    /// Forgets a partition (revoked or newly assigned); acks of messages
    /// received before no longer move its watermark.
    pub(crate) fn forget(&self, tp: &TopicPartition) {
        self.partitions.lock().expect("offsets lock").remove(tp);
    }

    /// Messages of these partitions received and not yet finished.
    pub(crate) fn in_flight_of(&self, tps: &[TopicPartition]) -> usize {
        let partitions = self.partitions.lock().expect("offsets lock");
        tps.iter()
            .filter_map(|tp| partitions.get(tp))
            .map(|state| state.in_flight.len())
            .sum()
    }

    /// Messages received and not yet settled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no message is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Ack {
    /// The message is done: its outputs ran or it was dead-lettered.
    pub(crate) fn finish(mut self) {
        let offsets = self.offsets.clone();
        offsets.settle(&mut self, true);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let offsets = self.offsets.clone();
        offsets.settle(self, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".into(), 0)
    }

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let offsets = Arc::new(Offsets::default());
        let acks: Vec<Ack> = (10..15).map(|o| offsets.begin(tp(), o)).collect();
        assert_eq!(offsets.watermark(&tp()), Some(10));
        let mut acks = acks.into_iter();
        let first = acks.next().unwrap();
        // Finish 11..14 first: nothing may be committed past 10.
        for ack in acks {
            ack.finish();
        }
        assert_eq!(offsets.watermark(&tp()), Some(10));
        assert_eq!(offsets.in_flight(), 1);
        first.finish();
        assert_eq!(offsets.watermark(&tp()), Some(15));
        assert_eq!(offsets.advanced(), vec![(tp(), 15)]);
        assert!(offsets.advanced().is_empty(), "reported once");
    }

    #[test]
    fn an_ack_dropped_unfinished_holds_the_watermark() {
        let offsets = Arc::new(Offsets::default());
        let lost = offsets.begin(tp(), 3);
        offsets.begin(tp(), 4).finish();
        drop(lost);
        assert_eq!(offsets.watermark(&tp()), Some(3));
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn acks_from_before_a_forget_are_ignored() {
        let offsets = Arc::new(Offsets::default());
        let old = offsets.begin(tp(), 100);
        offsets.forget(&tp());
        let new = offsets.begin(tp(), 50);
        old.finish();
        assert_eq!(offsets.watermark(&tp()), Some(50));
        new.finish();
        assert_eq!(offsets.watermark(&tp()), Some(51));
    }
}
