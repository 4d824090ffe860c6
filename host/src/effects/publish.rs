//! The `publish` effect: an idempotent rdkafka producer, or a transactional
//! one for exactly-once routes. Records are enqueued in output order (so
//! per-partition order holds) and confirmed later; what goes wrong is
//! classified for the retry policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::EffectError;
use crate::config::Config;
use crate::contract::Publish;
use crate::policy::retry::Backoff;
use crate::source::offsets::TopicPartition;
use crate::telemetry::Delivered;
use crate::telemetry::client_logs::ProducerContext;
use crate::wire::Reason;

/// How long to wait for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);
/// Backoff of records that must never be given up on (dead letters).
const STUBBORN_INITIAL: Duration = Duration::from_millis(100);
const STUBBORN_MAX: Duration = Duration::from_secs(10);
/// How long one call to the transaction coordinator may block; a call that
/// times out is made again (the operation goes on in the background).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an open transaction may live before the broker aborts it (so a
/// crashed host's transaction does not hold read-committed consumers back
/// for long); overridable in `[kafka.producer]`.
const TRANSACTION_LIFETIME_MS: u64 = 10_000;

/// The producer every publish and dead letter goes through.
pub(crate) struct Publisher {
    producer: FutureProducer<ProducerContext>,
    /// `transaction.timeout.ms` of a transactional producer.
    lifetime: Duration,
}

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The host is not (or no longer) in the consumer group.
    #[error("not a member of the consumer group")]
    NotInGroup,
    /// The commit could not begin early enough in the transaction's
    /// lifetime: the broker may abort it meanwhile (it aborts transactions
    /// older than `transaction.timeout.ms`), so it is aborted here instead.
    #[error("transaction open for {0:?}: too close to transaction.timeout.ms to commit")]
    Expired(Duration),
    /// The coordinator refused or failed the commit.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Where a record landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Landed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Landed {
    /// `record`, landed here, as the run report keeps it.
    pub(crate) fn of(&self, record: &Publish) -> Delivered {
        Delivered {
            topic: record.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: record.key.clone(),
            payload: record.payload.clone(),
        }
    }
}

impl Publisher {
    /// An idempotent producer for `brokers`.
    pub(crate) fn connect(config: &Config, brokers: &str) -> KafkaResult<Arc<Publisher>> {
        Ok(Arc::new(Publisher {
            producer: client(config, brokers).create_with_context(ProducerContext::default())?,
            lifetime: Duration::ZERO,
        }))
    }

    /// A transactional producer for `brokers`, with its first transaction
    /// begun (blocks on the coordinator). Consumer group membership, sent
    /// with each transaction's offsets, is what fences a process that lost
    /// its partitions (KIP-447). The `transactional.id` is stable for a
    /// static group member (`group.instance.id`), so a restarted host aborts
    /// its crashed predecessor's open transaction at once; otherwise it is
    /// new for every process, as in Kafka Streams' exactly-once v2, and the
    /// broker aborts a crashed host's transaction after
    /// `transaction.timeout.ms`.
    pub(crate) fn transactional(config: &Config, brokers: &str) -> KafkaResult<Arc<Publisher>> {
        let id = match config.kafka.for_consumer().get("group.instance.id") {
            Some(instance) => format!("{}-{instance}", config.group_id),
            None => format!("{}-{:016x}", config.group_id, rand::random::<u64>()),
        };
        let mut client = client(config, brokers);
        let lifetime_ms = match config.kafka.for_producer().get("transaction.timeout.ms") {
            // The config check made sure it is a number.
            Some(ms) => ms.parse().unwrap_or(TRANSACTION_LIFETIME_MS),
            None => TRANSACTION_LIFETIME_MS,
        };
        client.set("transaction.timeout.ms", lifetime_ms.to_string());
        let producer: FutureProducer<ProducerContext> = client
            .set("transactional.id", &id)
            .create_with_context(ProducerContext::default())?;
        until_answered("init", || {
            producer.init_transactions(TRANSACTION_CALL_TIMEOUT)
        })?;
        producer.begin_transaction()?;
        tracing::info!(transactional_id = %id, "transactional producer ready");
        Ok(Arc::new(Publisher {
            producer,
            lifetime: Duration::from_millis(lifetime_ms),
        }))
    }

