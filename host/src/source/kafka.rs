//! The Kafka source: one consumer-group member subscribed to every routed
//! topic. Offsets are stored only when the watermark says every message below
//! them is finished (`enable.auto.offset.store=false`); librdkafka commits the
//! stored offsets periodically, and sluice commits them itself before
//! partitions are revoked and at shutdown.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::Delivery;
use crate::config::Config;
use crate::contract::{Header, Message};
use crate::schedule::offsets::{Offsets, TopicPartition};

/// How long a committed-offsets query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Consumer callbacks: keep the watermarks and the group's offsets in step
/// with partition assignment.
pub(crate) struct SourceContext {
    offsets: Arc<Offsets>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let partitions = partitions_of(revoked);
            tracing::info!(partitions = %list(&partitions), "partitions revoked");
            // Commit what is finished before another member takes over.
            store(consumer, &self.offsets, &partitions);
            commit(consumer, CommitMode::Sync);
            for tp in &partitions {
                self.offsets.forget(tp);
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let partitions = partitions_of(assigned);
                tracing::info!(partitions = %list(&partitions), "partitions assigned");
                for tp in &partitions {
                    self.offsets.forget(tp);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A consumer-group member feeding the pipeline.
pub(crate) struct KafkaSource {
    consumer: StreamConsumer<SourceContext>,
    offsets: Arc<Offsets>,
}

impl KafkaSource {
    /// Joins the group and subscribes to every routed topic.
    pub(crate) fn connect(
        config: &Config,
        brokers: &str,
        offsets: Arc<Offsets>,
    ) -> KafkaResult<KafkaSource> {
        let mut client = ClientConfig::new();
        // Defaults a user may override through [kafka.consumer].
        client
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (key, value) in &config.kafka.consumer {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval_ms.to_string(),
            )
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer<SourceContext> =
            client.create_with_context(SourceContext {
                offsets: offsets.clone(),
            })?;
        let topics: Vec<&str> = config.routes.iter().map(|r| r.topic.as_str()).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(brokers, group = %config.group_id, topics = %topics.join(","), "subscribed");
        Ok(KafkaSource { consumer, offsets })
    }

    /// The next message, registered as in flight.
    pub(crate) async fn recv(&self) -> KafkaResult<Delivery> {
        let borrowed = self.consumer.recv().await?;
        let message = owned(&borrowed);
        let ack = self
            .offsets
            .begin((message.topic.clone(), message.partition), message.offset);
        Ok(Delivery {
            message: Arc::new(message),
            ack,
        })
    }

    /// Stores the offsets whose watermark advanced, for the next commit.
    pub(crate) fn store_advanced(&self) {
        let advanced = self.offsets.advanced();
        if !advanced.is_empty() {
            store_offsets(&self.consumer, &advanced);
        }
    }

    /// Stores everything finished and commits it now.
    pub(crate) fn commit_now(&self) {
        self.store_advanced();
        commit(&self.consumer, CommitMode::Sync);
    }

    /// Whether every assigned partition is consumed and committed up to its
    /// end. Blocks on broker round trips.
    pub(crate) fn drained(&self) -> KafkaResult<bool> {
        self.commit_now();
        let assignment = self.consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(false);
        }
        let committed = self.consumer.committed_offsets(assignment, QUERY_TIMEOUT)?;
        let drained = committed.elements().iter().all(|element| {
            let Some((low, high)) = self.cached_watermarks(element.topic(), element.partition())
            else {
                return false;
            };
            let done = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            done >= high
        });
        // Lists from the consumer must go before the consumer does (see kafka.md).
        drop(committed);
        Ok(drained)
    }
}

impl KafkaSource {
    /// A partition's low and high watermarks as of the latest fetch response
    /// (no broker round trip; `fetch_watermarks` costs one per partition).
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1, -1);
        // SAFETY: the client handle is alive for `&self`, `topic` is a valid
        // C string for the call, and the out-pointers point at locals.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && low >= 0
            && high >= 0)
            .then_some((low, high))
    }
}

/// Copies a borrowed Kafka message into the host's message type.
fn owned(msg: &BorrowedMessage<'_>) -> Message {
    let headers = msg
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(<[u8]>::to_vec),
        payload: msg.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp: msg.timestamp().to_millis().map_or(0, |ms| ms.max(0) as u64),
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(|(topic, partition)| format!("{topic}[{partition}]"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Stores the watermarks of `partitions` (those that have one).
fn store<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    offsets: &Offsets,
    partitions: &[TopicPartition],
) {
    let watermarks: Vec<_> = partitions
        .iter()
        .filter_map(|tp| offsets.watermark(tp).map(|w| (tp.clone(), w)))
        .collect();
    store_offsets(consumer, &watermarks);
}

fn store_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    watermarks: &[(TopicPartition, i64)],
) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in watermarks {
        if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%error, topic, partition, "cannot list offset to store");
        }
    }
    if let Err(error) = consumer.store_offsets(&tpl) {
        // A partition revoked in the meantime refuses the store; its new owner
        // starts from the last commit, so nothing is lost.
        tracing::debug!(%error, "offsets not stored");
    }
}

fn commit<C: ConsumerContext>(consumer: &impl Consumer<C>, mode: CommitMode) {
    match consumer.commit_consumer_state(mode) {
        // Nothing new was stored since the last commit: that is success.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "commit failed; offsets will be committed later"),
    }
}
