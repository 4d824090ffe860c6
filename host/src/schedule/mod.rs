//! Ordering and flow control. Every partition gets a lane that reads its own
//! feed in batches and hands them to the pipeline in offset order; a busy
//! partition holds up only itself. Each message in flight holds a slot of two
//! caps, the host's and its partition's; a lane with no free slot pauses its
//! partition (rdkafka `pause`) until enough slots are free again, so a
//! backlog waits in the broker, not in memory. Which in-flight messages wait
//! for each other is the business of `chains`.

pub(crate) mod chains;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::error::KafkaResult;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::exactly_once;
use crate::policy::breaker::Waiting;
use crate::policy::retry::Backoff;
use crate::source::kafka::PartitionFeed;
use crate::source::offsets::{Starving, TopicPartition};
use crate::source::parked::ParkedKeys;
use crate::source::{Delivery, Pause};
use crate::workers::budget::ByteBudget;
use chains::{Chains, Parked, Unpark};

/// Messages a channel-fed lane holds before its source has to wait.
const CHANNEL_CAPACITY: usize = 256;
/// The most messages a lane hands to a worker at once.
const MAX_BATCH: usize = 128;
/// How long a lane may wait for slots before its partition is paused. A
/// pause drops librdkafka's prefetched messages and costs a refetch: worth
/// it for a lasting shortage (a slow or failing target, a backlog), not for
/// a commit's round trip. Meanwhile prefetch is bounded by librdkafka
/// (`queued.max.messages.kbytes`).
const PAUSE_AFTER: Duration = Duration::from_millis(100);
/// Backoff while the dead-letter topic cannot be read back.
const RESTORE_RETRY_INITIAL: Duration = Duration::from_millis(200);
const RESTORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// What a lane needs to know of its partition's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LaneSettings {
    /// The partition's cap of messages in flight.
    pub(crate) max_in_flight: usize,
    /// How many of its messages may run their effects at once, if capped.
    pub(crate) concurrency: Option<usize>,
    /// The dead-letter topic its parked keys are read back from, on a
    /// `park-key` route.
    pub(crate) parked_from: Option<String>,
}

/// Where lanes hand their batches (the pipeline): lanes know nothing of
/// what happens to a message after that, only that its ack comes back.
pub(crate) trait Sink: Send + Sync + 'static {
    /// The settings of a topic's lanes; `None` for a topic with no route.
    fn lane(&self, topic: &str) -> Option<LaneSettings>;

    /// Takes a batch of one partition's messages, in offset order, each
    /// with its slot; `epoch` is the lane's fetch epoch of the batch (see
    /// `PartitionState::rewind`). Resolves once the batch is under way.
    fn batch(
        self: Arc<Self>,
        partition: Arc<PartitionState>,
        batch: Vec<(Delivery, Slot)>,
        epoch: u64,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Where a lane's messages come from.
pub(crate) enum Feed {
    /// Deliveries pushed by a source loop (the file source).
    Channel(mpsc::Receiver<Delivery>),
    /// A Kafka partition's own queue.
    Partition(PartitionFeed),
}

impl Feed {
    /// Waits for at least one delivery, then takes whatever else is ready,
    /// up to `max`. Returns 0 once the feed is closed.
    async fn next_batch(&mut self, batch: &mut Vec<Delivery>, max: usize) -> usize {
        match self {
            Feed::Channel(queue) => queue.recv_many(batch, max).await,
            Feed::Partition(partition) => partition.next_batch(batch, max).await,
        }
    }

    /// The signal of the source taking the partition away, if it can.
    fn revocation(&self) -> Option<watch::Receiver<bool>> {
        match self {
            Feed::Channel(_) => None,
            Feed::Partition(partition) => Some(partition.revocation()),
        }
    }

    fn pause(&self, why: Pause) {
        if let Feed::Partition(partition) = self {
            partition.pause(why);
        }
    }

    fn resume(&self) {
        if let Feed::Partition(partition) = self {
            partition.resume();
        }
    }

    fn want_commit(&self) {
        if let Feed::Partition(partition) = self {
            partition.want_commit();
        }
    }

    /// While the guard lives, finished messages of any partition ask for
    /// commits: they are what gives slots back.
    fn starving(&self) -> Option<Starving<'_>> {
        match self {
            Feed::Channel(_) => None,
            Feed::Partition(partition) => Some(partition.starving()),
        }
    }

    /// The keys parked by earlier runs (none for a channel feed).
    async fn parked_keys(&self, dead_letters: &str) -> KafkaResult<ParkedKeys> {
        match self {
            Feed::Channel(_) => Ok(ParkedKeys::new()),
            Feed::Partition(partition) => {
                tokio::task::spawn_blocking(partition.parked_keys(dead_letters))
                    .await
                    .expect("reading parked keys does not panic")
            }
        }
    }

    fn rewind(&self, offset: i64) {
        if let Feed::Partition(partition) = self {
            partition.rewind(offset);
        }
    }
}

