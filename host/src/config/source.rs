//! Where messages come from: a file, the embedded broker, or Kafka (with extra properties).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::problem::{Checked, broken, check_range};

/// librdkafka properties sluice sets itself; overriding them would break its
/// delivery guarantees.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.idempotence",
    "transactional.id",
    "isolation.level",
];

/// Where messages come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Source {
    /// Read messages from this JSONL file instead of consuming the brokers.
    pub file: Option<PathBuf>,
}

/// The embedded broker (`brokers = "embedded"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Embedded {
    /// Partitions of each routed topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// JSONL files whose messages are produced into their topics at start.
    #[serde(default)]
    pub seed: Vec<PathBuf>,
}

impl Embedded {
    pub(super) fn validate(&self) -> Checked {
        check_range("embedded.partitions", self.partitions as u64, 1, 1000)
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            partitions: default_partitions(),
            seed: Vec::new(),
        }
    }
}

/// Extra librdkafka properties, passed through as given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaProperties {
    /// Properties for every client sluice makes (security settings: they
    /// reach the consumer, the producers, redrive's and the parked-key
    /// readers alike); `consumer` and `producer` override them.
    #[serde(default)]
    pub common: BTreeMap<String, String>,
    /// Properties for the consumer.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Properties for the producer.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

impl KafkaProperties {
    /// What every consumer gets: `common`, then `consumer` over it.
    pub fn for_consumer(&self) -> BTreeMap<String, String> {
        merged(&self.common, &self.consumer)
    }

    /// What every producer gets: `common`, then `producer` over it.
    pub fn for_producer(&self) -> BTreeMap<String, String> {
        merged(&self.common, &self.producer)
    }

    pub(super) fn validate(&self) -> Checked {
        for (section, props) in [
            ("kafka.common", &self.common),
            ("kafka.consumer", &self.consumer),
            ("kafka.producer", &self.producer),
        ] {
            if let Some(reserved) = props
                .keys()
                .find(|k| RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()))
            {
                return broken(
                    format!("{section}.\"{reserved}\""),
                    "is set by sluice itself and cannot be overridden",
                );
            }
        }
        // Exactly-once commits are timed against it (see effects::publish).
        if let Some(ms) = self.for_producer().get("transaction.timeout.ms") {
            // Named where it was set: [kafka.producer] overrides [kafka.common].
            let section = if self.producer.contains_key("transaction.timeout.ms") {
                "kafka.producer"
            } else {
                "kafka.common"
            };
            let key = format!("{section}.\"transaction.timeout.ms\"");
            let Ok(ms) = ms.parse() else {
                return broken(key, format!("{ms:?} is not a number of milliseconds"));
            };
            check_range(&key, ms, 1_000, 900_000)?;
        }
        Ok(())
    }
}

fn merged(
    common: &BTreeMap<String, String>,
    side: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all = common.clone();
    all.extend(side.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

fn default_partitions() -> i32 {
    4
}
