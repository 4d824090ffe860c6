//! Sources of messages: a Kafka consumer-group member, or a JSONL file for
//! local runs and tests. Each yields deliveries: a message plus the ack that
//! moves its partition's watermark once the message is finished.

pub(crate) mod dead_letters;
pub mod jsonl;
pub mod kafka;
pub(crate) mod parked;
pub mod range;

use std::sync::Arc;

use crate::contract::Message;
use crate::schedule::offsets::Ack;

/// A received message and its acknowledgement.
pub(crate) struct Delivery {
    pub(crate) message: Arc<Message>,
    pub(crate) ack: Ack,
}