/// One message's share of the host's and its partition's in-flight caps,
/// given back once the message's offset is committed (or, with nothing to
/// commit, once every message before it is finished too).
pub(crate) struct Slot {
    _host: OwnedSemaphorePermit,
    _partition: OwnedSemaphorePermit,
}

/// What a partition's messages share while in flight.
pub(crate) struct PartitionState {
    pub(crate) tp: TopicPartition,
    pub(crate) chains: Arc<Chains>,
    pub(crate) parked: Parked,
    /// Messages waiting for an open circuit breaker: while any does, the
    /// partition is paused.
    pub(crate) waiting: Waiting,
    slots: Arc<Semaphore>,
    cap: usize,
    /// Turns to run effects, if the route caps its concurrency.
    turns: Option<Arc<Semaphore>>,
    rewind: Mutex<Rewind>,
    /// Wakes a lane waiting for messages when a rewind is asked for.
    rewound: Notify,
}

/// Where a partition's lane must fetch from again, and which fetches still
/// count: messages fetched before a rewind belong to an older epoch.
#[derive(Debug, Default)]
struct Rewind {
    epoch: u64,
    to: Option<i64>,
}

/// A message's turn to run its effects (see `PartitionState::turn`).
pub(crate) struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

impl PartitionState {
    /// Waits for a turn to run effects, when the route caps how many of a
    /// partition's messages run theirs at once.
    pub(crate) async fn turn(&self) -> Turn {
        let permit = match &self.turns {
            Some(turns) => Some(
                turns
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("turn semaphores are never closed"),
            ),
            None => None,
        };
        Turn { _permit: permit }
    }

    /// Whether messages fetched in `epoch` still count.
    pub(crate) fn is_current(&self, epoch: u64) -> bool {
        self.rewind.lock().expect("rewind lock").epoch == epoch
    }

    /// Before a fetch: carries out a rewind asked for, and returns the epoch
    /// the fetched messages will belong to. Both under one lock, so a fetch
    /// never counts for an epoch whose rewind it did not see.
    fn before_fetch(&self, feed: &Feed) -> u64 {
        let mut rewind = self.rewind.lock().expect("rewind lock");
        if let Some(offset) = rewind.to.take() {
            tracing::info!(topic = %self.tp.0, partition = self.tp.1, offset, "partition rewound");
            feed.rewind(offset);
        }
        rewind.epoch
    }
}

impl exactly_once::Rewind for PartitionState {
    /// Has the lane fetch again from `offset` (the transaction that held
    /// the messages from there on was aborted). Messages fetched before no
    /// longer count, and keys they parked are un-parked.
    fn rewind(&self, offset: i64) {
        let mut rewind = self.rewind.lock().expect("rewind lock");
        rewind.to = Some(rewind.to.map_or(offset, |to| to.min(offset)));
        rewind.epoch += 1;
        self.parked.unpark_from(offset);
        self.rewound.notify_one();
    }
}

/// What an operator may change in a running host (through the admin
/// server): which routes are paused, which parked keys are let go.
pub(crate) struct Controls {
    /// Per routed topic: whether its partitions are paused.
    paused: HashMap<String, watch::Sender<bool>>,
    /// The partitions with a lane here.
    partitions: Mutex<HashMap<TopicPartition, Weak<PartitionState>>>,
}

impl Controls {
    /// Controls for these routed topics, none paused.
    pub(crate) fn new(topics: impl IntoIterator<Item = String>) -> Self {
        Controls {
            paused: topics
                .into_iter()
                .map(|topic| (topic, watch::channel(false).0))
                .collect(),
            partitions: Mutex::default(),
        }
    }

    /// Pauses or resumes a route; false if the topic has no route.
    pub(crate) fn set_paused(&self, topic: &str, paused: bool) -> bool {
        let Some(flag) = self.paused.get(topic) else {
            return false;
        };
        if flag.send_replace(paused) != paused {
            tracing::info!(
                topic,
                paused,
                "route {}",
                if paused { "paused" } else { "resumed" }
            );
        }
        true
    }

    /// Whether a route is paused.
    pub(crate) fn is_paused(&self, topic: &str) -> bool {
        self.paused.get(topic).is_some_and(|flag| *flag.borrow())
    }

