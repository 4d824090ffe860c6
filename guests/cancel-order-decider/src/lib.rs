//! The decider version of `cancel-order`, following the seed's checklist:
//! check whether the order is already cancelled (from its stream,
//! `order-<orderId>`), cancel, save (append `OrderCancelled`), emit
//! `OrderCancelled` or `OrderCancelFailed` to `order-events`.

wit_bindgen::generate!({ world: "decider", path: "../../wit" });

#[path = "../../cancel-order/src/rules.rs"]
mod rules;

use exports::sluice::handler::decide::Guest;
use rules::{CancelRequest, Invalid, Verdict};
use serde::{Deserialize, Serialize};
use sluice::handler::types::{Decision, Event, HandleError, Message};

fn invalid(Invalid(detail): Invalid) -> HandleError {
    HandleError::InvalidInput(detail)
}

/// An order, as far as cancelling goes: why it was cancelled, if it was.
#[derive(Default, Serialize, Deserialize)]
struct Order {
    cancelled: Option<String>,
}

#[derive(Serialize)]
struct Cancelled {
    reason: String,
}

struct CancelOrder;

impl Guest for CancelOrder {
    fn stream_id(msg: Message) -> Result<Option<String>, HandleError> {
        let request = CancelRequest::read(&msg.payload).map_err(invalid)?;
        Ok(Some(format!(
            "order-{}",
            request.order_id().map_err(invalid)?
        )))
    }

    fn initial() -> Vec<u8> {
        serde_json::to_vec(&Order::default()).expect("a state serializes")
    }

    fn fold(state: Vec<u8>, events: Vec<Event>) -> Vec<u8> {
        let mut order: Order = serde_json::from_slice(&state).expect("encoded by this version");
        for event in events {
            // Event data is read as any JSON document is (the last of
            // duplicate keys wins), then its `reason` must be a string:
            // the JavaScript and Python builds read it the same way.
            if event.type_ == "OrderCancelled"
                && let Ok(data) = serde_json::from_slice::<serde_json::Value>(&event.data)
                && let Some(reason) = data.get("reason").and_then(serde_json::Value::as_str)
            {
                order.cancelled.get_or_insert_with(|| reason.to_owned());
            }
        }
        serde_json::to_vec(&order).expect("a state serializes")
    }

    fn decide(msg: Message, state: Vec<u8>) -> Result<Decision, HandleError> {
        let order: Order = serde_json::from_slice(&state).expect("encoded by this version");
        let request = CancelRequest::read(&msg.payload).map_err(invalid)?;
        let order_id = request.order_id().map_err(invalid)?;
        let verdict = request.verdict().map_err(invalid)?;
        let (verdict, events) = match (&order.cancelled, verdict) {
            (Some(earlier), _) => (
                Verdict::CancelFailed(format!("already cancelled ({earlier})")),
                Vec::new(),
            ),
            (None, Verdict::Cancelled(reason)) => {
                let data = serde_json::to_vec(&Cancelled {
                    reason: reason.clone(),
                })
                .expect("event data serializes");
                let event = Event {
                    type_: "OrderCancelled".into(),
                    data,
                    metadata: Vec::new(),
                };
                (Verdict::Cancelled(reason), vec![event])
            }
            (None, failed) => (failed, Vec::new()),
        };
        let outputs = verdict.outputs(order_id);
        Ok(Decision { events, outputs })
    }
}

export!(CancelOrder);
