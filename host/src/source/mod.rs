//! Sources of messages: a Kafka consumer-group member, or a JSONL file for
//! local runs and tests. Each yields deliveries: a message plus the ack that
//! moves its partition's watermark once the message is finished.

pub(crate) mod dead_letters;
pub mod jsonl;
pub mod kafka;
pub(crate) mod offsets;
pub(crate) mod parked;
pub mod range;

use std::sync::Arc;

use crate::contract::Message;
use offsets::Ack;

/// A received message and its acknowledgement.
pub(crate) struct Delivery {
    pub(crate) message: Arc<Message>,
    pub(crate) ack: Ack,
}

/// Why a lane pauses its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pause {
    /// Its messages in flight are at the cap, and have been for a while.
    InFlightCap,
    /// A message waits for an open circuit breaker.
    TargetDown,
    /// An operator paused its route (`POST /routes/{topic}/pause`).
    Operator,
    /// Handlers' outputs held in this host are at `max-in-flight-mib`.
    OutputBytes,
}

impl Pause {
    /// As logs say it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Pause::InFlightCap => "in-flight cap reached",
            Pause::TargetDown => "effect target down (circuit breaker open)",
            Pause::Operator => "route paused by an operator",
            Pause::OutputBytes => "outputs held at the host's max-in-flight-mib",
        }
    }
}
