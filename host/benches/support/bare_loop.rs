//! The least a correct at-least-once Kafka loop must do (consume, handle,
//! produce, store the offset once delivered), on one task, for the
//! benchmarks to compare sluice with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Consumes `messages` from `order-shipped` in group `group`, turns each into
/// a record with `handle` (its key and payload), produces it to
/// `email-native` with the headers sluice would set, and stores each
/// message's offset once its record is delivered; how long that took.
pub async fn run(
    brokers: &str,
    group: &str,
    messages: usize,
    mut handle: impl FnMut(&BorrowedMessage<'_>) -> (Vec<u8>, Vec<u8>),
) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .create()
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let started = Instant::now();
    consumer.subscribe(&["order-shipped"]).unwrap();
    let mut deliveries = FuturesUnordered::new();
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    let (mut received, mut delivered) = (0, 0);
    while delivered < messages {
        tokio::select! {
            msg = consumer.recv(), if received < messages => {
                let msg = msg.unwrap();
                let (key, payload) = handle(&msg);
                let id = format!("order-shipped/{}/{}/0", msg.partition(), msg.offset());
                let headers = OwnedHeaders::new()
                    .insert(KafkaHeader { key: "content-type", value: Some("application/json") })
                    .insert(KafkaHeader { key: "sluice-id", value: Some(&id) });
                let record = FutureRecord::to("email-native")
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
                let (partition, offset) = (msg.partition(), msg.offset());
                deliveries.push(async move { (delivery.await, partition, offset) });
                received += 1;
            }
            Some((result, partition, offset)) = deliveries.next() => {
                result.unwrap().unwrap();
                let next = next_offsets.entry(partition).or_default();
                *next = (*next).max(offset + 1);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset("order-shipped", partition, Offset::Offset(*next)).unwrap();
                consumer.store_offsets(&tpl).unwrap();
                delivered += 1;
            }
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    started.elapsed()
}
