//! What happens when something fails: handler failures are deterministic, so
//! they are dead-lettered at once (or skipped, for invalid input when the
//! route says so); transient effect failures are retried (`retry`) behind a
//! circuit breaker per target (`breaker`); permanent ones, and retries that
//! run out, dead-letter the message at the `interpret` stage.

pub(crate) mod breaker;
pub(crate) mod retry;

use crate::config::{OnInvalidInput, Route};
use crate::contract::{HandleError, Header, Message, Publish};
use crate::runtime::{CallError, Trap};
use crate::source::parked::PARKS_KEY_HEADER;
use crate::telemetry::trace::TRACEPARENT;

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
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Handle => "handle",
            Stage::Decide => "decide",
            Stage::Interpret => "interpret",
            Stage::Schedule => "schedule",
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

/// What to do with a message whose handler call failed.
#[derive(Debug)]
pub(crate) enum Disposition {
    DeadLetter(DeadLetter),
    Skip(String),
}

/// Decides the fate of a message whose handler failed at `stage` (`handle`
/// or `decide`). Never a retry: the same input would fail the same way.
pub(crate) fn on_failure(route: &Route, error: &CallError, stage: Stage) -> Disposition {
    let stage = match error {
        CallError::Handler(HandleError::InvalidInput(_)) => {
            if route.on_invalid_input == OnInvalidInput::Skip {
                return Disposition::Skip(error.to_string());
            }
            Stage::Decode
        }
        _ => stage,
    };
    let detail = match error {
        CallError::Handler(e) => e.detail().to_owned(),
        CallError::Trap(t) => t.to_string(),
    };
    Disposition::DeadLetter(DeadLetter {
        topic: route.dead_letter_topic(),
        stage,
        reason: Reason::of(error),
        detail,
        attempts: 1,
        parks_key: false,
    })
}

/// Drops the headers only the host sets (`sluice-*` and `traceparent`,
/// in any case) from what a handler asked to send: the host adds its own,
/// exactly one of each, and a consumer must be able to trust them.
pub(crate) fn drop_host_headers(headers: &mut Vec<Header>) {
    headers.retain(|h| {
        let sluices = h
            .name
            .as_bytes()
            .get(..HOST_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(HOST_PREFIX.as_bytes()));
        !sluices && !h.name.eq_ignore_ascii_case(TRACEPARENT)
    });
}

/// The prefix of every header the host sets.
const HOST_PREFIX: &str = "sluice-";

/// Where a record sluice writes came from: `sluice-source-topic`,
/// `-partition` and `-offset`.
pub(crate) fn source_headers(message: &Message) -> [Header; 3] {
    [
        Header::new("sluice-source-topic", message.topic.as_str()),
        Header::new("sluice-source-partition", message.partition.to_string()),
        Header::new("sluice-source-offset", message.offset.to_string()),
    ]
}

/// Which handler version made a record: `sluice-handler` and
/// `sluice-handler-version`.
pub(crate) fn handler_headers(handler: &str, version: &str) -> [Header; 2] {
    [
        Header::new("sluice-handler", handler),
        Header::new("sluice-handler-version", version),
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
        Header::new("sluice-stage", dead.stage.as_str()),
        Header::new("sluice-reason", dead.reason.as_str()),
        Header::new("sluice-detail", dead.detail.as_str()),
        Header::new("sluice-attempts", dead.attempts.to_string()),
    ]);
    headers.extend(source_headers(message));
    // So that a re-drive gives the handler the clock it first saw.
    headers.push(Header::new(
        "sluice-source-timestamp",
        message.timestamp.to_string(),
    ));
    headers.extend(handler_headers(handler, version));
    if dead.parks_key {
        headers.push(Header::new(PARKS_KEY_HEADER, "true"));
    }
    Publish {
        topic: dead.topic.clone(),
        key: message.key.clone(),
        payload: message.payload.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::Trap;

    fn route(on_invalid_input: OnInvalidInput) -> Route {
        let mut route: Route = toml::from_str("topic = \"in\"\nhandler = \"h\"").unwrap();
        route.on_invalid_input = on_invalid_input;
        route
    }

    #[test]
    fn handler_failures_map_to_stage_and_reason() {
        let r = route(OnInvalidInput::DeadLetter);
        let cases = [
            (
                CallError::Handler(HandleError::InvalidInput("x".into())),
                "decode",
                "invalid-input",
            ),
            (
                CallError::Handler(HandleError::Rejected("x".into())),
                "handle",
                "rejected",
            ),
            (
                CallError::Handler(HandleError::Failed("x".into())),
                "handle",
                "failed",
            ),
            (
                CallError::Trap(Trap::Deadline(Duration::from_secs(1))),
                "handle",
                "deadline",
            ),
            (
                CallError::Trap(Trap::Guest("unreachable".into())),
                "handle",
                "trap",
            ),
        ];
        for (error, stage, reason) in cases {
            let Disposition::DeadLetter(dead) = on_failure(&r, &error, Stage::Handle) else {
                panic!("{error} should dead-letter");
            };
            assert_eq!((dead.stage.as_str(), dead.reason.as_str()), (stage, reason));
            assert_eq!(dead.topic, "in.dlq");
        }
    }

    #[test]
    fn invalid_input_can_be_skipped_but_nothing_else() {
        let r = route(OnInvalidInput::Skip);
        let invalid = CallError::Handler(HandleError::InvalidInput("x".into()));
        assert!(matches!(
            on_failure(&r, &invalid, Stage::Handle),
            Disposition::Skip(_)
        ));
        let rejected = CallError::Handler(HandleError::Rejected("x".into()));
        assert!(matches!(
            on_failure(&r, &rejected, Stage::Decide),
            Disposition::DeadLetter(DeadLetter {
                stage: Stage::Decide,
                ..
            })
        ));
    }
}
