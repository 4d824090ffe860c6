//! The `publish` effect: an idempotent rdkafka producer. Records are enqueued
//! in output order (so per-partition order holds) and confirmed later; what
//! goes wrong is classified for the retry policy.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::EffectError;
use crate::config::Config;
use crate::contract::Publish;
use crate::policy::retry::Backoff;

/// How long to wait for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);
/// Backoff of records that must never be given up on (dead letters).
const STUBBORN_INITIAL: Duration = Duration::from_millis(100);
const STUBBORN_MAX: Duration = Duration::from_secs(10);

/// The producer every publish and dead letter goes through.
pub(crate) struct Publisher {
    producer: FutureProducer,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Landed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Publisher {
    /// An idempotent producer for `brokers`.
    pub(crate) fn connect(config: &Config, brokers: &str) -> KafkaResult<Arc<Publisher>> {
        let mut client = ClientConfig::new();
        for (key, value) in &config.kafka.producer {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true");
        Ok(Arc::new(Publisher {
            producer: client.create()?,
        }))
    }

    /// Hands a record to the producer, waiting only while its queue is full.
    pub(crate) async fn send(&self, record: &Publish) -> Result<DeliveryFuture, EffectError> {
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
fn classify(error: &KafkaError) -> EffectError {
    use RDKafkaErrorCode as Code;
    let permanent = match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => Some("record-too-large"),
        Some(
            Code::InvalidMessage
            | Code::InvalidRecord
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::UnsupportedForMessageFormat
            | Code::InvalidArgument,
        ) => Some("publish-rejected"),
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