    /// Un-parks a key in a partition with a lane here (see `Parked::unpark`).
    pub(crate) fn unpark(&self, tp: &TopicPartition, key: Option<&[u8]>, through: i64) -> Unpark {
        match self.partition(tp) {
            Some(state) => state.parked.unpark(key, through),
            None => Unpark::NotAssigned,
        }
    }

    /// Keys parked per partition with a lane here, for the status page.
    pub(crate) fn parked_keys(&self) -> Vec<(TopicPartition, usize)> {
        let partitions = self.partitions.lock().expect("partitions lock");
        let mut parked: Vec<_> = partitions
            .iter()
            .filter_map(|(tp, state)| Some((tp.clone(), state.upgrade()?.parked.len())))
            .filter(|(_, keys)| *keys > 0)
            .collect();
        parked.sort();
        parked
    }

    /// Whether a key is parked in a partition with a lane here.
    pub(crate) fn is_parked(&self, tp: &TopicPartition, key: Option<&[u8]>) -> bool {
        self.partition(tp)
            .is_some_and(|state| state.parked.is_parked(key))
    }

    /// The state of a partition with a lane here.
    fn partition(&self, tp: &TopicPartition) -> Option<Arc<PartitionState>> {
        let partitions = self.partitions.lock().expect("partitions lock");
        partitions.get(tp).and_then(Weak::upgrade)
    }

    fn watch_paused(&self, topic: &str) -> Option<watch::Receiver<bool>> {
        self.paused.get(topic).map(watch::Sender::subscribe)
    }

    fn register(&self, state: &Arc<PartitionState>) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        partitions.retain(|_, state| state.strong_count() > 0);
        partitions.insert(state.tp.clone(), Arc::downgrade(state));
    }
}

/// A lane's handle: how to stop it, and how to feed it if it is channel-fed.
struct Lane {
    stop: watch::Sender<bool>,
    sender: Option<mpsc::Sender<Delivery>>,
}

/// One ordered lane per partition.
pub(crate) struct Lanes {
    sink: Arc<dyn Sink>,
    controls: Arc<Controls>,
    host_slots: Arc<Semaphore>,
    host_cap: usize,
    budget: Arc<ByteBudget>,
    lanes: HashMap<TopicPartition, Lane>,
    tasks: JoinSet<()>,
}

/// What closing lanes does with deliveries queued but not yet started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Handle them (the source is exhausted; they are all there is).
    Handle,
    /// Leave them unacknowledged, to be redelivered (a stop was requested).
    Leave,
}

impl Lanes {
    /// Lanes with at most `max_in_flight` messages in flight over all of
    /// them, which do not fetch while `budget` is full.
    pub(crate) fn new(
        sink: Arc<dyn Sink>,
        controls: Arc<Controls>,
        max_in_flight: usize,
        budget: Arc<ByteBudget>,
    ) -> Self {
        Lanes {
            sink,
            controls,
            host_slots: Arc::new(Semaphore::new(max_in_flight)),
            host_cap: max_in_flight,
            budget,
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// What an operator may change in these lanes.
    pub(crate) fn controls(&self) -> &Arc<Controls> {
        &self.controls
    }

    /// Whether the sink has a route for a topic.
    pub(crate) fn routes(&self, topic: &str) -> bool {
        self.sink.lane(topic).is_some()
    }

    /// Starts a lane for a partition on the given feed.
    pub(crate) fn open(&mut self, tp: TopicPartition, feed: Feed) {
        self.start(tp, feed, None);
    }

    fn start(&mut self, tp: TopicPartition, feed: Feed, sender: Option<mpsc::Sender<Delivery>>) {
        let settings = self.sink.lane(&tp.0);
        let cap = settings.as_ref().map_or(1, |s| s.max_in_flight);
        let concurrency = settings.as_ref().and_then(|s| s.concurrency);
        let parked_from = settings.and_then(|s| s.parked_from);
        let state = Arc::new(PartitionState {
            tp: tp.clone(),
            chains: Arc::default(),
            parked: Parked::default(),
            waiting: Waiting::default(),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            turns: concurrency.map(|n| Arc::new(Semaphore::new(n))),
            rewind: Mutex::default(),
            rewound: Notify::new(),
        });
        self.controls.register(&state);
        let paused = self.controls.watch_paused(&tp.0);
        let (stop, stopped) = watch::channel(false);
        if let Some(previous) = self.lanes.insert(tp, Lane { stop, sender }) {
            previous.stop.send_replace(true);
        }
        let lane = LaneTask {
            sink: self.sink.clone(),
            state,
            parked_from,
            host_slots: self.host_slots.clone(),
            host_cap: self.host_cap,
            budget: self.budget.clone(),
            paused,
        };
        self.tasks.spawn(lane.run(feed, stopped));
    }

    /// Stops a partition's lane after the batch it is on (the partition was
    /// revoked); what it has not started stays unacknowledged.
    pub(crate) fn stop(&mut self, tp: &TopicPartition) {
        if let Some(lane) = self.lanes.remove(tp) {
            lane.stop.send_replace(true);
        }
    }

    /// Queues a delivery on its partition's channel-fed lane (started on
    /// first use), waiting while that lane is full.
    pub(crate) async fn dispatch(&mut self, delivery: Delivery) {
        let tp = (delivery.message.topic.clone(), delivery.message.partition);
        let sender = match self.lanes.get(&tp).and_then(|lane| lane.sender.clone()) {
            Some(sender) => sender,
            None => {
                let (sender, queue) = mpsc::channel(CHANNEL_CAPACITY);
                self.start(tp, Feed::Channel(queue), Some(sender.clone()));
                sender
            }
        };
        if sender.send(delivery).await.is_err() {
            // Only possible if the lane task panicked; its deliveries stay
            // unacknowledged and are redelivered after a restart.
            tracing::error!("lane stopped unexpectedly; message left unacknowledged");
        }
    }

    /// Lets every lane finish the batch it is on (and, with `Queued::Handle`,
    /// everything its channel holds), then stops them. Partition-fed lanes
    /// never run dry, so they are only ever closed with `Queued::Leave`.
    pub(crate) async fn close(mut self, queued: Queued) {
        // A lane also stops when its stop sender is gone, so the senders
        // stay until every lane is done; channel senders go now so that
        // channel-fed lanes end once drained.
        let mut stops = Vec::with_capacity(self.lanes.len());
        for (_, lane) in self.lanes.drain() {
            if queued == Queued::Leave {
                lane.stop.send_replace(true);
            }
            stops.push(lane.stop);
        }
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "lane task failed");
            }
        }
        drop(stops);
    }
}

