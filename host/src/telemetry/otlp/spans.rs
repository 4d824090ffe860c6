//! The host's `tracing` spans as OTLP spans. The `message` span already
//! carries the ids its outputs' `traceparent` headers are made of, and each
//! `output` span its own id; the layer exports exactly those, so a trace
//! in the collector joins the records and requests that left the host.
//! Spans without ids of their own (`handle`, `decide`, `stream-id`) get a
//! fresh span id in their message's trace.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::{Event as SpanEvent, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

use super::{key_value, queue};

/// Events (warnings and errors) kept per span; more are counted only.
const MAX_EVENTS: usize = 16;
/// Characters kept of a string attribute: keys and URLs come from
/// messages and handlers, and a span must not carry a payload's worth.
const MAX_VALUE_CHARS: usize = 1024;

/// The layer that hands the host's closed spans to the OTLP exporter while
/// one runs (and costs a flag check per span otherwise). Install it next
/// to the log layer: it has its own filter, so spans are exported whatever
/// level the logs are at.
pub fn span_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    SpanLayer.with_filter(Exporting)
}

struct SpanLayer;

/// Sluice's own spans, and its warnings and errors (as span events), only
/// while spans are exported.
struct Exporting;

fn wanted(meta: &Metadata<'_>) -> bool {
    let level = match meta.is_span() {
        true => Level::INFO,
        false => Level::WARN,
    };
    meta.target().starts_with("sluice") && *meta.level() <= level
}

impl<S> Filter<S> for Exporting {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        wanted(meta) && queue::exporting()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match wanted(meta) {
            // Asked each time: export starts and stops with a run.
            true => Interest::sometimes(),
            false => Interest::never(),
        }
    }
}

/// A span being recorded, in its `tracing` span's extensions.
struct Recording {
    name: &'static str,
    start: u64,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    parent_id: Option<[u8; 8]>,
    attributes: Vec<KeyValue>,
    events: Vec<SpanEvent>,
    dropped_events: u32,
    error: Option<String>,
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // A child is exported with its parent's trace; a root (a message)
        // only if the queue has room as it starts, so that a trace is
        // exported whole or not at all, and one that is not costs nothing
        // more.
        let parent = span.parent().map(|parent| {
            let extensions = parent.extensions();
            let parent = extensions.get::<Recording>()?;
            Some((parent.trace_id?, parent.span_id?))
        });
        let admitted = match parent {
            Some(parent) => parent.is_some(),
            None => queue::has_room(),
        };
        if !admitted {
            queue::dropped();
            return;
        }
        let mut recording = Recording {
            name: attrs.metadata().name(),
            start: now(),
            trace_id: None,
            span_id: None,
            parent_id: None,
            attributes: Vec::new(),
            events: Vec::new(),
            dropped_events: 0,
            error: None,
        };
        attrs.record(&mut Fields(&mut recording));
        if recording.trace_id.is_none() {
            match parent.flatten() {
                Some((trace_id, parent_id)) => {
                    recording.trace_id = Some(trace_id);
                    recording.parent_id = Some(parent_id);
                }
                None => recording.trace_id = Some(rand::random::<u128>().max(1).to_be_bytes()),
            }
        }
        if recording.span_id.is_none() {
            recording.span_id = Some(rand::random::<u64>().max(1).to_be_bytes());
        }
        span.extensions_mut().insert(recording);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(recording) = span.extensions_mut().get_mut::<Recording>()
        {
            values.record(&mut Fields(recording));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            let mut extensions = span.extensions_mut();
            let Some(recording) = extensions.get_mut::<Recording>() else {
                continue;
            };
            let mut fields = EventFields::default();
            event.record(&mut fields);
            // A handler's own error lines are its words, not the host's
            // verdict on the span.
            let host = event.metadata().target() != "sluice::handler";
            if *event.metadata().level() == Level::ERROR && host {
                recording.error = Some(fields.message.clone());
            }
            if recording.events.len() < MAX_EVENTS {
                recording.events.push(SpanEvent {
                    time_unix_nano: now(),
                    name: fields.message,
                    attributes: fields.attributes,
                    dropped_attributes_count: 0,
                });
            } else {
                recording.dropped_events += 1;
            }
            return;
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(recording) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        queue::push(recording.finish());
    }
}

