//! The order-shipped-email service logic, free of any Wasm binding so that the
//! host's benchmarks can run exactly this code natively as a baseline.
//!
//! This is the reference the JavaScript and Python builds follow (and
//! tests/vectors/order-shipped-email.jsonl checks, byte for byte): the input
//! is checked field by field with messages of our own, never a JSON
//! library's, because every language's parser words its errors differently.

use serde::Serialize;
use serde_json::{Map, Value};

/// Topic the email requests are published to.
pub const OUTPUT_TOPIC: &str = "email-requests";

/// An email request ready to publish.
pub struct EmailRequest {
    pub order_id: String,
    pub payload: Vec<u8>,
    pub log: String,
}

/// Why no email is sent.
#[derive(Debug)]
pub enum Refusal {
    InvalidInput(String),
    Rejected(String),
}

#[derive(Serialize)]
struct Email<'a> {
    to: &'a str,
    template: &'static str,
    subject: String,
    vars: Vars<'a>,
}

#[derive(Serialize)]
struct Vars<'a> {
    name: Option<&'a str>,
    #[serde(rename = "orderId")]
    order_id: &'a str,
    carrier: Option<&'a str>,
    tracking: Option<&'a str>,
    #[serde(rename = "itemCount")]
    item_count: u64,
}

fn invalid(why: impl Into<String>) -> Refusal {
    Refusal::InvalidInput(why.into())
}

/// A field that may be absent or null, else must be a string.
fn optional_text<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<Option<&'a str>, Refusal> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(format!("{path} is not a string"))),
    }
}

/// A quantity: a JSON number with no fractional part, 0 to 2^32-1 (so that
/// every language adds them up exactly).
fn quantity(value: Option<&Value>, index: usize) -> Result<u64, Refusal> {
    match value.and_then(Value::as_f64) {
        Some(qty) if qty.fract() == 0.0 && (0.0..=4_294_967_295.0).contains(&qty) => Ok(qty as u64),
        _ => Err(invalid(format!(
            "items[{index}].qty is not a whole number from 0 to 4294967295"
        ))),
    }
}

/// Turns an `order-shipped` event into the email request for its customer.
pub fn handle(payload: &[u8]) -> Result<EmailRequest, Refusal> {
    let event: Value = serde_json::from_slice(payload)
        .map_err(|_| invalid("not an order-shipped event: payload is not JSON"))?;
    let event = event
        .as_object()
        .ok_or_else(|| invalid("not an order-shipped event: payload is not a JSON object"))?;
    let order_id =
        optional_text(event, "orderId", "orderId")?.ok_or_else(|| invalid("missing orderId"))?;
    let (name, email) = match event.get("customer") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(customer)) => (
            optional_text(customer, "name", "customer.name")?,
            optional_text(customer, "email", "customer.email")?,
        ),
        Some(_) => return Err(invalid("customer is not an object")),
    };
    let carrier = optional_text(event, "carrier", "carrier")?;
    let tracking = optional_text(event, "tracking", "tracking")?;
    let items: &[Value] = match event.get("items") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("items is not an array")),
    };
    let mut item_count = 0u64;
    for (index, item) in items.iter().enumerate() {
        let item = item
            .as_object()
            .ok_or_else(|| invalid(format!("items[{index}] is not an object")))?;
        item_count += quantity(item.get("qty"), index)?;
    }
    // Blank means ASCII whitespace only: Unicode's notion differs per language.
    let to = email
        .filter(|email| !email.trim_ascii().is_empty())
        .ok_or_else(|| Refusal::Rejected(format!("order {order_id}: customer has no email")))?;
    let email = Email {
        to,
        template: "order-shipped",
        subject: format!("Your order {order_id} has shipped"),
        vars: Vars {
            name,
            order_id,
            carrier,
            tracking,
            item_count,
        },
    };
    let payload = serde_json::to_vec(&email).expect("an email request always serializes");
    let log = format!("order {order_id}: shipped email requested for {to} ({item_count} items)");
    Ok(EmailRequest {
        order_id: order_id.to_owned(),
        payload,
        log,
    })
}
