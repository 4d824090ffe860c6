//! `sluice replay`: run a handler component on messages from a JSONL file,
//! with no broker, and print one JSON line per input: its outputs, or its
//! error. Nothing is executed; this is how a handler is tried and tested.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::config::Limits;
use crate::contract::{Header, Message, Output};
use crate::registry::HandlerFile;
use crate::runtime::{
    CallError, Handler, HandlerInstance, HandlerKind, LoadError, Runtime, RuntimeError,
};
use crate::source::jsonl::{JsonlError, JsonlReader};

/// Why a replay could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The Wasm engine.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The handler was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A line of the input is not a message.
    #[error(transparent)]
    Input(#[from] JsonlError),
    /// The component is a decider: its decisions need its stream.
    #[error(
        "{0} is a decider: replay runs handlers only; run a decider over a file with `sluice run` and `[source] file = ...`"
    )]
    Decider(String),
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Write(#[from] std::io::Error),
}

/// Counts of a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Inputs whose handler returned outputs.
    pub succeeded: u64,
    /// Inputs whose handler returned an error or trapped.
    pub failed: u64,
}

/// Runs `handler` on every message of `input`, writing one JSON line each to `out`.
pub fn replay(
    handler: &Path,
    input: &Path,
    limits: &Limits,
    out: &mut dyn Write,
) -> Result<ReplayStats, ReplayError> {
    let runtime = Runtime::new(limits)?;
    let (name, version) = HandlerFile::from_path(handler).map_or_else(
        || {
            let stem = handler
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("handler");
            (stem.to_owned(), "unversioned".to_owned())
        },
        |file| (file.name, file.version.to_string()),
    );
    let handler = runtime.load(handler, &name, &version)?;
    if handler.kind() == HandlerKind::Decider {
        return Err(ReplayError::Decider(name));
    }
    let mut instance: Option<Box<dyn HandlerInstance>> = None;
    let mut stats = ReplayStats::default();
    for message in JsonlReader::open(input)? {
        let message = message?;
        let outcome = match instance.take() {
            Some(i) => Ok(i),
            None => handler.instantiate(),
        }
        .map_err(CallError::Trap)
        .and_then(|mut i| {
            let outcome = i.handle(&message);
            // A trapped instance is never reused.
            if !matches!(outcome, Err(CallError::Trap(_))) {
                instance = Some(i);
            }
            outcome
        });
        match &outcome {
            Ok(_) => stats.succeeded += 1,
            Err(_) => stats.failed += 1,
        }
        serde_json::to_writer(&mut *out, &line(&message, outcome)).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(stats)
}

/// The JSON line for one input.
fn line(message: &Message, outcome: Result<Vec<Output>, CallError>) -> Value {
    let mut line = Map::new();
    line.insert("topic".into(), json!(message.topic));
    line.insert("partition".into(), json!(message.partition));
    line.insert("offset".into(), json!(message.offset));
    if let Value::Object(outcome) = canonical(&outcome) {
        line.extend(outcome);
    }
    Value::Object(line)
}

/// A call's outcome in canonical form: `{"outputs": [...]}` or
/// `{"error": {"kind", "detail"}}`, bytes as text when they are UTF-8. Two
/// versions agree on a message exactly when these are equal.
pub(crate) fn canonical(outcome: &Result<Vec<Output>, CallError>) -> Value {
    match outcome {
        Ok(outputs) => json!({ "outputs": outputs.iter().map(output).collect::<Value>() }),
        Err(error) => {
            let detail = match error {
                CallError::Handler(e) => e.detail().to_owned(),
                CallError::Trap(trap) => trap.to_string(),
            };
            json!({ "error": { "kind": error.kind(), "detail": detail } })
        }
    }
}

fn output(output: &Output) -> Value {
    match output {
        Output::Publish(p) => {
            let mut publish = Map::new();
            publish.insert("topic".into(), json!(p.topic));
            if let Some(key) = &p.key {
                insert_bytes(&mut publish, "key", key);
            }
            insert_bytes(&mut publish, "payload", &p.payload);
            publish.insert("headers".into(), p.headers.iter().map(header).collect());
            json!({ "publish": publish })
        }
        Output::Log(entry) => {
            json!({ "log": { "level": entry.level.as_str(), "text": entry.text } })
        }
        Output::Http(request) => {
            let mut http = Map::new();
            http.insert("method".into(), json!(request.method.as_str()));
            http.insert("url".into(), json!(request.url));
            http.insert(
                "headers".into(),
                request.headers.iter().map(header).collect(),
            );
            insert_bytes(&mut http, "body", &request.body);
            json!({ "http": http })
        }
    }
}

fn header(h: &Header) -> Value {
    let mut header = Map::new();
    header.insert("name".into(), json!(h.name));
    insert_bytes(&mut header, "value", &h.value);
    Value::Object(header)
}

/// Bytes as `field: text` when UTF-8, else as `field-base64: ...`.
fn insert_bytes(map: &mut Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => map.insert(field.into(), json!(text)),
        Err(_) => map.insert(
            format!("{field}-base64"),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}