/// What a lane works with.
struct LaneTask {
    sink: Arc<dyn Sink>,
    state: Arc<PartitionState>,
    /// Where its parked keys are read back from (`park-key` routes).
    parked_from: Option<String>,
    host_slots: Arc<Semaphore>,
    host_cap: usize,
    budget: Arc<ByteBudget>,
    /// Whether an operator paused the route (none for unrouted topics).
    paused: Option<watch::Receiver<bool>>,
}

impl LaneTask {
    async fn run(mut self, mut feed: Feed, mut stop: watch::Receiver<bool>) {
        let mut revocation = feed.revocation();
        // librdkafka keeps a partition's pause across a rebalance: one
        // paused by a lane that was revoked meanwhile (a breaker open, slots
        // short) would never fetch again when assigned back.
        feed.resume();
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            _ = revoked(&mut revocation) => return,
            _ = self.restore_parked(&feed) => {}
        }
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut paused = self.paused.take();
        loop {
            if paused.as_ref().is_some_and(|p| *p.borrow()) {
                // Messages in flight finish; no more are fetched.
                feed.pause(Pause::Operator);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = revoked(&mut revocation) => break,
                    _ = until_paused(&mut paused, false) => {}
                }
                feed.resume();
            }
            if self.state.waiting.any() {
                // An effect target is down: fetching more would only add
                // messages waiting for it.
                feed.pause(Pause::TargetDown);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = revoked(&mut revocation) => break,
                    _ = self.state.waiting.until_none() => {}
                }
                feed.resume();
            }
            if self.budget.is_full() {
                // Fetching more would only wait for bytes to call handlers
                // with; the backlog waits in the broker instead.
                feed.want_commit();
                let room = self.budget.room_for(1);
                tokio::pin!(room);
                let waited = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = revoked(&mut revocation) => break,
                    waited = tokio::time::timeout(PAUSE_AFTER, &mut room) => waited,
                };
                if waited.is_err() {
                    feed.pause(Pause::OutputBytes);
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|stop| *stop) => break,
                        _ = revoked(&mut revocation) => break,
                        _ = &mut room => {}
                    }
                    feed.resume();
                }
            }
            let mut slots = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                _ = revoked(&mut revocation) => break,
                _ = self.state.waiting.until_some() => continue,
                _ = until_paused(&mut paused, true) => continue,
                slots = self.reserve(&feed) => slots,
            };
            let epoch = self.state.before_fetch(&feed);
            let received = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                _ = revoked(&mut revocation) => break,
                // Nothing was received yet: the batch starts over, rewound.
                _ = self.state.rewound.notified() => continue,
                _ = self.state.waiting.until_some() => continue,
                _ = until_paused(&mut paused, true) => continue,
                received = feed.next_batch(&mut batch, slots.len()) => received,
            };
            if received == 0 {
                break;
            }
            slots.truncate(received);
            let work = std::mem::take(&mut batch).into_iter().zip(slots).collect();
            self.sink
                .clone()
                .batch(self.state.clone(), work, epoch)
                .await;
        }
        // Deliveries still queued drop here with their acks unfinished.
    }

    /// Before the first message of a `park-key` route's partition: its keys
    /// parked by earlier runs, read back until that works.
    async fn restore_parked(&self, feed: &Feed) {
        let Some(dead_letters) = &self.parked_from else {
            return;
        };
        let mut backoff = Backoff::new(RESTORE_RETRY_INITIAL, RESTORE_RETRY_MAX);
        loop {
            match feed.parked_keys(dead_letters).await {
                Ok(keys) => {
                    if !keys.is_empty() {
                        tracing::info!(
                            topic = %self.state.tp.0,
                            partition = self.state.tp.1,
                            keys = keys.len(),
                            "parked keys restored from the dead-letter topic"
                        );
                    }
                    self.state.parked.restore(keys);
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, topic = %dead_letters, retry_in_ms = delay.as_millis() as u64, "cannot read parked keys back; the partition waits");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Slots for the next batch, at least one. With none free, waits until a
    /// quarter of its cap is free again (and a slot of the host's), so a lane
    /// at its cap does not go one message at a time; if that takes longer
    /// than `PAUSE_AFTER`, the partition is paused meanwhile.
    async fn reserve(&self, feed: &Feed) -> Vec<Slot> {
        let partition = &self.state.slots;
        // Finished messages give their slots back when a commit covers
        // them: ask for one before the slots run out.
        if partition.available_permits() < self.state.cap / 2
            || self.host_slots.available_permits() < self.host_cap / 2
        {
            feed.want_commit();
        }
        let wanted = MAX_BATCH
            .min(partition.available_permits())
            .min(self.host_slots.available_permits());
        if wanted > 0
            && let Some(slots) = self.try_slots(wanted)
        {
            return slots;
        }
        let _starving = feed.starving();
        let refill = (self.state.cap / 4).clamp(1, MAX_BATCH) as u32;
        let freed = async {
            let partition = partition.clone().acquire_many_owned(refill).await;
            let host = self.host_slots.clone().acquire_owned().await;
            let expect = "slot semaphores are never closed";
            (partition.expect(expect), host.expect(expect))
        };
        tokio::pin!(freed);
        let (partition_permits, first_host) =
            match tokio::time::timeout(PAUSE_AFTER, &mut freed).await {
                Ok(permits) => permits,
                Err(_) => {
                    feed.pause(Pause::InFlightCap);
                    let permits = freed.await;
                    feed.resume();
                    permits
                }
            };
        let more_host = (1..refill as usize).rev().find_map(|n| {
            self.host_slots
                .clone()
                .try_acquire_many_owned(n as u32)
                .ok()
        });
        let mut host_permits = first_host;
        if let Some(more) = more_host {
            host_permits.merge(more);
        }
        pair(partition_permits, host_permits)
    }

    fn try_slots(&self, n: usize) -> Option<Vec<Slot>> {
        let partition = self
            .state
            .slots
            .clone()
            .try_acquire_many_owned(n as u32)
            .ok()?;
        let host = self
            .host_slots
            .clone()
            .try_acquire_many_owned(n as u32)
            .ok()?;
        Some(pair(partition, host))
    }
}

/// Resolves once a route's pause is `value` (never for an unrouted topic).
async fn until_paused(paused: &mut Option<watch::Receiver<bool>>, value: bool) {
    match paused {
        Some(paused) => {
            let _ = paused.wait_for(|paused| *paused == value).await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves once a revocation signal fires (never without one).
async fn revoked(revocation: &mut Option<watch::Receiver<bool>>) {
    match revocation {
        Some(revoked) => {
            let _ = revoked.wait_for(|revoked| *revoked).await;
        }
        None => std::future::pending().await,
    }
}

/// Splits permits into one slot per message, as many as both allow; the
/// rest of the larger side is given back when the originals drop.
fn pair(mut partition: OwnedSemaphorePermit, mut host: OwnedSemaphorePermit) -> Vec<Slot> {
    let n = partition.num_permits().min(host.num_permits());
    (0..n)
        .map_while(|_| {
            Some(Slot {
                _partition: partition.split(1)?,
                _host: host.split(1)?,
            })
        })
        .collect()
}
