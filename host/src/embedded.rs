//! The embedded broker behind `brokers = "embedded"`: librdkafka's mock
//! cluster, in process, speaking the real Kafka protocol on a local port, so
//! the demo needs no server and other processes (tests, a second host) can
//! connect to it. Its data lives in memory and ends with the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::contract::Message;

/// How long producing to the embedded broker may take to be confirmed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// The mock cluster's single broker.
const BROKER_ID: i32 = 1;

/// An in-process Kafka-protocol broker.
pub struct EmbeddedBroker {
    client: BaseProducer<FailureCount>,
    bootstrap: String,
}

/// Counts records the broker did not take, so `produce` can report them.
#[derive(Default)]
struct FailureCount(AtomicU64);

impl ClientContext for FailureCount {}

impl ProducerContext for FailureCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            tracing::error!(%error, "embedded broker refused a record");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster on a free local port.
    pub fn start() -> KafkaResult<EmbeddedBroker> {
        let client: BaseProducer<FailureCount> = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("enable.idempotence", "true")
            .create_with_context(FailureCount::default())?;
        let bootstrap = client
            .client()
            .mock_cluster()
            .ok_or(KafkaError::MockCluster(RDKafkaErrorCode::Fail))?
            .bootstrap_servers();
        // SAFETY: the mock cluster belongs to `client`, which is alive here;
        // the call only sets a number in the cluster's group settings.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr());
            if !cluster.is_null() {
                // By default the first group join waits 3 s for more members.
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            }
        }
        tracing::info!(%bootstrap, "embedded broker started");
        Ok(EmbeddedBroker { client, bootstrap })
    }

    /// The address clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (a no-op error for one that exists is returned as is).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> KafkaResult<()> {
        self.mock()?.create_topic(topic, partitions, 1)
    }

    /// Takes the broker off the network (connections refused) until
    /// `bring_up`, to test what clients do when it goes away.
    pub fn take_down(&self) -> KafkaResult<()> {
        self.mock()?.broker_down(BROKER_ID)
    }

    /// Puts the broker back after `take_down`.
    pub fn bring_up(&self) -> KafkaResult<()> {
        self.mock()?.broker_up(BROKER_ID)
    }

    fn mock(&self) -> KafkaResult<rdkafka::mocking::MockCluster<'_, FailureCount>> {
        self.client
            .client()
            .mock_cluster()
            .ok_or(KafkaError::MockCluster(RDKafkaErrorCode::Fail))
    }

    /// Produces messages to their topic and partition, in order, and waits
    /// until the broker has them all.
    pub fn produce<'m>(&self, messages: impl IntoIterator<Item = &'m Message>) -> KafkaResult<u64> {
        produce_with(&self.client, messages)
    }
}

/// Produces messages to their topic and partition on any broker, in order,
/// and waits until it has them all (seeding, tests, benchmarks).
pub fn produce<'m>(
    brokers: &str,
    messages: impl IntoIterator<Item = &'m Message>,
) -> KafkaResult<u64> {
    let client: BaseProducer<FailureCount> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create_with_context(FailureCount::default())?;
    produce_with(&client, messages)
}

fn produce_with<'m>(
    client: &BaseProducer<FailureCount>,
    messages: impl IntoIterator<Item = &'m Message>,
) -> KafkaResult<u64> {
    let failed_before = client.context().0.load(Ordering::Relaxed);
    let mut count = 0;
    for message in messages {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for h in &message.headers {
            headers = headers.insert(KafkaHeader {
                key: &h.name,
                value: Some(&h.value),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&message.topic)
            .partition(message.partition)
            .payload(&message.payload)
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        if message.timestamp > 0 {
            record = record.timestamp(message.timestamp as i64);
        }
        loop {
            match client.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    client.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((error, _)) => return Err(error),
            }
        }
        count += 1;
    }
    client.flush(FLUSH_TIMEOUT)?;
    if client.context().0.load(Ordering::Relaxed) != failed_before {
        return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
    }
    Ok(count)
}
