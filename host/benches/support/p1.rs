//! P1's workload, shared by `p1_kafka_throughput` and `p1_floor`: its size,
//! the least a correct at-least-once Kafka loop must do (consume, handle,
//! produce, store the offset once delivered) on one task, and sluice's run
//! of the same work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::logic;

/// Messages per round.
pub const MESSAGES: usize = 200_000;
/// The mock broker keeps about 5 MB per partition and drops older records:
/// 200,000 messages of ~250 bytes need 16 partitions to stay whole.
pub const PARTITIONS: i32 = 16;

/// The baseline: the loop with the handler's logic compiled in.
pub async fn native_loop(brokers: &str, group: &str) -> Duration {
    run(brokers, group, MESSAGES, |msg| {
        let email = logic::handle(msg.payload().unwrap()).unwrap();
        (email.order_id.into_bytes(), email.payload)
    })
    .await
}

/// The same work as a sluice run, in process, until drained.
pub async fn sluice_run(brokers: &str, handlers: &std::path::Path, group: &str) -> Duration {
    let text = super::order_shipped_config(brokers, handlers, group, "");
    let (took, report) = super::timed_run(&text).await;
    assert_eq!(report.published as usize, MESSAGES);
    took
}

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
