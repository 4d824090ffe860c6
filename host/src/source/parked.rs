//! Keys parked by earlier runs (`on-dead-letter = "park-key"`), read back
//! from the dead-letter topic when a partition is assigned: parking must
//! outlive the process that parked a key, or a restart or rebalance would let
//! the key's later messages overtake its dead letters. A key counts as parked
//! from the first of its partition's dead letters marked `sluice-parks-key`
//! (aborted transactions' dead letters do not count: read committed), until
//! a later marker of `sluice redrive` un-parks it (`sluice-unparks-key`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::source::offsets::TopicPartition;
use crate::wire::Stamp;

/// How long reading the dead-letter topic back may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A parked key: the source offset that parked it, and the last one held
/// behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParkedKey {
    pub(crate) at: i64,
    pub(crate) last: i64,
}

/// A partition's parked keys.
pub(crate) type ParkedKeys = HashMap<Option<Vec<u8>>, ParkedKey>;

/// The settings of a reader of dead-letter topics, from the consumer's: it
/// joins no group and commits nothing.
pub(crate) fn reader(consumer: &ClientConfig, group: &str) -> ClientConfig {
    let mut reader = consumer.clone();
    reader.remove("group.instance.id");
    reader
        .set("group.id", format!("{group}-parked-keys"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    reader
}

/// Reads `dead_letters` from start to end (blocks) and returns the keys its
/// records park in `source`. A topic that does not exist parks nothing.
pub(crate) fn read(
    reader: &ClientConfig,
    dead_letters: &str,
    source: &TopicPartition,
) -> KafkaResult<ParkedKeys> {
    let consumer: BaseConsumer = reader.create()?;
    let metadata = consumer.fetch_metadata(Some(dead_letters), READ_TIMEOUT)?;
    let Some(topic) = metadata.topics().first() else {
        return Ok(ParkedKeys::new());
    };
    match topic.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(ParkedKeys::new()),
        Some(code) => return Err(KafkaError::MetadataFetch(code)),
    }
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment.add_partition_offset(dead_letters, partition.id(), Offset::Beginning)?;
    }
    let partitions = topic.partitions().len();
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut parked = ParkedKeys::new();
    let mut at_end = HashSet::new();
    while at_end.len() < partitions {
        if started.elapsed() > READ_TIMEOUT {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(error),
            Some(Ok(record)) => {
                at_end.remove(&record.partition());
                let key = record.key().map(<[u8]>::to_vec);
                match marked(&record, source) {
                    Some(Mark::Parks(offset)) => {
                        let known = parked.entry(key).or_insert(ParkedKey {
                            at: offset,
                            last: offset,
                        });
                        known.at = known.at.min(offset);
                        known.last = known.last.max(offset);
                    }
                    Some(Mark::Unparks(through))
                        if parked.get(&key).is_some_and(|p| p.last <= through) =>
                    {
                        parked.remove(&key);
                    }
                    Some(Mark::Unparks(_)) | None => {}
                }
            }
        }
    }
    Ok(parked)
}

/// What a record of a dead-letter topic says of its key's parking.
enum Mark {
    /// A dead letter that parks its key (or is held behind it), at this
    /// source offset.
    Parks(i64),
    /// A re-drive's marker: the key's dead letters through this source
    /// offset were re-driven.
    Unparks(i64),
}

/// What a record of a dead-letter topic says of parking in `source`.
fn marked(record: &impl Message, source: &TopicPartition) -> Option<Mark> {
    let headers = record.headers()?;
    match Stamp::read(headers.iter().map(|h| (h.key, h.value))) {
        Stamp::Marker {
            partition: Some(partition),
            unparks_through: Some(through),
            ..
        } if partition == *source => Some(Mark::Unparks(through)),
        Stamp::Letter {
            partition: Some(partition),
            offset: Some(offset),
            parks_key: true,
            ..
        } if partition == *source => Some(Mark::Parks(offset)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;
    use crate::source::dead_letters::tests::properties::{any_dead_letter, any_message};
    use crate::wire::dead_letter_record;

    proptest! {
        /// A dead letter parks its key exactly when the host said so,
        /// whatever headers the message it holds came with (a producer's
        /// `sluice-parks-key` or `sluice-unparks-key` among them).
        #[test]
        fn a_dead_letter_parks_its_key_only_when_the_host_said_so(
            message in any_message(),
            dead in any_dead_letter(),
        ) {
            let record = dead_letter_record(&message, &dead, "h", "1.0.0");
            let headers = record.headers.iter().fold(OwnedHeaders::new(), |headers, h| {
                headers.insert(Header { key: &h.name, value: Some(&h.value) })
            });
            let record = OwnedMessage::new(
                Some(record.payload),
                record.key,
                record.topic,
                Timestamp::NotAvailable,
                0,
                0,
                Some(headers),
            );
            let source = (message.topic.clone(), message.partition);
            match marked(&record, &source) {
                Some(Mark::Parks(offset)) => {
                    prop_assert!(dead.parks_key);
                    prop_assert_eq!(offset, message.offset);
                }
                Some(Mark::Unparks(_)) => prop_assert!(false, "a dead letter read as a marker"),
                None => prop_assert!(!dead.parks_key),
            }
        }
    }
}