    /// Commits the open transaction with the consumed offsets (`positions`,
    /// the next offset to consume per partition) under the group's
    /// membership. Blocks on the coordinator.
    pub(crate) fn commit_transaction(
        &self,
        positions: &[(TopicPartition, i64)],
        group: &ConsumerGroupMetadata,
        began: Instant,
    ) -> Result<(), CommitError> {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        // The last moment the commit may begin and still be answered
        // before the broker's own deadline for the transaction.
        let deadline = began + self.lifetime.saturating_sub(TRANSACTION_CALL_TIMEOUT);
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .ok_or_else(|| CommitError::Expired(began.elapsed()))
        };
        loop {
            let timeout = left()?.min(TRANSACTION_CALL_TIMEOUT);
            match self
                .producer
                .send_offsets_to_transaction(&offsets, group, timeout)
            {
                Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                    tracing::warn!(%error, "transaction send offsets not answered yet; calling again");
                }
                result => break result?,
            }
        }
        left()?;
        // Once the commit is asked for, only its answer tells how it ended.
        Ok(until_answered("commit", || {
            self.producer.commit_transaction(TRANSACTION_CALL_TIMEOUT)
        })?)
    }

    /// Aborts the open transaction. Blocks.
    pub(crate) fn abort_transaction(&self) -> KafkaResult<()> {
        until_answered("abort", || {
            self.producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)
        })
    }

    /// Begins the next transaction (local; no broker round trip).
    pub(crate) fn begin_transaction(&self) -> KafkaResult<()> {
        self.producer.begin_transaction()
    }

    /// Hands a record to the producer, waiting only while its queue is full.
    pub(crate) async fn send(&self, record: &Publish) -> Result<DeliveryFuture, EffectError> {
        self.send_to(record, None).await
    }

    /// Likewise, to a given partition (else the key's).
    async fn send_to(
        &self,
        record: &Publish,
        partition: Option<i32>,
    ) -> Result<DeliveryFuture, EffectError> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for h in &record.headers {
                headers = headers.insert(KafkaHeader {
                    key: &h.name,
                    value: Some(&h.value),
                });
            }
            let mut out = FutureRecord::to(&record.topic)
                .payload(&record.payload)
                .headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key);
            }
            if let Some(partition) = partition {
                out = out.partition(partition);
            }
            match self.producer.send_result(out) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _)) => return Err(classify(&error)),
            }
        }
    }

    /// Sends a record and waits for the broker's answer.
    pub(crate) async fn publish(&self, record: &Publish) -> Result<Landed, EffectError> {
        delivered(self.send(record).await?).await
    }

    /// Publishes a record to a given partition and waits for the answer.
    pub(crate) async fn publish_to(
        &self,
        record: &Publish,
        partition: i32,
    ) -> Result<Landed, EffectError> {
        delivered(self.send_to(record, Some(partition)).await?).await
    }

    /// Publishes a record however long it takes (for dead letters, which
    /// have nowhere else to go).
    pub(crate) async fn publish_stubbornly(&self, record: &Publish) -> Landed {
        let mut backoff = Backoff::new(STUBBORN_INITIAL, STUBBORN_MAX);
        loop {
            match self.publish(record).await {
                Ok(landed) => return landed,
                Err(error) => {
                    tracing::error!(%error, topic = %record.topic, "dead letter not delivered; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Waits for every enqueued record to be delivered, up to `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "producer flush incomplete");
        }
    }
}

/// Makes a transaction call until it is answered: librdkafka marks errors
/// that only mean "not yet" (a timeout, the coordinator away) retriable,
/// and the operation goes on in the background meanwhile.
fn until_answered(what: &str, mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    loop {
        match call() {
            Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                tracing::warn!(%error, "transaction {what} not answered yet; calling again");
            }
            result => return result,
        }
    }
}

/// The producer settings every publisher shares: the user's, then sluice's.
fn client(config: &Config, brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    // A default the user may override: a broker back from an outage is
    // tried again within a second, as the Java client does. librdkafka's
    // default backs off to 10 s, which kept publishes failing (and breakers
    // probing) for up to 25 s after the broker was back.
    client.set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &config.kafka.for_producer() {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true");
    client
}

/// Waits for the broker's answer to an enqueued record.
pub(crate) async fn delivered(delivery: DeliveryFuture) -> Result<Landed, EffectError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok(Landed {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        Ok(Err((error, _))) => Err(classify(&error)),
        Err(_) => Err(EffectError::Transient(
            "producer dropped the delivery".into(),
        )),
    }
}

/// Kafka errors a retry cannot fix are permanent; the rest (timeouts, a
/// broker away, leadership moving, ...) are transient.
pub(crate) fn classify(error: &KafkaError) -> EffectError {
    use RDKafkaErrorCode as Code;
    let permanent = match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => Some(Reason::RecordTooLarge),
        Some(
            Code::InvalidMessage
            | Code::InvalidRecord
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::UnsupportedForMessageFormat
            | Code::InvalidArgument,
        ) => Some(Reason::PublishRejected),
        _ => None,
    };
    match permanent {
        Some(reason) => EffectError::Permanent {
            reason,
            detail: error.to_string(),
        },
        None => EffectError::Transient(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer_setting(extra: &str, key: &str) -> Option<String> {
        client(&Config::with_one_route(extra), "localhost:9092")
            .get(key)
            .map(str::to_owned)
    }

    #[test]
    fn a_returning_broker_is_retried_within_a_second_unless_the_user_says_otherwise() {
        let key = "reconnect.backoff.max.ms";
        assert_eq!(producer_setting("", key).as_deref(), Some("1000"));
        let own = "[kafka.producer]\n\"reconnect.backoff.max.ms\" = \"250\"";
        assert_eq!(producer_setting(own, key).as_deref(), Some("250"));
    }

    #[test]
    fn common_kafka_properties_reach_the_producer_and_its_own_override_them() {
        let common = "[kafka.common]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"shop\"\n";
        assert_eq!(
            producer_setting(common, "sasl.mechanism").as_deref(),
            Some("SCRAM-SHA-512")
        );
        let own = format!("{common}[kafka.producer]\n\"sasl.username\" = \"shop-producer\"\n");
        assert_eq!(
            producer_setting(&own, "sasl.username").as_deref(),
            Some("shop-producer")
        );
        assert_eq!(
            producer_setting(&own, "sasl.mechanism").as_deref(),
            Some("SCRAM-SHA-512")
        );
    }
}
