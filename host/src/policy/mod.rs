//! What happens when something fails: handler failures are deterministic, so
//! they are dead-lettered at once (or skipped, for invalid input when the
//! route says so); transient effect failures are retried (`retry`) behind a
//! circuit breaker per target (`breaker`); permanent ones, and retries that
//! run out, dead-letter the message at the `interpret` stage.

pub(crate) mod breaker;
pub(crate) mod retry;

use crate::config::{OnInvalidInput, Route};
use crate::contract::HandleError;
use crate::runtime::CallError;
use crate::wire::{DeadLetter, Reason, Stage};

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
