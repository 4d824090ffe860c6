//! Ordering and flow control. Every partition gets a lane that reads its own
//! feed in batches and hands them to the pipeline in offset order; a busy
//! partition holds up only itself. Each message in flight holds a slot of two
//! caps, the host's and its partition's; a lane with no free slot pauses its
//! partition (rdkafka `pause`) until enough slots are free again, so a
//! backlog waits in the broker, not in memory. Which in-flight messages wait
//! for each other is the business of `chains`.

pub(crate) mod chains;
pub(crate) mod offsets;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::pipeline::Pipeline;
use crate::source::Delivery;
use crate::source::kafka::PartitionFeed;
use chains::{Chains, Parked};
use offsets::TopicPartition;

/// Messages a channel-fed lane holds before its source has to wait.
const CHANNEL_CAPACITY: usize = 256;
/// The most messages a lane hands to a worker at once.
const MAX_BATCH: usize = 128;

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

    fn pause(&self) {
        if let Feed::Partition(partition) = self {
            partition.pause();
        }
    }

    fn resume(&self) {
        if let Feed::Partition(partition) = self {
            partition.resume();
        }
    }
}

/// One message's share of the host's and its partition's in-flight caps,
/// given back when the message is acknowledged.
pub(crate) struct Slot {
    _host: OwnedSemaphorePermit,
    _partition: OwnedSemaphorePermit,
}

/// What a partition's messages share while in flight.
pub(crate) struct PartitionState {
    pub(crate) chains: Arc<Chains>,
    pub(crate) parked: Parked,
    slots: Arc<Semaphore>,
    cap: usize,
}

/// A lane's handle: how to stop it, and how to feed it if it is channel-fed.
struct Lane {
    stop: watch::Sender<bool>,
    sender: Option<mpsc::Sender<Delivery>>,
}

/// One ordered lane per partition.
pub(crate) struct Lanes {
    pipeline: Arc<Pipeline>,
    host_slots: Arc<Semaphore>,
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
    /// Lanes with at most `max_in_flight` messages in flight over all of them.
    pub(crate) fn new(pipeline: Arc<Pipeline>, max_in_flight: usize) -> Self {
        Lanes {
            pipeline,
            host_slots: Arc::new(Semaphore::new(max_in_flight)),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Whether the pipeline has a route for a topic.
    pub(crate) fn routes(&self, topic: &str) -> bool {
        self.pipeline.route(topic).is_some()
    }

    /// Starts a lane for a partition on the given feed.
    pub(crate) fn open(&mut self, tp: TopicPartition, feed: Feed) {
        self.start(tp, feed, None);
    }

    fn start(&mut self, tp: TopicPartition, feed: Feed, sender: Option<mpsc::Sender<Delivery>>) {
        let cap = self
            .pipeline
            .route(&tp.0)
            .map_or(1, |route| route.route.max_in_flight);
        let state = Arc::new(PartitionState {
            chains: Arc::default(),
            parked: Parked::default(),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
        });
        let (stop, stopped) = watch::channel(false);
        if let Some(previous) = self.lanes.insert(tp, Lane { stop, sender }) {
            previous.stop.send_replace(true);
        }
        let lane = LaneTask {
            pipeline: self.pipeline.clone(),
            state,
            host_slots: self.host_slots.clone(),
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
    pipeline: Arc<Pipeline>,
    state: Arc<PartitionState>,
    host_slots: Arc<Semaphore>,
}

impl LaneTask {
    async fn run(self, mut feed: Feed, mut stop: watch::Receiver<bool>) {
        let mut revocation = feed.revocation();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let mut slots = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                _ = revoked(&mut revocation) => break,
                slots = self.reserve(&feed) => slots,
            };
            let received = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                _ = revoked(&mut revocation) => break,
                received = feed.next_batch(&mut batch, slots.len()) => received,
            };
            if received == 0 {
                break;
            }
            slots.truncate(received);
            let work = std::mem::take(&mut batch).into_iter().zip(slots).collect();
            self.pipeline.process(&self.state, work).await;
        }
        // Deliveries still queued drop here with their acks unfinished.
    }

    /// Slots for the next batch, at least one. With none free, the
    /// partition is paused until a quarter of its cap is free again, so a
    /// lane at its cap neither buffers nor pauses and resumes per message.
    async fn reserve(&self, feed: &Feed) -> Vec<Slot> {
        let partition = &self.state.slots;
        let wanted = MAX_BATCH
            .min(partition.available_permits())
            .min(self.host_slots.available_permits());
        if wanted > 0
            && let Some(slots) = self.try_slots(wanted)
        {
            return slots;
        }
        feed.pause();
        let refill = (self.state.cap / 4).clamp(1, MAX_BATCH) as u32;
        let partition_permits = partition
            .clone()
            .acquire_many_owned(refill)
            .await
            .expect("slot semaphores are never closed");
        let first_host = self
            .host_slots
            .clone()
            .acquire_owned()
            .await
            .expect("slot semaphores are never closed");
        feed.resume();
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
