//! `sku-coupon`, a decider: every SKU is a stream of events, and a coupon
//! applies to a SKU at most once, and only while the SKU is in the
//! assortment. Input topic `sku-commands`; output topic `sku-events`; stream
//! `sku-<sku>`. See examples/shop/README.md for the commands and events.

wit_bindgen::generate!({ world: "decider", path: "../../wit" });

use std::collections::BTreeMap;

use exports::sluice::handler::decide::Guest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice::handler::types::{
    Decision, Event, HandleError, Header, LogEntry, LogLevel, Message, Output, Publish,
};

const OUTPUT_TOPIC: &str = "sku-events";

/// A command, as read from `sku-commands`.
enum Command {
    AddToAssortment {
        sku: String,
    },
    RemoveFromAssortment {
        sku: String,
    },
    ApplyCoupon {
        sku: String,
        coupon: String,
        percent: u32,
    },
}

impl Command {
    fn sku(&self) -> &str {
        match self {
            Command::AddToAssortment { sku }
            | Command::RemoveFromAssortment { sku }
            | Command::ApplyCoupon { sku, .. } => sku,
        }
    }
}

/// The data of a `CouponApplied` event: read as any JSON document is (the
/// last of duplicate keys wins), then a string `coupon` and a whole number
/// `percent` in u32's range (`5.0` is 5: JavaScript cannot tell them
/// apart), as the JavaScript and Python builds read it.
fn applied(data: &[u8]) -> Option<(String, u32)> {
    let data: Value = serde_json::from_slice(data).ok()?;
    let coupon = data.get("coupon")?.as_str()?;
    let percent = data
        .get("percent")?
        .as_f64()
        .filter(|p| p.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(p))?;
    Some((coupon.to_owned(), percent as u32))
}

/// What the stream says about a SKU. Encoded as JSON with sorted keys, so
/// equal states are equal bytes.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    in_assortment: bool,
    /// Applied coupons and their percent off.
    coupons: BTreeMap<String, u32>,
}

fn invalid(why: impl Into<String>) -> HandleError {
    HandleError::InvalidInput(why.into())
}

/// Reads a command field by field, with messages of our own (not the JSON
/// parser's), so the JavaScript and Python builds can say exactly the same.
fn read(msg: &Message) -> Result<Command, HandleError> {
    let command: Value = serde_json::from_slice(&msg.payload)
        .map_err(|_| invalid("not a SKU command: payload is not JSON"))?;
    let command = command
        .as_object()
        .ok_or_else(|| invalid("not a SKU command: payload is not a JSON object"))?;
    let text = |field: &str| match command.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(invalid(format!(
            "not a SKU command: {field} is not a string"
        ))),
    };
    let kind = command.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(
        kind,
        "AddToAssortment" | "RemoveFromAssortment" | "ApplyCoupon"
    ) {
        return Err(invalid(
            "not a SKU command: type is not AddToAssortment, RemoveFromAssortment or ApplyCoupon",
        ));
    }
    let sku = text("sku")?;
    if sku.is_empty() {
        return Err(invalid("empty sku"));
    }
    Ok(match kind {
        "AddToAssortment" => Command::AddToAssortment { sku },
        "RemoveFromAssortment" => Command::RemoveFromAssortment { sku },
        _ => {
            let coupon = text("coupon")?;
            let percent = command
                .get("percent")
                .and_then(Value::as_f64)
                .filter(|p| p.fract() == 0.0 && (1.0..=100.0).contains(p));
            match percent {
                Some(percent) if !coupon.is_empty() => Command::ApplyCoupon {
                    sku,
                    coupon,
                    percent: percent as u32,
                },
                _ => {
                    return Err(invalid(
                        "ApplyCoupon needs a coupon code and a percent from 1 to 100",
                    ));
                }
            }
        }
    })
}

fn decode(state: &[u8]) -> State {
    serde_json::from_slice(state).expect("states are only ever encoded by this version")
}

fn encode(state: &State) -> Vec<u8> {
    serde_json::to_vec(state).expect("a state always serializes")
}

