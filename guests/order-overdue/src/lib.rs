//! `order-overdue`: raise `OrderOverdue` for an order not shipped in time.
//! Input topic `orders`; output topic `order-alerts`, through one timer per
//! order (contract 0.4): placing the order schedules it, a delay pushes it
//! back, shipping or cancelling the order cancels it. The handler keeps no
//! state: the pending timer, held by the host, is the state.
//!
//! This is the reference the JavaScript and Python builds follow
//! (tests/vectors/order-overdue.jsonl checks them byte for byte).

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use serde::Serialize;
use serde_json::{Map, Value};
use sluice::handler::types::{
    HandleError, Header, LogEntry, LogLevel, Message, Output, Publish, Schedule,
};

/// Topic the overdue alerts are published to.
const OUTPUT_TOPIC: &str = "order-alerts";
/// The longest deadline an event may set: a year.
const MAX_WITHIN_SECONDS: u64 = 31_536_000;

/// What the timer publishes when it fires.
#[derive(Serialize)]
struct Overdue<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "orderId")]
    order_id: &'a str,
    /// The event that set the deadline.
    after: &'a str,
    #[serde(rename = "withinSeconds")]
    within_seconds: u64,
}

fn invalid(why: impl Into<String>) -> HandleError {
    HandleError::InvalidInput(why.into())
}

/// A required, non-empty string field.
fn text<'a>(event: &'a Map<String, Value>, field: &str) -> Result<&'a str, HandleError> {
    match event.get(field) {
        None | Some(Value::Null) => Err(invalid(format!("missing {field}"))),
        Some(Value::String(text)) if text.is_empty() => Err(invalid(format!("{field} is empty"))),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(invalid(format!("{field} is not a string"))),
    }
}

/// `shipWithinSeconds`: a JSON number with no fractional part, 1 to a year.
fn within_seconds(event: &Map<String, Value>) -> Result<u64, HandleError> {
    match event.get("shipWithinSeconds").and_then(Value::as_f64) {
        Some(n) if n.fract() == 0.0 && (1.0..=MAX_WITHIN_SECONDS as f64).contains(&n) => {
            Ok(n as u64)
        }
        _ => Err(invalid(format!(
            "shipWithinSeconds is not a whole number from 1 to {MAX_WITHIN_SECONDS}"
        ))),
    }
}

fn info(text: String) -> Output {
    Output::Log(LogEntry {
        level: LogLevel::Info,
        text,
    })
}

struct OrderOverdue;

impl Guest for OrderOverdue {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let event: Value = serde_json::from_slice(&msg.payload)
            .map_err(|_| invalid("not an order event: payload is not JSON"))?;
        let event = event
            .as_object()
            .ok_or_else(|| invalid("not an order event: payload is not a JSON object"))?;
        let kind = text(event, "type")?;
        let order_id = text(event, "orderId")?;
        match kind {
            "OrderPlaced" | "ShipmentDelayed" => {
                let within = within_seconds(event)?;
                // From the message's time, never a clock: a replay gives the
                // same due time, and a later event replaces the timer.
                let due = msg
                    .timestamp
                    .checked_add(within * 1000)
                    .ok_or_else(|| invalid("the deadline is past the largest time"))?;
                let alert = Overdue {
                    kind: "OrderOverdue",
                    order_id,
                    after: kind,
                    within_seconds: within,
                };
                let publish = Publish {
                    topic: OUTPUT_TOPIC.into(),
                    key: Some(order_id.as_bytes().to_vec()),
                    payload: serde_json::to_vec(&alert).expect("a struct of strings and numbers"),
                    headers: vec![Header {
                        name: "content-type".into(),
                        value: b"application/json".to_vec(),
                    }],
                };
                Ok(vec![
                    Output::Schedule(Schedule {
                        id: order_id.into(),
                        due,
                        publish,
                    }),
                    info(format!(
                        "order {order_id}: overdue unless shipped within {within} s of {kind}"
                    )),
                ])
            }
            "OrderShipped" | "OrderCancelled" => Ok(vec![
                Output::Cancel(order_id.into()),
                info(format!("order {order_id}: {kind}, no longer overdue")),
            ]),
            other => Err(invalid(format!("unknown order event type \"{other}\""))),
        }
    }
}

export!(OrderOverdue);
