//! `sluice replay`: run a handler component on messages from a JSONL file
//! or a range of a topic, and print one JSON line per input: its outputs, or
//! its error; with `against`, another version's too, and whether they
//! differ. Nothing is executed: this is how a handler is tried and tested,
//! and how a new version is compared with history before it serves.
//!
//! A file's lines may carry what they expect (`expect`): then replay checks
//! every outcome against it, which is how conformance vectors run. A decider
//! decides each message against the events its line gives (`history`), from
//! an empty stream otherwise; nothing is appended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::config::Limits;
use crate::contract::{Event, Header, Output, Publish};
use crate::registry::HandlerFile;
use crate::runtime::{
    CallError, Handler, HandlerInstance, HandlerKind, LoadError, Runtime, RuntimeError, WasmHandler,
};
use crate::source::jsonl::{Case, JsonlError, JsonlReader};
use crate::source::range::{Position, TopicRange};
use crate::wire::Reason;

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
    /// The topic cannot be read.
    #[error("reading {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// What the client said.
        source: rdkafka::error::KafkaError,
    },
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
    /// Inputs on which the `against` version's outcome differs.
    pub differ: u64,
    /// Inputs that said what they expect.
    pub checked: u64,
    /// Of those, the ones whose outcome is not what they expect.
    pub mismatched: u64,
}

/// Where a replay's messages come from.
#[derive(Debug, Clone)]
pub enum ReplayInput {
    /// A JSONL file.
    File(PathBuf),
    /// A range of a topic.
    Topic {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// Where each partition's range starts.
        from: Position,
        /// Where it ends (exclusive).
        to: Position,
    },
}

/// Runs `handler` (and `against`, if given) on every message of `input`,
/// writing one JSON line each to `out`; `progress` hears of each message.
/// With `artifact_cache`, compiled components are kept there, so replaying
/// a 12-19 MB JavaScript or Python component again loads it in milliseconds.
pub fn replay(
    handler: &Path,
    input: &ReplayInput,
    against: Option<&Path>,
    limits: &Limits,
    artifact_cache: Option<&Path>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(Progress),
) -> Result<ReplayStats, ReplayError> {
    let mut runtime = Runtime::new(limits)?;
    if let Some(dir) = artifact_cache {
        runtime = runtime.with_artifact_cache(dir);
    }
    let mut served = Replayer::load(&runtime, handler)?;
    let mut other = against
        .map(|path| Replayer::load(&runtime, path))
        .transpose()?;
    let cases: Box<dyn Iterator<Item = Result<Case, ReplayError>>> = match input {
        ReplayInput::File(path) => Box::new(
            JsonlReader::open(path)?
                .cases()
                .map(|c| c.map_err(ReplayError::from)),
        ),
        ReplayInput::Topic {
            brokers,
            topic,
            from,
            to,
        } => {
            let failed = |source| ReplayError::Topic {
                topic: topic.clone(),
                source,
            };
            let range = TopicRange::open(brokers, topic, *from, *to).map_err(failed)?;
            progress(Progress::Total(range.len()));
            Box::new(range.map(move |m| m.map(Case::of).map_err(failed)))
        }
    };
    let mut stats = ReplayStats::default();
    for case in cases {
        let case = case?;
        let outcome = served.outcome(&case);
        if outcome.get("error").is_some() {
            stats.failed += 1;
        } else {
            stats.succeeded += 1;
        }
        let mut line = Map::new();
        if let Some(name) = &case.name {
            line.insert("name".into(), json!(name));
        }
        line.insert("topic".into(), json!(case.message.topic));
        line.insert("partition".into(), json!(case.message.partition));
        line.insert("offset".into(), json!(case.message.offset));
        if let Value::Object(fields) = &outcome {
            line.extend(fields.clone());
        }
        if let Some(expect) = &case.expect {
            let matches = *expect == outcome;
            stats.checked += 1;
            stats.mismatched += u64::from(!matches);
            line.insert("matches".into(), json!(matches));
            if !matches {
                line.insert("expected".into(), expect.clone());
            }
        }
        if let Some(other) = &mut other {
            let theirs = other.outcome(&case);
            let differs = theirs != outcome;
            stats.differ += u64::from(differs);
            line.insert("against".into(), theirs);
            line.insert("differs".into(), json!(differs));
        }
        serde_json::to_writer(&mut *out, &Value::Object(line)).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        progress(Progress::Done);
    }
    out.flush()?;
    Ok(stats)
}

