//! The JSONL message format shared by the file source, `sluice replay` and the
//! embedded broker's seed files. One message per line:
//!
//! ```json
//! {"topic":"orders","partition":0,"offset":7,"timestamp":1700000000000,
//!  "key":"o-1","headers":{"trace":"abc"},"payload":{"any":"json"}}
//! ```
//!
//! Only `topic` and `payload` (or `payload-base64`, for bytes that are not
//! UTF-8) are required. A string payload is taken as its UTF-8 bytes; any
//! other JSON value is serialized compactly. A missing offset is the next one
//! of its topic and partition, as a broker would assign it.
//!
//! A line may also be a test case (a conformance vector): `name`, what the
//! handler must answer (`expect`, in `sluice replay`'s canonical form) and,
//! for a decider, the events already on the message's stream (`history`:
//! `[{"type": ..., "data": ..., "metadata": ...}]`, data and metadata like a
//! payload). Sources other than replay ignore these.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use base64::Engine as _;

use crate::contract::{Event, Header, Message};

/// A line of a JSONL file that is not a message.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct JsonlError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number (0 when the file cannot be opened).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    topic: String,
    partition: Option<i32>,
    offset: Option<i64>,
    timestamp: Option<u64>,
    key: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    payload: Option<serde_json::Value>,
    #[serde(rename = "payload-base64")]
    payload_base64: Option<String>,
    name: Option<String>,
    expect: Option<serde_json::Value>,
    history: Option<Vec<HistoryEvent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// A line read as a test case: the message, and what is expected of it.
#[derive(Debug, Clone)]
pub struct Case {
    /// The message.
    pub message: Message,
    /// What the case is about, if it says.
    pub name: Option<String>,
    /// The outcome the handler must give, in replay's canonical form.
    pub expect: Option<serde_json::Value>,
    /// For a decider: the events on the message's stream before it.
    pub history: Vec<Event>,
}

impl Case {
    /// A bare message, expecting nothing.
    pub fn of(message: Message) -> Case {
        Case {
            message,
            name: None,
            expect: None,
            history: Vec::new(),
        }
    }
}

/// A string as its UTF-8 bytes, anything else serialized compactly.
fn bytes_of(value: serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Reads messages from a JSONL file, one per non-blank line.
pub struct JsonlReader {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    line: usize,
    next_offsets: HashMap<(String, i32), i64>,
    keyed_partitions: Option<i32>,
}

impl JsonlReader {
    /// Opens a JSONL file.
    pub fn open(path: &Path) -> Result<JsonlReader, JsonlError> {
        let file = File::open(path).map_err(|e| JsonlError {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot open: {e}"),
        })?;
        Ok(JsonlReader {
            path: path.to_owned(),
            lines: BufReader::new(file).lines(),
            line: 0,
            next_offsets: HashMap::new(),
            keyed_partitions: None,
        })
    }

    /// Puts a message without a `partition` in one of `partitions` by a hash
    /// of its key (keyless ones in 0), instead of always in partition 0.
    pub fn partition_by_key(mut self, partitions: i32) -> Self {
        self.keyed_partitions = Some(partitions.max(1));
        self
    }

    /// The 1-based number of the line last read.
    pub fn line(&self) -> usize {
        self.line
    }

    fn error(&self, message: String) -> JsonlError {
        JsonlError {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }

    /// Reads the lines as test cases instead of bare messages.
    pub fn cases(self) -> Cases {
        Cases(self)
    }

    fn parse(&mut self, text: &str) -> Result<Case, JsonlError> {
        let line: Line =
            serde_json::from_str(text).map_err(|e| self.error(format!("not a message: {e}")))?;
        if line.topic.is_empty() {
            return Err(self.error("topic must not be empty".into()));
        }
        let partition = match (line.partition, self.keyed_partitions) {
            (Some(partition), _) => partition,
            (None, Some(partitions)) => line
                .key
                .as_deref()
                .map_or(0, |key| (fnv1a(key.as_bytes()) % partitions as u32) as i32),
            (None, None) => 0,
        };
        if partition < 0 {
            return Err(self.error(format!("partition {partition} is negative")));
        }
        let payload = match (line.payload, line.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(self.error("payload and payload-base64 are exclusive".into()));
            }
            (None, None) => return Err(self.error("missing payload".into())),
            (Some(payload), None) => bytes_of(payload),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| self.error(format!("payload-base64: {e}")))?,
        };
        let headers = line
            .headers
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => Ok(Header::new(name, text)),
                _ => Err(self.error(format!("header {name:?} must be a string"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next = self
            .next_offsets
            .entry((line.topic.clone(), partition))
            .or_insert(0);
        let offset = line.offset.unwrap_or(*next);
        if offset < 0 {
            return Err(self.error(format!("offset {offset} is negative")));
        }
        *next = offset + 1;
        let history = line
            .history
            .unwrap_or_default()
            .into_iter()
            .map(|event| Event {
                kind: event.kind,
                data: event.data.map(bytes_of).unwrap_or_default(),
                metadata: event.metadata.map(bytes_of).unwrap_or_default(),
            })
            .collect();
        Ok(Case {
            message: Message {
                topic: line.topic,
                partition,
                offset,
                key: line.key.map(String::into_bytes),
                payload,
                headers,
                timestamp: line.timestamp.unwrap_or(0),
            },
            name: line.name,
            expect: line.expect,
            history,
        })
    }
}

/// FNV-1a, a small stable hash, so keyed partitioning is the same every run.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Iterator for JsonlReader {
    type Item = Result<Message, JsonlError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_case()?.map(|case| case.message))
    }
}

