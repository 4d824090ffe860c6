//! Offset watermarks: per partition, the offset below which every message is
//! finished (outputs executed or dead-lettered). Only that offset may be
//! committed, whatever order messages finish in.
//!
//! The watermark is the lowest offset still in flight, or one past the
//! highest received when nothing is. Messages finished above a gap are
//! remembered here, in the host, never in commit metadata.
//!
//! A finished message keeps what it was given to hold (its in-flight slot)
//! until its offset is committed (`Hold::UntilCommitted`, Kafka sources), so
//! the work a crash could make sluice redo never exceeds the in-flight caps;
//! a source with nothing to commit releases at the watermark instead.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

/// Something a finished message holds until it is released.
pub(crate) type Held = Box<dyn Send>;

/// When what a finished message holds is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// When the watermark passes it (nothing is ever committed).
    UntilWatermark,
    /// When a commit covering its offset is confirmed.
    UntilCommitted,
}

/// Every partition's offsets, and those being let go.
#[derive(Default)]
struct Partitions {
    offsets: HashMap<TopicPartition, PartitionOffsets>,
    /// Partitions being let go: no new message of them may begin.
    closing: HashSet<TopicPartition>,
}

struct PartitionOffsets {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// Finished and not yet released, with what each holds.
    held: BTreeMap<i64, Held>,
    /// One past the highest offset received.
    next: i64,
    /// The offset of the latest commit confirmed for the partition.
    committed: Option<i64>,
}

impl PartitionOffsets {
    fn watermark(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }

    /// Takes out what is held below `offset`.
    fn release_below(&mut self, offset: i64) -> BTreeMap<i64, Held> {
        let kept = self.held.split_off(&offset);
        std::mem::replace(&mut self.held, kept)
    }
}

/// Watermarks of every partition this host is working on.
pub(crate) struct Offsets {
    hold: Hold,
    partitions: Mutex<Partitions>,
    generations: AtomicU64,
    in_flight: AtomicUsize,
    idle: Notify,
    commit_wanted: Notify,
    /// Lanes waiting for slots: while any is, every watermark advance asks
    /// for a commit (the commit is what gives their slots back).
    starving: AtomicUsize,
}

/// A lane waiting for slots, for as long as it is held.
pub(crate) struct Starving<'a>(&'a Offsets);

