//! What happens when something fails: handler failures are deterministic, so
//! they are dead-lettered at once (or skipped, for invalid input when the
//! route says so); effect failures are transient, so they are retried with
//! exponential backoff and full jitter.

use std::time::Duration;

use crate::config::{OnInvalidInput, Route};
use crate::contract::{HandleError, Header, Message, Publish};
use crate::runtime::CallError;

/// Where in the pipeline a message failed (the `sluice-stage` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The handler could not decode the message.
    Decode,
    /// The handler refused, failed or trapped.
    Handle,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Handle => "handle",
        }
    }
}

/// A message to send to the dead-letter topic, and why.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) topic: String,
    pub(crate) stage: Stage,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// What to do with a message whose handler call failed.
#[derive(Debug)]
pub(crate) enum Disposition {
    DeadLetter(DeadLetter),
    Skip(String),
}

/// Decides the fate of a message whose handler failed. Never a retry: the
/// same input would fail the same way.
pub(crate) fn on_failure(route: &Route, error: &CallError) -> Disposition {
    let stage = match error {
        CallError::Handler(HandleError::InvalidInput(_)) => {
            if route.on_invalid_input == OnInvalidInput::Skip {
                return Disposition::Skip(error.to_string());
            }
            Stage::Decode
        }
        _ => Stage::Handle,
    };
    let detail = match error {
        CallError::Handler(e) => e.detail().to_owned(),
        CallError::Trap(t) => t.to_string(),
    };
    Disposition::DeadLetter(DeadLetter {
        topic: route.dead_letter_topic(),
        stage,
        reason: error.kind(),
        detail,
    })
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
        Header::new("sluice-reason", dead.reason),
        Header::new("sluice-detail", dead.detail.as_str()),
        Header::new("sluice-source-topic", message.topic.as_str()),
        Header::new("sluice-source-partition", message.partition.to_string()),
        Header::new("sluice-source-offset", message.offset.to_string()),
        Header::new("sluice-handler", handler),
        Header::new("sluice-handler-version", version),
    ]);
    Publish {
        topic: dead.topic.clone(),
        key: message.key.clone(),
        payload: message.payload.clone(),
        headers,
    }
}

/// Exponential backoff with full jitter: each delay is uniform in
/// `[0, min(max, initial × 2^attempt)]`, so retrying clients spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt += 1;
        ceiling.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Trap;

    fn route(on_invalid_input: OnInvalidInput) -> Route {
        Route {
            topic: "in".into(),
            handler: "h".into(),
            version: None,
            dead_letter_topic: None,
            on_invalid_input,
        }
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
            let Disposition::DeadLetter(dead) = on_failure(&r, &error) else {
                panic!("{error} should dead-letter");
            };
            assert_eq!((dead.stage.as_str(), dead.reason), (stage, reason));
            assert_eq!(dead.topic, "in.dlq");
        }
    }

    #[test]
    fn invalid_input_can_be_skipped_but_nothing_else() {
        let r = route(OnInvalidInput::Skip);
        let invalid = CallError::Handler(HandleError::InvalidInput("x".into()));
        assert!(matches!(on_failure(&r, &invalid), Disposition::Skip(_)));
        let rejected = CallError::Handler(HandleError::Rejected("x".into()));
        assert!(matches!(
            on_failure(&r, &rejected),
            Disposition::DeadLetter(_)
        ));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..30).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        // Full jitter: not all the same once the cap is reached.
        assert!(delays[10..].windows(2).any(|w| w[0] != w[1]));
    }
}