/// The lines of a JSONL file as test cases.
pub struct Cases(JsonlReader);

impl Iterator for Cases {
    type Item = Result<Case, JsonlError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_case()
    }
}

impl JsonlReader {
    fn next_case(&mut self) -> Option<Result<Case, JsonlError>> {
        loop {
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(e) => {
                    self.line += 1;
                    return Some(Err(self.error(format!("cannot read: {e}"))));
                }
            };
            self.line += 1;
            if !text.trim().is_empty() {
                return Some(self.parse(&text));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<Result<Message, JsonlError>> {
        cases(text)
            .into_iter()
            .map(|case| case.map(|case| case.message))
            .collect()
    }

    #[test]
    fn payloads_keys_headers_and_default_offsets() {
        let msgs = read(
            "{\"topic\":\"a\",\"payload\":\"héllo\",\"key\":\"k\",\"headers\":{\"h\":\"v\"}}\n\n\
             {\"topic\":\"a\",\"payload\":{\"x\": [1, 2]}}\n\
             {\"topic\":\"a\",\"partition\":1,\"offset\":9,\"timestamp\":5,\"payload\":3}\n\
             {\"topic\":\"a\",\"payload\":\"\"}\n",
        );
        let msgs: Vec<Message> = msgs.into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs[0].payload, "héllo".as_bytes());
        assert_eq!(msgs[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(msgs[0].headers, vec![Header::new("h", "v")]);
        assert_eq!(msgs[1].payload, b"{\"x\":[1,2]}");
        assert_eq!((msgs[1].partition, msgs[1].offset), (0, 1));
        assert_eq!(
            (msgs[2].partition, msgs[2].offset, msgs[2].timestamp),
            (1, 9, 5)
        );
        assert_eq!(msgs[3].offset, 2);
    }

    #[test]
    fn bad_lines_name_file_line_and_problem() {
        let msgs =
            read("{\"topic\":\"a\",\"payload\":1}\n{\"topic\":\"a\"}\n{\"topik\":\"a\"}\nnope\n");
        assert!(msgs[0].is_ok());
        let errors: Vec<String> = msgs[1..]
            .iter()
            .map(|m| m.as_ref().unwrap_err().to_string())
            .collect();
        assert!(errors[0].ends_with(":2: missing payload"), "{}", errors[0]);
        assert!(
            errors[1].contains(":3: not a message: unknown field `topik`"),
            "{}",
            errors[1]
        );
        assert!(errors[2].contains(":4: not a message"), "{}", errors[2]);
    }

    fn cases(text: &str) -> Vec<Result<Case, JsonlError>> {
        let dir = std::env::temp_dir().join(format!("sluice-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.jsonl", text.len() ^ text.as_ptr() as usize));
        std::fs::write(&path, text).unwrap();
        let out = JsonlReader::open(&path).unwrap().cases().collect();
        std::fs::remove_file(&path).unwrap();
        out
    }

    #[test]
    fn a_case_carries_its_name_expectation_history_and_raw_bytes() {
        let read = cases(
            r#"{"name":"n","topic":"a","payload-base64":"/wA=","expect":{"outputs":[]},"history":[{"type":"T","data":{"x":1}},{"type":"U","data":"raw","metadata":"m"}]}"#,
        );
        let case = read[0].as_ref().unwrap();
        assert_eq!(case.message.payload, [0xff, 0x00]);
        assert_eq!(case.name.as_deref(), Some("n"));
        assert_eq!(case.expect, Some(serde_json::json!({"outputs": []})));
        assert_eq!(case.history.len(), 2);
        assert_eq!(
            (
                case.history[0].kind.as_str(),
                case.history[0].data.as_slice()
            ),
            ("T", &b"{\"x\":1}"[..])
        );
        assert_eq!(case.history[1].metadata, b"m");
        assert!(case.history[0].metadata.is_empty());
    }

    #[test]
    fn bad_cases_name_file_line_and_problem() {
        let read = cases(concat!(
            "{\"topic\":\"a\",\"payload\":\"x\",\"payload-base64\":\"eA==\"}\n",
            "{\"topic\":\"a\",\"payload-base64\":\"not base64!\"}\n",
            "{\"topic\":\"a\",\"payload\":1,\"history\":[{\"data\":1}]}\n",
            "{\"topic\":\"a\",\"payload\":1,\"history\":[{\"type\":\"T\",\"when\":1}]}\n",
        ));
        let errors: Vec<String> = read
            .iter()
            .map(|c| c.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            errors[0].ends_with(":1: payload and payload-base64 are exclusive"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains(":2: payload-base64: "), "{}", errors[1]);
        assert!(
            errors[2].contains(":3: not a message: missing field `type`"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].contains(":4: not a message: unknown field `when`"),
            "{}",
            errors[3]
        );
    }

    mod properties {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        fn any_message() -> impl Strategy<Value = Message> {
            (
                "[a-zA-Z0-9._-]{1,20}",
                0..1000i32,
                0..i64::MAX,
                proptest::option::of(".{0,12}"),
                proptest::collection::vec(any::<u8>(), 0..64),
                // The format holds headers as an object: unique names, in
                // order.
                proptest::collection::btree_map(".{1,8}", ".{0,8}", 0..4),
                0..u64::MAX / 2,
            )
                .prop_map(
                    |(topic, partition, offset, key, payload, headers, timestamp)| Message {
                        topic,
                        partition,
                        offset,
                        key: key.map(String::into_bytes),
                        payload,
                        headers: headers
                            .into_iter()
                            .map(|(name, value)| Header::new(name, value))
                            .collect(),
                        timestamp,
                    },
                )
        }

        proptest! {
            /// Any message written as a line is read back the same.
            #[test]
            fn a_message_written_as_a_line_reads_back_the_same(message in any_message()) {
                let headers: BTreeMap<String, String> = message
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), String::from_utf8(h.value.clone()).unwrap()))
                    .collect();
                let mut line = serde_json::json!({
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "timestamp": message.timestamp,
                    "headers": headers,
                    "payload-base64": base64::engine::general_purpose::STANDARD.encode(&message.payload),
                });
                if let Some(key) = &message.key {
                    line["key"] = String::from_utf8(key.clone()).unwrap().into();
                }
                let read = read(&format!("{line}\n"));
                prop_assert_eq!(read.len(), 1);
                prop_assert_eq!(read[0].as_ref().unwrap(), &message);
            }

            /// Any text at all is messages or errors naming their line,
            /// never a panic.
            #[test]
            fn any_text_reads_as_messages_or_errors(
                lines in proptest::collection::vec(
                    prop_oneof![
                        ".{0,40}",
                        "\\{\"topic\":\"[a-z]{0,3}\",(\"payload(-base64)?\":[^,}]{0,8},?){0,2}(\"(partition|offset|key|timestamp|headers|history)\":[^,}]{0,8})?\\}",
                    ],
                    0..5,
                ),
            ) {
                let text = lines.join("\n");
                for result in read(&text) {
                    if let Err(error) = result {
                        prop_assert!(error.line >= 1, "{error}");
                    }
                }
            }
        }
    }
}
