//! `order-shipped-email`: when an order ships, ask the email service to tell
//! the customer. Input topic `order-shipped`; output topic `email-requests`.

mod logic;

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Header, LogEntry, LogLevel, Message, Output, Publish};

struct OrderShippedEmail;

impl Guest for OrderShippedEmail {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let email = logic::handle(&msg.payload).map_err(|refusal| match refusal {
            logic::Refusal::InvalidInput(why) => HandleError::InvalidInput(why),
            logic::Refusal::Rejected(why) => HandleError::Rejected(why),
        })?;
        Ok(vec![
            Output::Publish(Publish {
                topic: logic::OUTPUT_TOPIC.into(),
                key: Some(email.order_id.into_bytes()),
                payload: email.payload,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: b"application/json".to_vec(),
                }],
            }),
            Output::Log(LogEntry {
                level: LogLevel::Info,
                text: email.log,
            }),
        ])
    }
}

export!(OrderShippedEmail);
