//! The contract between host and handler, as plain Rust values.
//!
//! These types do not depend on any one version of the WIT package: each
//! contract version's bindings (see `runtime::bindings`) convert into them, so
//! everything after the handler call works the same whichever version a
//! component was built against.

use std::fmt;

/// A message header: a name and raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Raw header value.
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a name and any byte-like value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One consumed message, whatever source it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic the message was consumed from.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<Vec<u8>>,
    /// Message payload.
    pub payload: Vec<u8>,
    /// Message headers, in order.
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; 0 when the source has none.
    pub timestamp: u64,
}

impl Message {
    /// The message's place in its source, for logs and dead-letter headers.
    pub fn id(&self) -> MessageId<'_> {
        MessageId(self)
    }
}

/// Displays a message as `topic[partition]@offset`.
pub struct MessageId<'a>(&'a Message);

impl fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]@{}",
            self.0.topic, self.0.partition, self.0.offset
        )
    }
}

/// Publish a record to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Destination topic.
    pub topic: String,
    /// Record key, if any.
    pub key: Option<Vec<u8>>,
    /// Record payload.
    pub payload: Vec<u8>,
    /// Record headers (the host adds `sluice-id`).
    pub headers: Vec<Header>,
}

/// Severity of a handler's log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very verbose detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The level's lowercase name, as used in the WIT contract.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A log line a handler asked the host to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Severity.
    pub level: LogLevel,
    /// The text, written as given.
    pub text: String,
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
}

impl HttpMethod {
    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Options => "OPTIONS",
        }
    }
}

/// An HTTP request a handler asked the host to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// The absolute URL (http or https).
    pub url: String,
    /// Request headers (the host adds `sluice-id`).
    pub headers: Vec<Header>,
    /// The body; empty for none.
    pub body: Vec<u8>,
}

/// A record to publish later: a timer (contract 0.4 and later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The handler's id for it, scoped to the route; scheduling a pending
    /// id again replaces it.
    pub id: String,
    /// When to publish, in milliseconds since the Unix epoch.
    pub due: u64,
    /// What to publish.
    pub publish: Publish,
}

/// A side effect a handler asked the host to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Publish a record.
    Publish(Publish),
    /// Write a log line.
    Log(LogEntry),
    /// Make an HTTP request (contract 0.2 and later).
    Http(HttpRequest),
    /// Publish a record when it is due (contract 0.4 and later).
    Schedule(Schedule),
    /// Cancel the pending timer with this id (contract 0.4 and later).
    Cancel(String),
}

impl Output {
    /// Whether running it waits on something outside the host besides the
    /// producer's queue (an HTTP target, the store).
    pub(crate) fn waits(&self) -> bool {
        matches!(
            self,
            Output::Http(_) | Output::Schedule(_) | Output::Cancel(_)
        )
    }

    /// The bytes of data it carries (names, keys, payloads, headers, texts,
    /// URLs, bodies), which the sandbox caps per call.
    pub fn size(&self) -> usize {
        let headers = |headers: &[Header]| -> usize {
            headers.iter().map(|h| h.name.len() + h.value.len()).sum()
        };
        let publish = |p: &Publish| {
            p.topic.len()
                + p.key.as_ref().map_or(0, Vec::len)
                + p.payload.len()
                + headers(&p.headers)
        };
        match self {
            Output::Publish(p) => publish(p),
            Output::Log(entry) => entry.text.len(),
            Output::Http(request) => {
                request.url.len() + headers(&request.headers) + request.body.len()
            }
            Output::Schedule(schedule) => schedule.id.len() + publish(&schedule.publish),
            Output::Cancel(id) => id.len(),
        }
    }
}

/// An event of a stream: what a decider decided happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened (the WIT field `type`), e.g. `CouponApplied`.
    pub kind: String,
    /// The event's data, encoded by the guest.
    pub data: Vec<u8>,
    /// The event's metadata, encoded by the guest.
    pub metadata: Vec<u8>,
}

impl Event {
    /// Its bytes (type, data, metadata), which the sandbox caps per call.
    pub fn size(&self) -> usize {
        self.kind.len() + self.data.len() + self.metadata.len()
    }
}

/// What a decider decided for one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Events to append to the message's stream.
    pub events: Vec<Event>,
    /// Outputs to run once the events are appended.
    pub outputs: Vec<Output>,
}

/// An error a handler returned. Handlers are deterministic, so none is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The message could not be decoded.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The message was read but a business rule refused it.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Any other failure the handler reports.
    #[error("failed: {0}")]
    Failed(String),
}

impl HandleError {
    /// The handler's own explanation.
    pub fn detail(&self) -> &str {
        match self {
            HandleError::InvalidInput(d) | HandleError::Rejected(d) | HandleError::Failed(d) => d,
        }
    }
}
