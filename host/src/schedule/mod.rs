//! Ordering and flow control. Every partition gets a lane: its messages are
//! handled in offset order, in batches, while lanes of different partitions
//! run concurrently. A lane reads its own feed, so a busy partition holds up
//! only itself: a Kafka partition's queue simply fills up to librdkafka's
//! prefetch limit, and a file source waits on that partition's channel.

pub(crate) mod offsets;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::pipeline::Pipeline;
use crate::source::Delivery;
use crate::source::kafka::PartitionFeed;
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
    /// up to `max`. Under load batches grow; when idle each message goes
    /// alone at once. Returns 0 once the feed is closed.
    async fn next_batch(&mut self, batch: &mut Vec<Delivery>, max: usize) -> usize {
        match self {
            Feed::Channel(queue) => queue.recv_many(batch, max).await,
            Feed::Partition(partition) => partition.next_batch(batch, max).await,
        }
    }
}

/// A lane's handle: how to stop it, and how to feed it if it is channel-fed.
struct Lane {
    stop: watch::Sender<bool>,
    sender: Option<mpsc::Sender<Delivery>>,
}

/// One ordered lane per partition.
pub(crate) struct Lanes {
    pipeline: Arc<Pipeline>,
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
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        Lanes {
            pipeline,
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Whether the pipeline has a route for a topic.
    pub(crate) fn routes(&self, topic: &str) -> bool {
        self.pipeline.routes(topic)
    }

    /// Starts a lane for a partition on the given feed.
    pub(crate) fn open(&mut self, tp: TopicPartition, feed: Feed) {
        self.start(tp, feed, None);
    }

    fn start(&mut self, tp: TopicPartition, feed: Feed, sender: Option<mpsc::Sender<Delivery>>) {
        let (stop, stopped) = watch::channel(false);
        if let Some(previous) = self.lanes.insert(tp, Lane { stop, sender }) {
            previous.stop.send_replace(true);
        }
        self.tasks.spawn(lane(self.pipeline.clone(), feed, stopped));
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

async fn lane(pipeline: Arc<Pipeline>, mut feed: Feed, mut stop: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            received = feed.next_batch(&mut batch, MAX_BATCH) => received,
        };
        if received == 0 {
            break;
        }
        pipeline.process(std::mem::take(&mut batch)).await;
    }
    // Deliveries still queued drop here with their acks unfinished.
}
