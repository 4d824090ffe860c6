//! The order-shipped-email service logic, free of any Wasm binding so that the
//! host's benchmarks can run exactly this code natively as a baseline.

use serde::{Deserialize, Serialize};

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

#[derive(Deserialize)]
struct OrderShipped {
    #[serde(rename = "orderId")]
    order_id: Option<String>,
    customer: Option<Customer>,
    carrier: Option<String>,
    tracking: Option<String>,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Customer {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    qty: u64,
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

/// Turns an `order-shipped` event into the email request for its customer.
pub fn handle(payload: &[u8]) -> Result<EmailRequest, Refusal> {
    let event: OrderShipped = serde_json::from_slice(payload)
        .map_err(|e| Refusal::InvalidInput(format!("not an order-shipped event: {e}")))?;
    let order_id = event
        .order_id
        .ok_or_else(|| Refusal::InvalidInput("missing orderId".into()))?;
    let customer = event.customer.as_ref();
    let to = customer
        .and_then(|c| c.email.as_deref())
        .filter(|email| !email.trim().is_empty())
        .ok_or_else(|| Refusal::Rejected(format!("order {order_id}: customer has no email")))?;
    let item_count = event
        .items
        .iter()
        .try_fold(0u64, |sum, item| sum.checked_add(item.qty))
        .ok_or_else(|| Refusal::InvalidInput("item quantities overflow".into()))?;
    let email = Email {
        to,
        template: "order-shipped",
        subject: format!("Your order {order_id} has shipped"),
        vars: Vars {
            name: customer.and_then(|c| c.name.as_deref()),
            order_id: &order_id,
            carrier: event.carrier.as_deref(),
            tracking: event.tracking.as_deref(),
            item_count,
        },
    };
    let payload = serde_json::to_vec(&email).expect("an email request always serializes");
    let log = format!("order {order_id}: shipped email requested for {to} ({item_count} items)");
    Ok(EmailRequest {
        order_id,
        payload,
        log,
    })
}
