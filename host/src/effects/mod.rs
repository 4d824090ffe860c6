//! Executing what handlers asked for: one executor per output kind. Effects
//! of one message run in output order; `publish` is confirmed asynchronously
//! so the next message of the lane can start while the broker acknowledges.

pub(crate) mod publish;

use std::sync::Arc;

use crate::contract::{Header, LogEntry, LogLevel, Message, Output, Publish};
use crate::policy::{self, DeadLetter};
use crate::runtime::Handler;
use crate::telemetry::{Origin, Record, Telemetry};
use publish::{InFlight, Publisher};

/// Runs outputs and dead letters, and records what they did.
pub(crate) struct Effects {
    publisher: Arc<Publisher>,
    telemetry: Arc<Telemetry>,
}

/// What a published record is for, to account for it once confirmed.
enum Purpose {
    Output(usize),
    DeadLetter(DeadLetter),
}

/// A message's effects that still await confirmation.
#[must_use = "a message is only finished once its pending effects are settled"]
pub(crate) struct Pending {
    origin: Option<Origin>,
    publishes: Vec<(InFlight, Purpose)>,
    telemetry: Arc<Telemetry>,
}

impl Effects {
    pub(crate) fn new(publisher: Arc<Publisher>, telemetry: Arc<Telemetry>) -> Self {
        Effects {
            publisher,
            telemetry,
        }
    }

    /// Runs a message's outputs in order: logs now, publishes enqueued.
    pub(crate) async fn execute(
        &self,
        message: &Message,
        handler: &dyn Handler,
        outputs: Vec<Output>,
    ) -> Pending {
        let mut publishes = Vec::new();
        for (index, output) in outputs.into_iter().enumerate() {
            match output {
                Output::Publish(publish) => {
                    let record = with_sluice_id(publish, message, &index.to_string());
                    let in_flight = self.publisher.enqueue(record).await;
                    publishes.push((in_flight, Purpose::Output(index)));
                }
                Output::Log(entry) => log(message, handler, &entry),
            }
        }
        self.pending(message, handler, publishes)
    }

    /// Sends a message to its dead-letter topic.
    pub(crate) async fn dead_letter(
        &self,
        message: &Message,
        handler: &dyn Handler,
        dead: DeadLetter,
    ) -> Pending {
        tracing::warn!(
            input = %message.id(),
            handler = handler.name(),
            version = handler.version(),
            stage = dead.stage.as_str(),
            reason = dead.reason,
            detail = %dead.detail,
            topic = %dead.topic,
            "dead-lettering message"
        );
        let record = policy::dead_letter_record(message, &dead, handler.name(), handler.version());
        let record = with_sluice_id(record, message, "dead-letter");
        let in_flight = self.publisher.enqueue(record).await;
        self.pending(
            message,
            handler,
            vec![(in_flight, Purpose::DeadLetter(dead))],
        )
    }

    /// Accounts for a message skipped by configuration.
    pub(crate) fn skip(&self, message: &Message, handler: &dyn Handler, detail: String) {
        tracing::info!(input = %message.id(), handler = handler.name(), %detail, "skipping message");
        self.telemetry.skipped();
        self.telemetry.keep(Record::Skipped {
            origin: Origin::new(message, handler.name(), handler.version()),
            detail,
        });
    }

    fn pending(
        &self,
        message: &Message,
        handler: &dyn Handler,
        publishes: Vec<(InFlight, Purpose)>,
    ) -> Pending {
        Pending {
            origin: self
                .telemetry
                .keeps_records()
                .then(|| Origin::new(message, handler.name(), handler.version())),
            publishes,
            telemetry: self.telemetry.clone(),
        }
    }
}

impl Pending {
    /// Waits until the broker confirmed every record, and accounts for them.
    pub(crate) async fn settle(self) {
        for (in_flight, purpose) in self.publishes {
            let (record, landed) = in_flight.confirmed().await;
            match &purpose {
                Purpose::Output(_) => self.telemetry.published(),
                Purpose::DeadLetter(_) => self.telemetry.dead_lettered(),
            }
            let Some(origin) = self.origin.clone() else {
                continue;
            };
            self.telemetry.keep(match purpose {
                Purpose::Output(output) => Record::Published {
                    origin,
                    output,
                    topic: record.topic,
                    partition: landed.partition,
                    offset: landed.offset,
                    key: record.key,
                    payload: record.payload,
                },
                Purpose::DeadLetter(dead) => Record::DeadLettered {
                    origin,
                    topic: dead.topic,
                    reason: dead.reason.to_owned(),
                    detail: dead.detail,
                },
            });
        }
    }
}

/// Adds the `sluice-id` header (`<topic>/<partition>/<offset>/<index>`), which
/// is the same on every redelivery so downstream consumers can drop duplicates.
fn with_sluice_id(mut record: Publish, message: &Message, index: &str) -> Publish {
    let id = format!(
        "{}/{}/{}/{index}",
        message.topic, message.partition, message.offset
    );
    record.headers.push(Header::new("sluice-id", id));
    record
}

/// The `log` effect: a `tracing` event tagged with handler and input.
fn log(message: &Message, handler: &dyn Handler, entry: &LogEntry) {
    let (name, version, input, text) =
        (handler.name(), handler.version(), message.id(), &entry.text);
    match entry.level {
        LogLevel::Trace => {
            tracing::trace!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Debug => {
            tracing::debug!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Info => {
            tracing::info!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Warn => {
            tracing::warn!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Error => {
            tracing::error!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
    }
}
