// The cancel rules, shared by `cancel-order` (the handler) and
// `cancel-order-decider`; each maps `Invalid` to its own `invalid-input`.
// Each crate generates its bindings at its root, so `crate::sluice` is its own.

use serde::Serialize;
use serde_json::Value;

use crate::sluice::handler::types::{Header, LogEntry, LogLevel, Output, Publish};

const OUTPUT_TOPIC: &str = "order-events";
/// A fraud score at or above this cancels the order.
const FRAUD_THRESHOLD: f64 = 0.5;

/// A cancel request, its fields checked for type (absent and null are the
/// same).
pub struct CancelRequest {
    kind: Option<String>,
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
pub enum Verdict {
    Cancelled(String),
    CancelFailed(String),
}

/// Why a message is not a cancel request.
pub struct Invalid(pub String);

impl CancelRequest {
    /// Field by field, with messages of our own (not the JSON parser's), so
    /// the JavaScript and Python builds can say exactly the same.
    pub fn read(payload: &[u8]) -> Result<CancelRequest, Invalid> {
        let request: Value = serde_json::from_slice(payload)
            .map_err(|_| Invalid("not a cancel request: payload is not JSON".into()))?;
        let request = request
            .as_object()
            .ok_or_else(|| Invalid("not a cancel request: payload is not a JSON object".into()))?;
        let text = |field: &str| match request.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(Invalid(format!("{field} is not a string"))),
        };
        let kind = text("type")?;
        let order_id = text("orderId")?;
        let score = match request.get("score") {
            None | Some(Value::Null) => None,
            Some(Value::Number(score)) => score.as_f64(),
            Some(_) => return Err(Invalid("score is not a number".into())),
        };
        Ok(CancelRequest {
            kind,
            order_id,
            score,
        })
    }

    pub fn order_id(&self) -> Result<&str, Invalid> {
        self.order_id
            .as_deref()
            .ok_or_else(|| Invalid("missing orderId".into()))
    }

    /// Whether the request cancels the order, by its type and score alone.
    pub fn verdict(&self) -> Result<Verdict, Invalid> {
        let kind = self
            .kind
            .as_deref()
            .ok_or_else(|| Invalid("missing type".into()))?;
        match kind {
            "CustomerCancelRequest" => Ok(Verdict::Cancelled("customer-request".into())),
            "UnfulfillableOrder" => Ok(Verdict::Cancelled("unfulfillable".into())),
            "FraudSuspected" => {
                let score = self
                    .score
                    .ok_or_else(|| Invalid("FraudSuspected without score".into()))?;
                if !(0.0..=1.0).contains(&score) {
                    return Err(Invalid(format!("fraud score {score} outside 0..1")));
                }
                if score >= FRAUD_THRESHOLD {
                    Ok(Verdict::Cancelled("fraud-suspected".into()))
                } else {
                    Ok(Verdict::CancelFailed(format!(
                        "fraud score {score} below threshold {FRAUD_THRESHOLD}"
                    )))
                }
            }
            other => Err(Invalid(format!("unknown cancel request type \"{other}\""))),
        }
    }
}

impl Verdict {
    /// What is published about the order: the event to `order-events`
    /// (keyed by order id), then an `info` log.
    pub fn outputs(self, order_id: &str) -> Vec<Output> {
        let (kind, reason) = match self {
            Verdict::Cancelled(reason) => ("OrderCancelled", reason),
            Verdict::CancelFailed(reason) => ("OrderCancelFailed", reason),
        };
        let log = format!("order {order_id}: {kind} ({reason})");
        let event = OrderEvent {
            kind,
            order_id,
            reason,
        };
        vec![
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
        ]
    }
}
