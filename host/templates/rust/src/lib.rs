//! {{name}}: a sluice handler. It turns a message `{"name": "Ada"}` into a
//! greeting published to `greetings` (under the message's key) and a log
//! line. sluice runs the outputs; the handler only describes them.

wit_bindgen::generate!({ world: "handler", path: "wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Header, LogEntry, LogLevel, Message, Output, Publish};

struct Handler;

impl Guest for Handler {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let name = serde_json::from_slice::<serde_json::Value>(&msg.payload)
            .ok()
            .and_then(|event| event.get("name")?.as_str().map(str::to_owned))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| HandleError::InvalidInput("expected a JSON object with a name".into()))?;
        let greeting = serde_json::json!({ "greeting": format!("Hello, {name}!") });
        Ok(vec![
            Output::Publish(Publish {
                topic: "greetings".into(),
                key: msg.key,
                payload: greeting.to_string().into_bytes(),
                headers: vec![Header {
                    name: "content-type".into(),
                    value: b"application/json".to_vec(),
                }],
            }),
            Output::Log(LogEntry {
                level: LogLevel::Info,
                text: format!("greeted {name}"),
            }),
        ])
    }
}

export!(Handler);