impl Drop for Starving<'_> {
    fn drop(&mut self) {
        self.0.starving.fetch_sub(1, Ordering::AcqRel);
    }
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
    pub(crate) fn new(hold: Hold) -> Self {
        Offsets {
            hold,
            partitions: Mutex::default(),
            generations: AtomicU64::default(),
            in_flight: AtomicUsize::default(),
            idle: Notify::new(),
            commit_wanted: Notify::new(),
            starving: AtomicUsize::new(0),
        }
    }

    /// Records that a message was received and is now in flight; `None` if
    /// its partition is being let go (the message is left for its next owner).
    pub(crate) fn begin(self: &Arc<Self>, tp: TopicPartition, offset: i64) -> Option<Ack> {
        self.begin_all(tp, [offset])?.pop()
    }

    /// `begin` for messages of one partition, under one lock: an ack per
    /// offset, in order, or `None` if the partition is being let go.
    pub(crate) fn begin_all(
        self: &Arc<Self>,
        tp: TopicPartition,
        offsets: impl IntoIterator<Item = i64>,
    ) -> Option<Vec<Ack>> {
        let mut partitions = self.partitions.lock().expect("offsets lock");
        if partitions.closing.contains(&tp) {
            return None;
        }
        let mut offsets = offsets.into_iter().peekable();
        let Some(&first) = offsets.peek() else {
            return Some(Vec::new());
        };
        let state = partitions
            .offsets
            .entry(tp.clone())
            .or_insert_with(|| PartitionOffsets {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                in_flight: BTreeSet::new(),
                held: BTreeMap::new(),
                next: first,
                committed: None,
            });
        let acks: Vec<Ack> = offsets
            .map(|offset| {
                state.in_flight.insert(offset);
                state.next = state.next.max(offset + 1);
                Ack {
                    offsets: self.clone(),
                    tp: tp.clone(),
                    generation: state.generation,
                    offset,
                    settled: false,
                }
            })
            .collect();
        self.in_flight.fetch_add(acks.len(), Ordering::AcqRel);
        Some(acks)
    }

    fn settle(&self, ack: &mut Ack, finished: Option<Held>) {
        if ack.settled {
            return;
        }
        ack.settled = true;
        if let Some(held) = finished {
            // What is released is dropped outside the lock.
            let mut released = None;
            let mut partitions = self.partitions.lock().expect("offsets lock");
            match partitions.offsets.get_mut(&ack.tp) {
                Some(state) if state.generation == ack.generation => {
                    let advances = state.in_flight.first() == Some(&ack.offset);
                    state.in_flight.remove(&ack.offset);
                    state.held.insert(ack.offset, held);
                    match self.hold {
                        Hold::UntilWatermark => {
                            let watermark = state.watermark();
                            released = Some(state.release_below(watermark));
                        }
                        Hold::UntilCommitted => {
                            if advances && self.starving.load(Ordering::Acquire) > 0 {
                                self.commit_wanted.notify_one();
                            }
                        }
                    }
                }
                _ => drop(held),
            }
            drop(partitions);
            drop(released);
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Partitions whose watermark is ahead of their last confirmed commit,
    /// with the offset to commit (the next one to consume), leaving out
    /// those `skip` names.
    pub(crate) fn uncommitted(&self, skip: impl Fn(&str) -> bool) -> Vec<(TopicPartition, i64)> {
        let partitions = self.partitions.lock().expect("offsets lock");
        partitions
            .offsets
            .iter()
            .filter(|(tp, _)| !skip(&tp.0))
            .filter_map(|(tp, state)| {
                let watermark = state.watermark();
                (state.committed < Some(watermark)).then(|| (tp.clone(), watermark))
            })
            .collect()
    }

    /// The offset to commit for a partition, if any message of it was seen.
    pub(crate) fn watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let partitions = self.partitions.lock().expect("offsets lock");
        partitions.offsets.get(tp).map(PartitionOffsets::watermark)
    }

    /// A commit up to `offset` (exclusive) was confirmed: releases what the
    /// partition's finished messages below it hold.
    pub(crate) fn committed(&self, tp: &TopicPartition, offset: i64) {
        let released = self
            .partitions
            .lock()
            .expect("offsets lock")
            .offsets
            .get_mut(tp)
            .map(|state| {
                state.committed = state.committed.max(Some(offset));
                state.release_below(offset)
            });
        drop(released);
    }

    /// Forgets a partition (revoked or rewound): acks of messages received
    /// before no longer count, and what their finished messages hold is
    /// released.
    pub(crate) fn forget(&self, tp: &TopicPartition) {
        let forgotten = self
            .partitions
            .lock()
            .expect("offsets lock")
            .offsets
            .remove(tp);
        drop(forgotten);
    }

    /// Starts letting a partition go: from now on no message of it begins.
    pub(crate) fn close(&self, tp: &TopicPartition) {
        let mut partitions = self.partitions.lock().expect("offsets lock");
        partitions.closing.insert(tp.clone());
    }

    /// A partition is (again) this host's: it starts from a clean slate.
    pub(crate) fn open(&self, tp: &TopicPartition) {
        let mut partitions = self.partitions.lock().expect("offsets lock");
        partitions.closing.remove(tp);
        let forgotten = partitions.offsets.remove(tp);
        drop(partitions);
        drop(forgotten);
    }

    /// Messages of these partitions received and not yet finished.
    pub(crate) fn in_flight_of(&self, tps: &[TopicPartition]) -> usize {
        let partitions = self.partitions.lock().expect("offsets lock");
        tps.iter()
            .filter_map(|tp| partitions.offsets.get(tp))
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

    /// Resolves the next time the last message in flight settles (whatever
    /// settled before this was called does not count).
    pub(crate) async fn became_idle(&self) {
        self.idle.notified().await;
    }

    /// Asks for a commit soon: a lane is running short of slots, and only a
    /// commit gives back those of finished messages.
    pub(crate) fn want_commit(&self) {
        if self.hold == Hold::UntilCommitted {
            self.commit_wanted.notify_one();
        }
    }

    /// Marks a lane as waiting for slots until the returned guard drops.
    pub(crate) fn starving(&self) -> Starving<'_> {
        self.starving.fetch_add(1, Ordering::AcqRel);
        if self.hold == Hold::UntilCommitted {
            self.commit_wanted.notify_one();
        }
        Starving(self)
    }

    /// Resolves when a commit was asked for since the last time.
    pub(crate) async fn commit_wanted(&self) {
        self.commit_wanted.notified().await;
    }
}

impl Ack {
    /// Whether the message still counts: its partition was not forgotten
    /// (revoked or rewound) since it was received.
    pub(crate) fn is_current(&self) -> bool {
        let partitions = self.offsets.partitions.lock().expect("offsets lock");
        partitions
            .offsets
            .get(&self.tp)
            .is_some_and(|state| state.generation == self.generation)
    }

    /// The message is done: its outputs ran, it was dead-lettered, or
    /// there was nothing to do.
    pub(crate) fn finish(self) {
        self.finish_holding(Box::new(()));
    }

