// Shared by test-echo and test-echo-next; `super::NEXT` tells them apart.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Header, Message, Output, Publish};

struct Echo;

impl Guest for Echo {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let mut payload = msg.payload;
        if super::NEXT {
            if payload.starts_with(b"changed:") {
                payload.make_ascii_uppercase();
            }
            if payload.starts_with(b"fail-next") {
                return Err(HandleError::Failed("the next version fails on this".into()));
            }
        }
        Ok(vec![Output::Publish(Publish {
            topic: "echo".into(),
            key: msg.key,
            payload,
            headers: vec![Header {
                name: "offset".into(),
                value: msg.offset.to_string().into_bytes(),
            }],
        })])
    }
}

export!(Echo);