/// What a replay reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// How many messages there are, when known.
    Total(u64),
    /// One more message replayed.
    Done,
}

/// A handler loaded for replay, with its current instance.
struct Replayer {
    handler: Arc<WasmHandler>,
    instance: Option<Box<dyn HandlerInstance>>,
}

impl Replayer {
    fn load(runtime: &Runtime, path: &Path) -> Result<Replayer, ReplayError> {
        let (name, version) = HandlerFile::from_path(path).map_or_else(
            || {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("handler");
                (stem.to_owned(), "unversioned".to_owned())
            },
            |file| (file.name, file.version.to_string()),
        );
        let handler = runtime.load(path, &name, &version)?;
        Ok(Replayer {
            handler,
            instance: None,
        })
    }

    /// The canonical outcome of one case: a handler's outputs, or a
    /// decider's stream, events and outputs; or the error.
    fn outcome(&mut self, case: &Case) -> Value {
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => match self.handler.instantiate() {
                Ok(instance) => instance,
                Err(trap) => return canonical(&Err(CallError::Trap(trap))),
            },
        };
        let outcome = match self.handler.kind() {
            HandlerKind::Handler => instance
                .handle(&case.message)
                .map(|outputs| canonical(&Ok(outputs))),
            HandlerKind::Decider => decide(instance.as_mut(), case),
        };
        // A trapped instance is never reused.
        if !matches!(outcome, Err(CallError::Trap(_))) {
            self.instance = Some(instance);
        }
        outcome.unwrap_or_else(|error| canonical(&Err(error)))
    }
}

/// Decides `case` against its history, as the pipeline would against a
/// stream holding those events (but appends nothing).
fn decide(instance: &mut dyn HandlerInstance, case: &Case) -> Result<Value, CallError> {
    let Some(decider) = instance.decider() else {
        unreachable!("a decider's instance has the decider functions")
    };
    let msg = &case.message;
    let Some(stream) = decider.stream_id(msg)? else {
        return Ok(json!({ "stream": null, "events": [], "outputs": [] }));
    };
    let mut state = decider.initial(msg)?;
    if !case.history.is_empty() {
        state = decider.fold(msg, &state, &case.history)?;
    }
    let decision = decider.decide(msg, &state)?;
    Ok(json!({
        "stream": stream,
        "events": decision.events.iter().map(event).collect::<Value>(),
        "outputs": decision.outputs.iter().map(output).collect::<Value>(),
    }))
}

fn event(event: &Event) -> Value {
    let mut fields = Map::new();
    fields.insert("type".into(), json!(event.kind));
    insert_bytes(&mut fields, "data", &event.data);
    insert_bytes(&mut fields, "metadata", &event.metadata);
    Value::Object(fields)
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
            json!({ "error": { "kind": Reason::of(error).as_str(), "detail": detail } })
        }
    }
}

