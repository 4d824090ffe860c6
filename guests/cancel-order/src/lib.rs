//! `cancel-order` (the seeds' CancelOrderService): decide whether a cancel
//! request cancels the order. Input topic `order-cancel-requests`; output
//! topic `order-events`. The "already cancelled?" check needs the order's
//! state and belongs to the decider version of this service.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use serde::{Deserialize, Serialize};
use sluice::handler::types::{HandleError, Header, LogEntry, LogLevel, Message, Output, Publish};

const OUTPUT_TOPIC: &str = "order-events";
/// A fraud score at or above this cancels the order.
const FRAUD_THRESHOLD: f64 = 0.5;

#[derive(Deserialize)]
struct CancelRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "orderId")]
    order_id: Option<String>,
    score: Option<f64>,
}

#[derive(Serialize)]
struct OrderEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "orderId")]
    order_id: &'a str,
    reason: String,
}

/// The outcome of a cancel request: cancelled, or refused with a reason.
enum Decision {
    Cancelled(String),
    CancelFailed(String),
}

fn decide(request: &CancelRequest) -> Result<Decision, HandleError> {
    let kind = request
        .kind
        .as_deref()
        .ok_or_else(|| HandleError::InvalidInput("missing type".into()))?;
    match kind {
        "CustomerCancelRequest" => Ok(Decision::Cancelled("customer-request".into())),
        "UnfulfillableOrder" => Ok(Decision::Cancelled("unfulfillable".into())),
        "FraudSuspected" => {
            let score = request
                .score
                .ok_or_else(|| HandleError::InvalidInput("FraudSuspected without score".into()))?;
            if !(0.0..=1.0).contains(&score) {
                return Err(HandleError::InvalidInput(format!(
                    "fraud score {score} outside 0..1"
                )));
            }
            if score >= FRAUD_THRESHOLD {
                Ok(Decision::Cancelled("fraud-suspected".into()))
            } else {
                Ok(Decision::CancelFailed(format!(
                    "fraud score {score} below threshold {FRAUD_THRESHOLD}"
                )))
            }
        }
        other => Err(HandleError::InvalidInput(format!(
            "unknown cancel request type {other:?}"
        ))),
    }
}

struct CancelOrder;

impl Guest for CancelOrder {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let request: CancelRequest = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandleError::InvalidInput(format!("not a cancel request: {e}")))?;
        let order_id = request
            .order_id
            .as_deref()
            .ok_or_else(|| HandleError::InvalidInput("missing orderId".into()))?;
        let (kind, reason) = match decide(&request)? {
            Decision::Cancelled(reason) => ("OrderCancelled", reason),
            Decision::CancelFailed(reason) => ("OrderCancelFailed", reason),
        };
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
