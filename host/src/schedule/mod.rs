//! Ordering and flow control. Every partition gets a lane: its messages are
//! handled one after another, in offset order, while lanes of different
//! partitions run concurrently. Lanes are bounded, so a slow partition makes
//! the source wait instead of buffering without limit.

pub(crate) mod offsets;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::pipeline::Pipeline;
use crate::source::Delivery;
use offsets::TopicPartition;

/// Messages a lane holds before the source has to wait.
const LANE_CAPACITY: usize = 256;

/// One ordered lane per partition.
pub(crate) struct Lanes {
    pipeline: Arc<Pipeline>,
    senders: HashMap<TopicPartition, mpsc::Sender<Delivery>>,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
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
            senders: HashMap::new(),
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Whether the pipeline has a route for a topic.
    pub(crate) fn routes(&self, topic: &str) -> bool {
        self.pipeline.routes(topic)
    }

    /// Queues a delivery on its partition's lane, waiting while the lane is full.
    pub(crate) async fn dispatch(&mut self, delivery: Delivery) {
        let Lanes {
            pipeline,
            senders,
            tasks,
            stop,
        } = self;
        let tp = (delivery.message.topic.clone(), delivery.message.partition);
        let sender = senders.entry(tp).or_insert_with(|| {
            let (sender, queue) = mpsc::channel(LANE_CAPACITY);
            tasks.spawn(lane(pipeline.clone(), queue, stop.subscribe()));
            sender
        });
        if sender.send(delivery).await.is_err() {
            // Only possible if the lane task panicked; its deliveries stay
            // unacknowledged and are redelivered after a restart.
            tracing::error!("lane stopped unexpectedly; message left unacknowledged");
        }
    }

    /// Lets every lane finish the message it is on (and, if asked, the ones
    /// it holds), then stops them.
    pub(crate) async fn close(mut self, queued: Queued) {
        if queued == Queued::Leave {
            self.stop.send_replace(true);
        }
        self.senders.clear();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "lane task failed");
            }
        }
    }
}

async fn lane(
    pipeline: Arc<Pipeline>,
    mut queue: mpsc::Receiver<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            delivery = queue.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        pipeline.process(delivery).await;
    }
    // Deliveries still queued drop here with their acks unfinished.
}
