//! What sluice writes on the records it produces and reads back: the
//! `sluice-*` headers of outputs, dead letters and re-drive markers. Every
//! one is named, written and read here, so that the writer (`policy`,
//! `effects`) and the readers (`source::dead_letters`, `source::parked`)
//! cannot disagree on a name or a value.

use std::str::FromStr;

use crate::contract::{HandleError, Header, Message, Publish};
use crate::effects::Failure;
use crate::runtime::{CallError, Trap};

/// The id of what a record came from: `topic/partition/offset` and, on a
/// dead letter, `/dead-letter`.
pub(crate) const ID: &str = "sluice-id";
/// The W3C trace context of a record (the host sets it; see
/// `telemetry::trace`).
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The prefix of every other header the host sets.
const PREFIX: &str = "sluice-";
const STAGE: &str = "sluice-stage";
const REASON: &str = "sluice-reason";
const DETAIL: &str = "sluice-detail";
const ATTEMPTS: &str = "sluice-attempts";
const SOURCE_TOPIC: &str = "sluice-source-topic";
const SOURCE_PARTITION: &str = "sluice-source-partition";
const SOURCE_OFFSET: &str = "sluice-source-offset";
const SOURCE_TIMESTAMP: &str = "sluice-source-timestamp";
/// On a timer's dead letter: the topic the timer was to publish to.
const TIMER_TOPIC: &str = "sluice-timer-topic";
/// On a timer's dead letter refused for its size: the payload's length.
const PAYLOAD_DROPPED: &str = "sluice-payload-dropped";
const HANDLER: &str = "sluice-handler";
const HANDLER_VERSION: &str = "sluice-handler-version";
/// On dead letters that park their key or are held behind it.
const PARKS_KEY: &str = "sluice-parks-key";
/// On a re-drive's marker that un-parks a key: the last source offset of
/// the key's dead letters that were re-driven.
const UNPARKS_KEY: &str = "sluice-unparks-key";
/// On a re-drive's marker: the key's dead letters in the marker's
/// partition below this offset were re-driven.
const REDRIVEN: &str = "sluice-redriven";

/// Where in the pipeline a message failed (the `sluice-stage` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The handler could not decode the message.
    Decode,
    /// The handler refused, failed or trapped.
    Handle,
    /// A decider's stream-id, fold or decide refused, failed or trapped, or
    /// its appends kept conflicting.
    Decide,
    /// An effect failed permanently, or its retries ran out.
    Interpret,
    /// Held behind an earlier dead letter of its key (`park-key`).
    Schedule,
    /// A due timer's record could not be published.
    Timer,
}

impl Stage {
    /// As the `sluice-stage` header, logs and metrics say it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Handle => "handle",
            Stage::Decide => "decide",
            Stage::Interpret => "interpret",
            Stage::Schedule => "schedule",
            Stage::Timer => "timer",
        }
    }
}

/// Why a message was dead-lettered: every value its `sluice-reason`
/// header can take, so that none is misspelled where it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// The handler said the input is not one it reads.
    InvalidInput,
    /// The handler refused the input.
    Rejected,
    /// The handler failed.
    Failed,
    /// A call ran past its deadline.
    Deadline,
    /// A call ran out of fuel.
    Fuel,
    /// An instance passed its memory cap.
    Memory,
    /// The guest's stack overflowed.
    Stack,
    /// A call returned more outputs than its cap.
    OutputCount,
    /// A call returned (or folded) more bytes than its cap.
    OutputBytes,
    /// An instance could not be created.
    Instantiate,
    /// The guest trapped.
    Trap,
    /// A publish to a topic name Kafka refuses.
    InvalidTopic,
    /// A publish to a topic no handler may publish to.
    TopicReserved,
    /// A publish to a topic the route does not allow.
    TopicNotAllowed,
    /// An effect an exactly-once route cannot undo.
    NotTransactional,
    /// An HTTP request the host will not send as asked.
    InvalidRequest,
    /// A timer id the host will not keep.
    InvalidTimer,
    /// An HTTP request to a host the route does not allow.
    HostNotAllowed,
    /// An HTTP status that retrying cannot change.
    HttpStatus,
    /// A record the broker refuses for its size.
    RecordTooLarge,
    /// A record the broker refuses otherwise.
    PublishRejected,
    /// An effect's retries ran out.
    RetriesExhausted,
    /// A decider's appends kept conflicting.
    Conflict,
    /// Held behind an earlier dead letter of its key.
    KeyParked,
}