    /// The message is done; `held` is kept until it is released (see `Hold`).
    pub(crate) fn finish_holding(mut self, held: Held) {
        let offsets = self.offsets.clone();
        offsets.settle(&mut self, Some(held));
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let offsets = self.offsets.clone();
        offsets.settle(self, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn tp() -> TopicPartition {
        ("t".into(), 0)
    }

    /// Something to hold that says when it is released.
    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Held, Arc<AtomicBool>) {
        let released = Arc::new(AtomicBool::new(false));
        (Box::new(Flag(released.clone())), released)
    }

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let acks: Vec<Ack> = (10..15).map(|o| offsets.begin(tp(), o).unwrap()).collect();
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
        assert_eq!(offsets.uncommitted(|_| false), vec![(tp(), 15)]);
        assert!(
            offsets.uncommitted(|topic| topic == "t").is_empty(),
            "skipped"
        );
        offsets.committed(&tp(), 15);
        assert!(offsets.uncommitted(|_| false).is_empty(), "committed");
    }

    #[test]
    fn a_batch_begins_in_order_and_not_while_its_partition_is_let_go() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let acks = offsets.begin_all(tp(), [7, 8, 9]).unwrap();
        let begun: Vec<i64> = acks.iter().map(|a| a.offset).collect();
        assert_eq!(begun, [7, 8, 9]);
        assert_eq!(
            (offsets.in_flight(), offsets.watermark(&tp())),
            (3, Some(7))
        );
        let mut acks = acks.into_iter();
        acks.next().unwrap().finish();
        assert_eq!(offsets.watermark(&tp()), Some(8));
        offsets.close(&tp());
        assert!(offsets.begin_all(tp(), [10]).is_none());
        assert_eq!(offsets.in_flight(), 2, "nothing begun while closing");
    }

    #[test]
    fn idle_is_signalled_when_the_last_message_in_flight_settles() {
        use futures::FutureExt;
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let mut acks = offsets.begin_all(tp(), [1, 2]).unwrap().into_iter();
        let idle = offsets.became_idle();
        futures::pin_mut!(idle);
        assert!((&mut idle).now_or_never().is_none(), "two in flight");
        acks.next().unwrap().finish();
        assert!((&mut idle).now_or_never().is_none(), "one in flight");
        drop(acks);
        assert!(idle.now_or_never().is_some(), "none in flight");
    }

    #[test]
    fn an_ack_dropped_unfinished_holds_the_watermark() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let lost = offsets.begin(tp(), 3).unwrap();
        offsets.begin(tp(), 4).unwrap().finish();
        drop(lost);
        assert_eq!(offsets.watermark(&tp()), Some(3));
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn until_watermark_releases_once_everything_before_is_finished() {
        let offsets = Arc::new(Offsets::new(Hold::UntilWatermark));
        let first = offsets.begin(tp(), 0).unwrap();
        let second = offsets.begin(tp(), 1).unwrap();
        let (held, released) = flag();
        second.finish_holding(held);
        assert!(
            !released.load(Ordering::SeqCst),
            "held while offset 0 is unfinished"
        );
        first.finish();
        assert!(
            released.load(Ordering::SeqCst),
            "released once the watermark passed it"
        );
        assert_eq!(offsets.watermark(&tp()), Some(2));
    }

    #[test]
    fn until_committed_releases_only_what_a_commit_covers() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let acks: Vec<Ack> = (0..3).map(|o| offsets.begin(tp(), o).unwrap()).collect();
        let flags: Vec<Arc<AtomicBool>> = acks
            .into_iter()
            .map(|ack| {
                let (held, released) = flag();
                ack.finish_holding(held);
                released
            })
            .collect();
        let released = || {
            flags
                .iter()
                .map(|f| f.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        };
        assert_eq!(offsets.watermark(&tp()), Some(3));
        assert_eq!(released(), [false; 3], "finished but not committed");
        offsets.committed(&tp(), 2);
        assert_eq!(released(), [true, true, false]);
        offsets.committed(&tp(), 3);
        assert_eq!(released(), [true; 3]);
    }

    #[test]
    fn nothing_begins_in_a_closing_partition_until_it_is_opened_again() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let before = offsets.begin(tp(), 7).unwrap();
        offsets.close(&tp());
        assert!(offsets.begin(tp(), 8).is_none(), "left for the next owner");
        assert_eq!(
            offsets.in_flight_of(&[tp()]),
            1,
            "what began before still counts"
        );
        before.finish();
        offsets.forget(&tp());
        assert!(
            offsets.begin(tp(), 8).is_none(),
            "still closing after a forget"
        );
        offsets.open(&tp());
        assert!(offsets.begin(tp(), 8).is_some());
    }

    #[test]
    fn acks_from_before_a_forget_are_ignored() {
        let offsets = Arc::new(Offsets::new(Hold::UntilCommitted));
        let old = offsets.begin(tp(), 100).unwrap();
        offsets.forget(&tp());
        let new = offsets.begin(tp(), 50).unwrap();
        assert!(!old.is_current() && new.is_current());
        old.finish();
        assert_eq!(offsets.watermark(&tp()), Some(50));
        new.finish();
        assert_eq!(offsets.watermark(&tp()), Some(51));
    }
}
