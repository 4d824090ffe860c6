//! A range of a topic, read once from start to end: what `sluice replay`
//! runs a handler on. Each partition is read from the first offset at or
//! after `from` to just before `to` (an offset, or the first message at or
//! after a time), then the reading stops; nothing is committed.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::contract::{Header, Message};

/// How long a request to the broker may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a range starts or ends in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first offset still on the broker (for `from`) or the end (for `to`).
    Edge,
    /// An offset.
    Offset(i64),
    /// The first message whose timestamp is at or after this time.
    Time(SystemTime),
    /// Where the reader's consumer group committed (else the beginning).
    Committed,
}

impl std::str::FromStr for Position {
    type Err = String;

    /// An offset (`1200`) or an RFC 3339 time (`2026-01-01T00:00:00Z`).
    fn from_str(text: &str) -> Result<Position, String> {
        if let Ok(offset) = text.parse::<i64>() {
            return Ok(Position::Offset(offset));
        }
        humantime::parse_rfc3339_weak(text)
            .map(Position::Time)
            .map_err(|_| format!("{text:?} is neither an offset nor an RFC 3339 time"))
    }
}

/// The messages of a topic between two positions, partition by partition.
pub struct TopicRange {
    consumer: BaseConsumer,
    /// Per partition still being read: where it ends.
    bounds: HashMap<i32, Bounds>,
    total: u64,
}

/// One partition's part of a range. A time the broker could not turn into
/// an offset (an old broker, or none at or after it) is applied to the
/// messages' timestamps as they are read.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The offset it ends before.
    end: i64,
    /// Skip messages until the first with a timestamp at or after this.
    from_time: Option<i64>,
    /// End at the first message with a timestamp at or after this.
    to_time: Option<i64>,
}

impl TopicRange {
    /// Looks the range up on the brokers and starts reading it.
    pub fn open(
        brokers: &str,
        topic: &str,
        from: Position,
        to: Position,
    ) -> KafkaResult<TopicRange> {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", brokers);
        Self::open_with(client.set("group.id", "sluice-replay"), topic, from, to)
    }

    /// Likewise, with these client settings (which name the group whose
    /// commits `Position::Committed` means).
    pub(crate) fn open_with(
        client: &ClientConfig,
        topic: &str,
        from: Position,
        to: Position,
    ) -> KafkaResult<TopicRange> {
        let consumer: BaseConsumer = client
            .clone()
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        let mut assignment = TopicPartitionList::new();
        let mut bounds = HashMap::new();
        let mut total = 0;
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
            let (start, from_time) = resolve(&consumer, topic, partition, from, low)?;
            let (end, to_time) = resolve(&consumer, topic, partition, to, high)?;
            let (start, end) = (start.max(low), end.min(high));
            if start < end {
                assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
                let partition_bounds = Bounds {
                    end,
                    from_time,
                    to_time,
                };
                bounds.insert(partition, partition_bounds);
                total += (end - start) as u64;
            }
        }
        consumer.assign(&assignment)?;
        Ok(TopicRange {
            consumer,
            bounds,
            total,
        })
    }

    /// Messages in the range at most (some may have been compacted away,
    /// or fall outside a time the broker could not look up).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the range holds nothing.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Where each partition's part ends (exclusive).
    pub(crate) fn ends(&self) -> HashMap<i32, i64> {
        self.bounds.iter().map(|(p, b)| (*p, b.end)).collect()
    }

    /// Ends each partition's part no later than `ends` says (a partition
    /// it does not name ends at once).
    pub(crate) fn end_at(&mut self, ends: &HashMap<i32, i64>) {
        self.bounds
            .retain(|partition, bounds| match ends.get(partition) {
                Some(end) => {
                    bounds.end = bounds.end.min(*end);
                    true
                }
                None => false,
            });
    }
}

/// The offset a position names in one partition (`edge` for
/// `Position::Edge`), and a time to filter by when the broker did not name
/// one (the filter then starts from `edge`).
fn resolve(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    position: Position,
    edge: i64,
) -> KafkaResult<(i64, Option<i64>)> {
    Ok(match position {
        Position::Edge => (edge, None),
        Position::Offset(offset) => (offset, None),
        Position::Committed => {
            let mut query = TopicPartitionList::new();
            query.add_partition(topic, partition);
            let committed = consumer.committed_offsets(query, TIMEOUT)?;
            match committed
                .find_partition(topic, partition)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(offset)) => (offset, None),
                _ => (edge, None),
            }
        }
        Position::Time(time) => {
            let ms = time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut query = TopicPartitionList::new();
            query.add_partition_offset(topic, partition, Offset::Offset(ms))?;
            let found = consumer.offsets_for_times(query, TIMEOUT)?;
            match found.find_partition(topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => (offset, None),
                // "None at or after it", or a broker that cannot say (the
                // embedded one): read and compare timestamps.
                _ => (edge, Some(ms)),
            }
        }
    })
}

impl Iterator for TopicRange {
    type Item = KafkaResult<Message>;

    fn next(&mut self) -> Option<KafkaResult<Message>> {
        let started = Instant::now();
        while !self.bounds.is_empty() {
            if started.elapsed() > TIMEOUT {
                return Some(Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                )));
            }
            let Some(polled) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let record = match polled {
                Ok(record) => record,
                Err(error) => return Some(Err(error)),
            };
            let (partition, offset) = (record.partition(), record.offset());
            let Some(bounds) = self.bounds.get_mut(&partition) else {
                continue;
            };
            let timestamp = record.timestamp().to_millis().unwrap_or(0);
            if offset >= bounds.end || bounds.to_time.is_some_and(|to| timestamp >= to) {
                self.bounds.remove(&partition);
                continue;
            }
            let before_start = bounds.from_time.is_some_and(|from| timestamp < from);
            if !before_start {
                // From the first message at or after `from` on, all are in.
                bounds.from_time = None;
            }
            if offset + 1 >= bounds.end {
                self.bounds.remove(&partition);
            }
            if before_start {
                continue;
            }
            let headers = record
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            return Some(Ok(Message {
                topic: record.topic().to_owned(),
                partition,
                offset,
                key: record.key().map(<[u8]>::to_vec),
                payload: record.payload().unwrap_or_default().to_vec(),
                headers,
                timestamp: record.timestamp().to_millis().map_or(0, |ms| ms as u64),
            }));
        }
        None
    }
}