impl Reason {
    /// The reason of a failed handler call.
    pub(crate) fn of(error: &CallError) -> Reason {
        match error {
            CallError::Handler(HandleError::InvalidInput(_)) => Reason::InvalidInput,
            CallError::Handler(HandleError::Rejected(_)) => Reason::Rejected,
            CallError::Handler(HandleError::Failed(_)) => Reason::Failed,
            CallError::Trap(trap) => match trap {
                Trap::Deadline(_) => Reason::Deadline,
                Trap::Fuel(_) => Reason::Fuel,
                Trap::Memory(_) => Reason::Memory,
                Trap::OutputCount { .. } => Reason::OutputCount,
                Trap::OutputBytes(_) => Reason::OutputBytes,
                Trap::Stack => Reason::Stack,
                Trap::Instantiate(_) => Reason::Instantiate,
                Trap::Guest(_) => Reason::Trap,
            },
        }
    }

    /// As the `sluice-reason` header, logs and metrics say it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidInput => "invalid-input",
            Reason::Rejected => "rejected",
            Reason::Failed => "failed",
            Reason::Deadline => "deadline",
            Reason::Fuel => "fuel",
            Reason::Memory => "memory",
            Reason::Stack => "stack",
            Reason::OutputCount => "output-count",
            Reason::OutputBytes => "output-bytes",
            Reason::Instantiate => "instantiate",
            Reason::Trap => "trap",
            Reason::InvalidTopic => "invalid-topic",
            Reason::TopicReserved => "topic-reserved",
            Reason::TopicNotAllowed => "topic-not-allowed",
            Reason::NotTransactional => "not-transactional",
            Reason::InvalidRequest => "invalid-request",
            Reason::InvalidTimer => "invalid-timer",
            Reason::HostNotAllowed => "host-not-allowed",
            Reason::HttpStatus => "http-status",
            Reason::RecordTooLarge => "record-too-large",
            Reason::PublishRejected => "publish-rejected",
            Reason::RetriesExhausted => "retries-exhausted",
            Reason::Conflict => "conflict",
            Reason::KeyParked => "key-parked",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to send to the dead-letter topic, and why.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) topic: String,
    pub(crate) stage: Stage,
    pub(crate) reason: Reason,
    pub(crate) detail: String,
    /// Attempts made at the failed effect (1 for handler failures).
    pub(crate) attempts: u32,
    /// Whether it parks its key, or is held behind it (`park-key`).
    pub(crate) parks_key: bool,
}

/// Drops the headers only the host sets (`sluice-*` and `traceparent`,
/// in any case) from what a handler asked to send: the host adds its own,
/// exactly one of each, and a consumer must be able to trust them.
pub(crate) fn drop_host_headers(headers: &mut Vec<Header>) {
    headers.retain(|h| {
        let sluices = h
            .name
            .as_bytes()
            .get(..PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(PREFIX.as_bytes()));
        !sluices && !h.name.eq_ignore_ascii_case(TRACEPARENT)
    });
}

/// An input's own id (`<topic>/<partition>/<offset>`), as the `sluice-id`s
/// of the records it made start.
pub(crate) fn input_id(message: &Message) -> String {
    format!("{}/{}/{}", message.topic, message.partition, message.offset)
}

/// Where a record sluice writes came from: `sluice-source-topic`,
/// `-partition` and `-offset`.
pub(crate) fn source_headers(message: &Message) -> [Header; 3] {
    [
        Header::new(SOURCE_TOPIC, message.topic.as_str()),
        Header::new(SOURCE_PARTITION, message.partition.to_string()),
        Header::new(SOURCE_OFFSET, message.offset.to_string()),
    ]
}

/// Which handler version made a record: `sluice-handler` and
/// `sluice-handler-version`.
pub(crate) fn handler_headers(handler: &str, version: &str) -> [Header; 2] {
    [
        Header::new(HANDLER, handler),
        Header::new(HANDLER_VERSION, version),
    ]
}

/// The dead-letter record: the original key, payload and headers, plus
/// headers saying where it came from and why it failed.
pub(crate) fn dead_letter_record(
    message: &Message,
    dead: &DeadLetter,
    handler: &str,
    version: &str,
) -> Publish {
    let mut headers = message.headers.clone();
    headers.extend([
        Header::new(STAGE, dead.stage.as_str()),
        Header::new(REASON, dead.reason.as_str()),
        Header::new(DETAIL, dead.detail.as_str()),
        Header::new(ATTEMPTS, dead.attempts.to_string()),
    ]);
    headers.extend(source_headers(message));
    // So that a re-drive gives the handler the clock it first saw.
    headers.push(Header::new(SOURCE_TIMESTAMP, message.timestamp.to_string()));
    headers.extend(handler_headers(handler, version));
    if dead.parks_key {
        headers.push(Header::new(PARKS_KEY, "true"));
    }
    Publish {
        topic: dead.topic.clone(),
        key: message.key.clone(),
        payload: message.payload.clone(),
        headers,
    }
}

