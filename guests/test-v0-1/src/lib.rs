//! A handler built against the frozen 0.1.0 contract, to prove the host
//! keeps running components built for an older minor version: it echoes
//! each message to topic `echo-v0-1`.

wit_bindgen::generate!({ world: "handler", path: "../../wit/archive/0.1.0" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, LogEntry, LogLevel, Message, Output, Publish};

struct Legacy;

impl Guest for Legacy {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        Ok(vec![
            Output::Publish(Publish {
                topic: "echo-v0-1".into(),
                key: msg.key,
                payload: msg.payload,
                headers: msg.headers,
            }),
            Output::Log(LogEntry {
                level: LogLevel::Info,
                text: format!("0.1 handler echoed offset {}", msg.offset),
            }),
        ])
    }
}

export!(Legacy);