fn event(kind: &str, data: serde_json::Value) -> Event {
    Event {
        type_: kind.into(),
        data: serde_json::to_vec(&data).expect("event data serializes"),
        metadata: Vec::new(),
    }
}

/// The published record of what happened to a command.
fn published(sku: &str, body: serde_json::Value) -> Output {
    Output::Publish(Publish {
        topic: OUTPUT_TOPIC.into(),
        key: Some(sku.as_bytes().to_vec()),
        payload: serde_json::to_vec(&body).expect("output serializes"),
        headers: vec![Header {
            name: "content-type".into(),
            value: b"application/json".to_vec(),
        }],
    })
}

fn log(text: String) -> Output {
    Output::Log(LogEntry {
        level: LogLevel::Info,
        text,
    })
}

struct SkuCoupon;

impl Guest for SkuCoupon {
    fn stream_id(msg: Message) -> Result<Option<String>, HandleError> {
        Ok(Some(format!("sku-{}", read(&msg)?.sku())))
    }

    fn initial() -> Vec<u8> {
        encode(&State::default())
    }

    fn fold(state: Vec<u8>, events: Vec<Event>) -> Vec<u8> {
        let mut state = decode(&state);
        for e in events {
            match e.type_.as_str() {
                "SkuAddedToAssortment" => state.in_assortment = true,
                "SkuRemovedFromAssortment" => state.in_assortment = false,
                "CouponApplied" => {
                    if let Some((coupon, percent)) = applied(&e.data) {
                        state.coupons.insert(coupon, percent);
                    }
                }
                // Events of kinds this version does not know change nothing.
                _ => {}
            }
        }
        encode(&state)
    }

    fn decide(msg: Message, state: Vec<u8>) -> Result<Decision, HandleError> {
        let state = decode(&state);
        let command = read(&msg)?;
        let sku = command.sku().to_owned();
        let mut decision = Decision {
            events: Vec::new(),
            outputs: Vec::new(),
        };
        match command {
            Command::AddToAssortment { .. } if !state.in_assortment => {
                decision
                    .events
                    .push(event("SkuAddedToAssortment", serde_json::json!({})));
                decision.outputs.push(published(
                    &sku,
                    serde_json::json!({"type": "SkuAddedToAssortment", "sku": sku}),
                ));
            }
            Command::RemoveFromAssortment { .. } if state.in_assortment => {
                decision
                    .events
                    .push(event("SkuRemovedFromAssortment", serde_json::json!({})));
                decision.outputs.push(published(
                    &sku,
                    serde_json::json!({"type": "SkuRemovedFromAssortment", "sku": sku}),
                ));
            }
            // Already so: nothing happens.
            Command::AddToAssortment { .. } | Command::RemoveFromAssortment { .. } => {}
            Command::ApplyCoupon {
                coupon, percent, ..
            } => {
                let refused = if !state.in_assortment {
                    Some("not-in-assortment")
                } else if state.coupons.contains_key(&coupon) {
                    Some("already-applied")
                } else {
                    None
                };
                match refused {
                    Some(reason) => {
                        decision.outputs.push(published(
                            &sku,
                            serde_json::json!({"type": "CouponRejected", "sku": sku,
                                               "coupon": coupon, "reason": reason}),
                        ));
                        decision
                            .outputs
                            .push(log(format!("{sku}: coupon {coupon} rejected ({reason})")));
                    }
                    None => {
                        decision.events.push(event(
                            "CouponApplied",
                            serde_json::json!({"coupon": coupon, "percent": percent}),
                        ));
                        decision.outputs.push(published(
                            &sku,
                            serde_json::json!({"type": "CouponApplied", "sku": sku,
                                               "coupon": coupon, "percent": percent}),
                        ));
                        decision.outputs.push(log(format!(
                            "{sku}: coupon {coupon} applied ({percent}% off)"
                        )));
                    }
                }
            }
        }
        Ok(decision)
    }
}

export!(SkuCoupon);
