//! A dead-letter topic read back for `sluice redrive`: each record is a dead
//! letter (whose original message is restored from it), a marker a re-drive
//! left, or something sluice did not write.

use crate::contract::Message;
use crate::wire::Stamp;

/// What a record of a dead-letter topic is.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A dead letter.
    Letter(Letter),
    /// A re-drive's marker.
    Marker {
        /// Dead letters of the marker's key below this offset were re-driven.
        redriven_below: i64,
    },
    /// Not written by sluice, or not readable: why.
    Foreign(String),
}

/// A dead letter, with the message it holds restored.
#[derive(Debug)]
pub(crate) struct Letter {
    /// The message as it first arrived (topic, partition, offset, key,
    /// payload, its own headers, timestamp).
    pub(crate) message: Message,
    /// Why it was dead-lettered (`sluice-reason`, as written).
    pub(crate) reason: String,
    /// Whether it parked its key, or was held behind it.
    pub(crate) parks_key: bool,
}

/// Reads one record of a dead-letter topic.
pub(crate) fn entry(record: &Message) -> Entry {
    let headers = record.headers.iter();
    match Stamp::read(headers.map(|h| (h.name.as_str(), Some(h.value.as_slice())))) {
        Stamp::Marker {
            redriven_below: Some(redriven_below),
            ..
        } => Entry::Marker { redriven_below },
        Stamp::Marker { .. } => {
            Entry::Foreign("a marker without a valid sluice-redriven header".to_owned())
        }
        Stamp::Foreign => {
            Entry::Foreign("no sluice-stage header: not a sluice dead letter".to_owned())
        }
        Stamp::Letter {
            partition: None, ..
        }
        | Stamp::Letter { offset: None, .. } => Entry::Foreign(
            "its sluice-source-topic, -partition or -offset header is missing or bad".to_owned(),
        ),
        Stamp::Letter {
            own,
            partition: Some((topic, partition)),
            offset: Some(offset),
            timestamp,
            reason,
            parks_key,
        } => Entry::Letter(Letter {
            message: Message {
                topic,
                partition,
                offset,
                key: record.key.clone(),
                payload: record.payload.clone(),
                headers: record.headers[..own].to_vec(),
                // Dead letters written before the header existed: the
                // record's own time is the closest there is.
                timestamp: timestamp.unwrap_or(record.timestamp),
            },
            reason: reason.unwrap_or_else(|| "unknown".to_owned()),
            parks_key,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::Header;
    use crate::wire::{DeadLetter, Reason, Stage, dead_letter_record, marker};

    fn message() -> Message {
        Message {
            topic: "orders".into(),
            partition: 3,
            offset: 41,
            key: Some(b"o-1".to_vec()),
            payload: b"{}".to_vec(),
            // An upstream host's headers stay the message's own.
            headers: vec![
                Header::new("traceparent", "00-ab-cd-01"),
                Header::new("sluice-source-topic", "upstream"),
            ],
            timestamp: 1_700_000_000_123,
        }
    }

    pub(crate) fn as_record(publish: crate::contract::Publish) -> Message {
        Message {
            topic: publish.topic,
            partition: 0,
            offset: 7,
            key: publish.key,
            payload: publish.payload,
            headers: publish.headers,
            timestamp: 1_800_000_000_000,
        }
    }

    #[test]
    fn a_dead_letter_gives_back_the_message_it_holds() {
        let dead = DeadLetter {
            topic: "orders.dlq".into(),
            stage: Stage::Handle,
            reason: Reason::Rejected,
            detail: "no".into(),
            attempts: 1,
            parks_key: true,
        };
        let record = as_record(dead_letter_record(&message(), &dead, "h", "1.0.0"));
        let Entry::Letter(letter) = entry(&record) else {
            panic!("not a letter");
        };
        assert_eq!(letter.message, message());
        assert_eq!(letter.reason, "rejected");
        assert!(letter.parks_key);
    }

    #[test]
    fn markers_and_foreign_records_are_told_apart() {
        let mut record = as_record(crate::contract::Publish {
            topic: "orders.dlq".into(),
            key: Some(b"o-1".to_vec()),
            payload: Vec::new(),
            headers: marker(&message(), 12, Some(41)),
        });
        assert!(matches!(
            entry(&record),
            Entry::Marker { redriven_below: 12 }
        ));
        record.headers = vec![Header::new("x", "y")];
        let Entry::Foreign(why) = entry(&record) else {
            panic!("foreign taken for a letter");
        };
        assert!(why.contains("not a sluice dead letter"), "{why}");
        record.headers = vec![Header::new("sluice-stage", "handle")];
        assert!(matches!(entry(&record), Entry::Foreign(_)));
    }

    pub(crate) mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Header names, sluice's own among them: a message may carry any.
        fn header_name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("sluice-stage".to_owned()),
                Just("sluice-reason".to_owned()),
                Just("sluice-source-topic".to_owned()),
                Just("sluice-source-offset".to_owned()),
                Just("sluice-redriven".to_owned()),
                Just("sluice-unparks-key".to_owned()),
                Just("sluice-parks-key".to_owned()),
                "[a-z-]{1,12}",
            ]
        }

        pub(crate) fn any_message() -> impl Strategy<Value = Message> {
            (
                "[a-zA-Z0-9._-]{1,20}",
                0..1000i32,
                0..i64::MAX,
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(
                    (header_name(), proptest::collection::vec(any::<u8>(), 0..16)),
                    0..6,
                ),
                any::<u64>(),
            )
                .prop_map(
                    |(topic, partition, offset, key, payload, headers, timestamp)| Message {
                        topic,
                        partition,
                        offset,
                        key,
                        payload,
                        headers: headers
                            .into_iter()
                            .map(|(name, value)| Header { name, value })
                            .collect(),
                        timestamp,
                    },
                )
        }

        pub(crate) fn any_dead_letter() -> impl Strategy<Value = DeadLetter> {
            (
                prop_oneof![
                    Just(Stage::Decode),
                    Just(Stage::Handle),
                    Just(Stage::Decide),
                    Just(Stage::Interpret),
                    Just(Stage::Schedule),
                ],
                prop_oneof![
                    Just(Reason::Rejected),
                    Just(Reason::Trap),
                    Just(Reason::KeyParked)
                ],
                ".{0,40}",
                0..100u32,
                any::<bool>(),
            )
                .prop_map(|(stage, reason, detail, attempts, parks_key)| DeadLetter {
                    topic: "in.dlq".into(),
                    stage,
                    reason,
                    detail,
                    attempts,
                    parks_key,
                })
        }

        proptest! {
            /// Whatever a message carries, its dead letter gives it back
            /// whole, with the host's reason and parking, never a marker.
            #[test]
            fn every_dead_letter_gives_back_its_message(
                message in any_message(),
                dead in any_dead_letter(),
            ) {
                let record = as_record(dead_letter_record(&message, &dead, "h", "1.0.0"));
                let Entry::Letter(letter) = entry(&record) else {
                    panic!("read as something else: {:?}", entry(&record));
                };
                prop_assert_eq!(letter.message, message);
                prop_assert_eq!(letter.reason, dead.reason.as_str());
                prop_assert_eq!(letter.parks_key, dead.parks_key);
            }

            /// Any headers at all are read as something, never a panic.
            #[test]
            fn any_record_is_read_without_a_panic(message in any_message()) {
                let _ = entry(&message);
            }
        }
    }
}