/// The dead letter of a timer whose record could not be published: the
/// record as it would have been published, to the route's dead-letter
/// topic, with the stage, reason and detail, and where it was going. It has
/// no source headers, so a re-drive passes it by (there is no message to
/// run again). A record refused for its size goes without its payload
/// (`sluice-payload-dropped` says how many bytes it had), or its dead letter
/// would be refused too.
pub(crate) fn timer_dead_letter(record: Publish, topic: &str, failed: &Failure) -> Publish {
    let mut headers = record.headers;
    headers.extend([
        Header::new(STAGE, Stage::Timer.as_str()),
        Header::new(REASON, failed.reason.as_str()),
        Header::new(DETAIL, failed.detail.as_str()),
        Header::new(ATTEMPTS, failed.attempts.to_string()),
        Header::new(TIMER_TOPIC, record.topic),
    ]);
    let payload = match failed.reason {
        Reason::RecordTooLarge => {
            headers.push(Header::new(
                PAYLOAD_DROPPED,
                record.payload.len().to_string(),
            ));
            Vec::new()
        }
        _ => record.payload,
    };
    Publish {
        topic: topic.to_owned(),
        key: record.key,
        payload,
        headers,
    }
}

/// The headers of the marker a re-drive leaves after a key's dead letters
/// (see `Stamp::Marker`). `source` is the last of them (its source offset
/// is only informative).
pub(crate) fn marker(
    source: &Message,
    redriven_below: i64,
    unparks_through: Option<i64>,
) -> Vec<Header> {
    let mut headers = vec![Header::new(REDRIVEN, redriven_below.to_string())];
    headers.extend(source_headers(source));
    if let Some(through) = unparks_through {
        headers.push(Header::new(UNPARKS_KEY, through.to_string()));
    }
    headers
}

/// What sluice wrote on a record of a dead-letter topic, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// A dead letter.
    Letter {
        /// How many of the record's headers are the message's own (they
        /// come first).
        own: usize,
        /// Its source topic and partition, if readable.
        partition: Option<(String, i32)>,
        /// Its source offset, if readable.
        offset: Option<i64>,
        /// Its source timestamp, if it has one (older dead letters do not).
        timestamp: Option<u64>,
        /// Its `sluice-reason`, as written (a newer host may know more).
        reason: Option<String>,
        /// Whether it parked its key, or was held behind it.
        parks_key: bool,
    },
    /// A re-drive's marker.
    Marker {
        /// The source topic and partition of the key's dead letters.
        partition: Option<(String, i32)>,
        /// The key's dead letters below this offset were re-driven.
        redriven_below: Option<i64>,
        /// The key is un-parked through this source offset.
        unparks_through: Option<i64>,
    },
    /// Neither: sluice did not write it.
    Foreign,
}

impl Stamp {
    /// Reads a record's headers (name, value). A dead letter's own come
    /// after the message's (from the last `sluice-stage` on), and the
    /// message's may be anything, sluice's names included: a producer's
    /// `sluice-redriven` or `sluice-parks-key` must not make a dead letter
    /// read as a marker, or park a key. A marker's are all sluice's.
    pub(crate) fn read<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Stamp {
        let headers: Vec<_> = headers.into_iter().collect();
        let first_added = headers.iter().rposition(|(name, _)| *name == STAGE);
        let written = &headers[first_added.unwrap_or(0)..];
        let text = |name: &str| text(written, name);
        let partition = text(SOURCE_TOPIC).zip(number(written, SOURCE_PARTITION));
        let partition = partition.map(|(topic, p)| (topic.to_owned(), p));
        let has = |name: &str| written.iter().any(|(n, _)| *n == name);
        if has(REDRIVEN) || has(UNPARKS_KEY) {
            return Stamp::Marker {
                partition,
                redriven_below: number(written, REDRIVEN),
                unparks_through: number(written, UNPARKS_KEY),
            };
        }
        let Some(own) = first_added else {
            return Stamp::Foreign;
        };
        Stamp::Letter {
            own,
            partition,
            offset: number(written, SOURCE_OFFSET),
            timestamp: number(written, SOURCE_TIMESTAMP),
            reason: text(REASON).map(str::to_owned),
            parks_key: has(PARKS_KEY),
        }
    }
}

/// The last value of a header, if it is text.
fn text<'a>(headers: &[(&str, Option<&'a [u8]>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rfind(|(n, _)| *n == name)
        .and_then(|(_, value)| std::str::from_utf8((*value)?).ok())
}

/// The last value of a header, if it is a number.
fn number<T: FromStr>(headers: &[(&str, Option<&[u8]>)], name: &str) -> Option<T> {
    text(headers, name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_sluice_did_not_write_read_as_foreign() {
        let headers = [("sluice-source-topic", Some(&b"t"[..]))];
        assert_eq!(Stamp::read(headers), Stamp::Foreign);
    }
}