impl Recording {
    fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn set(&mut self, key: Cow<'static, str>, value: any_value::Value) {
        match self.attributes.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value = Some(AnyValue { value: Some(value) }),
            None => self.attributes.push(key_value(key, value)),
        }
    }

    /// The OTLP span, ended now. Names and kinds follow OpenTelemetry's
    /// messaging conventions (`process <topic>`, `send <topic>`); the
    /// `tracing` name stays in `sluice.span`.
    fn finish(mut self) -> Span {
        let text = |value: Option<&any_value::Value>| match value {
            Some(any_value::Value::StringValue(text)) => Some(text.clone()),
            _ => None,
        };
        let topic = text(self.attribute(DESTINATION));
        let (name, kind) = match (self.name, topic) {
            ("message", Some(topic)) => (format!("process {topic}"), SpanKind::Consumer),
            ("output", Some(topic)) => (format!("send {topic}"), SpanKind::Producer),
            ("output", None) if self.attribute("url.full").is_some() => {
                ("http".to_owned(), SpanKind::Client)
            }
            (name, _) => (name.to_owned(), SpanKind::Internal),
        };
        if matches!(kind, SpanKind::Consumer | SpanKind::Producer) {
            self.set(
                "messaging.system".into(),
                any_value::Value::StringValue("kafka".into()),
            );
        }
        self.set(
            "sluice.span".into(),
            any_value::Value::StringValue(self.name.into()),
        );
        let dead = matches!(
            self.attribute("sluice.outcome"),
            Some(any_value::Value::StringValue(outcome)) if outcome == "dead-lettered"
        );
        if dead && self.error.is_none() {
            self.error = Some("dead-lettered".to_owned());
        }
        let status = self.error.map(|message| Status {
            message,
            code: status::StatusCode::Error as i32,
        });
        Span {
            trace_id: self.trace_id.unwrap_or_default().to_vec(),
            span_id: self.span_id.unwrap_or_default().to_vec(),
            trace_state: String::new(),
            parent_span_id: self.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0,
            name,
            kind: kind as i32,
            start_time_unix_nano: self.start,
            end_time_unix_nano: now(),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: self.events,
            dropped_events_count: self.dropped_events,
            links: Vec::new(),
            dropped_links_count: 0,
            status,
        }
    }
}

const DESTINATION: &str = "messaging.destination.name";

/// The attribute a span field becomes: OpenTelemetry's name where it has
/// one, else `sluice.<field>`.
fn attribute_name(field: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(match field {
        "topic" => DESTINATION,
        "partition" => "messaging.destination.partition.id",
        "offset" => "messaging.kafka.offset",
        "key" => "messaging.kafka.message.key",
        "url" => "url.full",
        "handler" => "sluice.handler",
        "version" => "sluice.handler.version",
        "correlation_id" => "sluice.correlation_id",
        "index" => "sluice.output.index",
        "stream" => "sluice.stream",
        other => return Cow::Owned(format!("sluice.{other}")),
    })
}

/// Records a span's fields into its `Recording`: ids as ids, the rest as
/// attributes.
struct Fields<'a>(&'a mut Recording);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.0.trace_id = unhex(value),
            "span_id" => self.0.span_id = unhex(value),
            "parent_span_id" => self.0.parent_id = unhex(value),
            name => self.0.set(
                attribute_name(name),
                any_value::Value::StringValue(clip(value)),
            ),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let value = match field.name() {
            // The conventions give the partition as a string.
            "partition" => any_value::Value::StringValue(value.to_string()),
            _ => any_value::Value::IntValue(value),
        };
        self.0.set(attribute_name(field.name()), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(
            attribute_name(field.name()),
            any_value::Value::BoolValue(value),
        );
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.set(
            attribute_name(field.name()),
            any_value::Value::DoubleValue(value),
        );
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// An event's message and its other fields.
#[derive(Default)]
struct EventFields {
    message: String,
    attributes: Vec<KeyValue>,
}

impl EventFields {
    fn push(&mut self, field: &Field, value: any_value::Value) {
        self.attributes
            .push(key_value(attribute_name(field.name()), value));
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = clip(value),
            _ => self.push(field, any_value::Value::StringValue(clip(value))),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, any_value::Value::IntValue(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, any_value::Value::BoolValue(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Lowercase or uppercase hex of exactly `N` bytes, not all zero.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    bytes.iter().any(|b| *b != 0).then_some(bytes)
}

/// Nanoseconds since the Unix epoch, as OTLP stamps spans.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
