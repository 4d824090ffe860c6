//! `cancel-order` (the seeds' CancelOrderService): decide whether a cancel
//! request cancels the order. Input topic `order-cancel-requests`; output
//! topic `order-events`. The "already cancelled?" check needs the order's
//! state: that is the decider version, `cancel-order-decider`.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

mod rules;

use exports::sluice::handler::handle::Guest;
use rules::{CancelRequest, Invalid, OUTPUT_TOPIC, OrderEvent};
use sluice::handler::types::{HandleError, Header, LogEntry, LogLevel, Message, Output, Publish};

fn invalid(Invalid(detail): Invalid) -> HandleError {
    HandleError::InvalidInput(detail)
}

struct CancelOrder;

impl Guest for CancelOrder {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let request = CancelRequest::read(&msg.payload).map_err(invalid)?;
        let order_id = request.order_id().map_err(invalid)?;
        let (kind, reason) = request.verdict().map_err(invalid)?.published();
        let log = format!("order {order_id}: {kind} ({reason})");
        let event = OrderEvent {
            kind,
            order_id,
            reason,
        };
        Ok(vec![
            Output::Publish(Publish {
                topic: OUTPUT_TOPIC.into(),
                key: Some(order_id.as_bytes().to_vec()),
                payload: serde_json::to_vec(&event).expect("an order event always serializes"),
                headers: vec![Header {
                    name: "content-type".into(),
                    value: b"application/json".to_vec(),
                }],
            }),
            Output::Log(LogEntry {
                level: LogLevel::Info,
                text: log,
            }),
        ])
    }
}

export!(CancelOrder);