fn output(output: &Output) -> Value {
    match output {
        Output::Publish(p) => json!({ "publish": publish(p) }),
        Output::Schedule(timer) => {
            json!({ "schedule": { "id": timer.id, "due": timer.due, "publish": publish(&timer.publish) } })
        }
        Output::Cancel(id) => json!({ "cancel": { "id": id } }),
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

fn publish(p: &Publish) -> Value {
    let mut publish = Map::new();
    publish.insert("topic".into(), json!(p.topic));
    if let Some(key) = &p.key {
        insert_bytes(&mut publish, "key", key);
    }
    insert_bytes(&mut publish, "payload", &p.payload);
    publish.insert("headers".into(), p.headers.iter().map(header).collect());
    Value::Object(publish)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::contract::{HttpMethod, HttpRequest, LogEntry, LogLevel, Schedule};

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly text, sometimes not UTF-8: both encodings get exercised.
        prop_oneof![
            ".{0,12}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn headers() -> impl Strategy<Value = Vec<Header>> {
        proptest::collection::vec(
            (".{0,8}", bytes()).prop_map(|(name, value)| Header { name, value }),
            0..3,
        )
    }

    fn output() -> impl Strategy<Value = Output> {
        let level = prop_oneof![
            Just(LogLevel::Trace),
            Just(LogLevel::Debug),
            Just(LogLevel::Info),
            Just(LogLevel::Warn),
            Just(LogLevel::Error),
        ];
        let method = prop_oneof![
            Just(HttpMethod::Get),
            Just(HttpMethod::Head),
            Just(HttpMethod::Post),
            Just(HttpMethod::Put),
            Just(HttpMethod::Patch),
            Just(HttpMethod::Delete),
            Just(HttpMethod::Options),
        ];
        prop_oneof![
            (".{0,8}", proptest::option::of(bytes()), bytes(), headers()).prop_map(
                |(topic, key, payload, headers)| Output::Publish(Publish {
                    topic,
                    key,
                    payload,
                    headers,
                })
            ),
            (level, ".{0,16}").prop_map(|(level, text)| Output::Log(LogEntry { level, text })),
            (method, ".{0,16}", headers(), bytes()).prop_map(|(method, url, headers, body)| {
                Output::Http(HttpRequest {
                    method,
                    url,
                    headers,
                    body,
                })
            }),
            (".{0,8}", any::<u64>(), ".{0,8}", bytes()).prop_map(|(id, due, topic, payload)| {
                Output::Schedule(Schedule {
                    id,
                    due,
                    publish: Publish {
                        topic,
                        key: None,
                        payload,
                        headers: vec![],
                    },
                })
            }),
            ".{0,8}".prop_map(Output::Cancel),
        ]
    }

    proptest! {
        /// Two outcomes are the same exactly when their canonical forms
        /// are: `--against` and the vectors rely on both directions.
        #[test]
        fn canonical_forms_are_equal_exactly_when_outcomes_are(
            a in proptest::collection::vec(output(), 0..4),
            b in proptest::collection::vec(output(), 0..4),
        ) {
            let (ca, cb) = (canonical(&Ok(a.clone())), canonical(&Ok(b.clone())));
            prop_assert_eq!(ca == cb, a == b);
            // And the text written is a function of the outcome.
            prop_assert_eq!(ca.to_string(), canonical(&Ok(a)).to_string());
        }

        /// A canonical form tells apart outcomes that differ in one byte.
        #[test]
        fn one_byte_changes_the_canonical_form(
            outputs in proptest::collection::vec(output(), 1..4),
            which in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut changed = outputs.clone();
            let payload = match &mut changed[which.index(outputs.len())] {
                Output::Publish(p) => &mut p.payload,
                Output::Http(r) => &mut r.body,
                Output::Schedule(timer) => &mut timer.publish.payload,
                Output::Cancel(id) => {
                    id.push(char::from(byte & 0x7f));
                    return {
                        prop_assert_ne!(canonical(&Ok(outputs)), canonical(&Ok(changed)));
                        Ok(())
                    };
                }
                Output::Log(l) => {
                    l.text.push(char::from(byte & 0x7f));
                    return {
                        prop_assert_ne!(canonical(&Ok(outputs)), canonical(&Ok(changed)));
                        Ok(())
                    };
                }
            };
            payload.push(byte);
            prop_assert_ne!(canonical(&Ok(outputs)), canonical(&Ok(changed)));
        }
    }
}
