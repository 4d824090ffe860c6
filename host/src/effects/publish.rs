//! The `publish` effect: an idempotent rdkafka producer. Records are enqueued
//! in output order (so per-partition order holds) and confirmed later; a
//! failed delivery is sent again with backoff, never skipped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::contract::Publish;
use crate::policy::Backoff;

/// How long to wait for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

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

/// A record handed to the producer, not yet confirmed by the broker.
pub(crate) struct InFlight {
    publisher: Arc<Publisher>,
    record: Publish,
    delivery: DeliveryFuture,
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
    pub(crate) async fn enqueue(self: &Arc<Self>, record: Publish) -> InFlight {
        let delivery = self.send(&record).await;
        InFlight {
            publisher: self.clone(),
            record,
            delivery,
        }
    }

    async fn send(&self, record: &Publish) -> DeliveryFuture {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
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
                Ok(delivery) => return delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _)) => {
                    tracing::error!(%error, topic = %record.topic, "cannot enqueue record; retrying");
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

impl InFlight {
    /// Waits until the broker has the record, sending it again after failures.
    pub(crate) async fn confirmed(mut self) -> (Publish, Landed) {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            let error = match (&mut self.delivery).await {
                Ok(Ok(delivery)) => {
                    let landed = Landed {
                        partition: delivery.partition,
                        offset: delivery.offset,
                    };
                    return (self.record, landed);
                }
                Ok(Err((error, _))) => error.to_string(),
                Err(_) => "producer dropped the delivery".to_owned(),
            };
            tracing::warn!(%error, topic = %self.record.topic, "publish failed; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            self.delivery = self.publisher.send(&self.record).await;
        }
    }
}
