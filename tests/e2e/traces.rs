//! Tracing across outputs: a host logging JSON (`--log-format json`, one
//! line per span closed) is the span collector. A message's span continues
//! the W3C trace of its input's `traceparent`; its `handle` and `output`
//! spans are its children; every published output and HTTP request carries
//! a `traceparent` naming its own output span, so the next service joins
//! the same trace. The correlation id is logged and copied onto outputs.

use serde_json::Value;
use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;

/// The trace and span of the `traceparent` the tests' inputs carry.
pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(crate) const INPUT_SPAN: &str = "00f067aa0ba902b7";
const HTTP_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// An input on `in`, partition 0, key `k`.
pub(crate) fn input(offset: i64, payload: &str, headers: Vec<Header>) -> Message {
    Message {
        topic: "in".into(),
        partition: 0,
        offset,
        key: Some(b"k".to_vec()),
        payload: payload.as_bytes().to_vec(),
        headers,
        timestamp: 0,
    }
}

/// The closed spans in a JSON log: each span's own fields (with its
/// name) and the fields of the spans it was inside, outermost first.
fn closed_spans(log: &str) -> Vec<(Value, Vec<Value>)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "close")
        .map(|line| {
            let parents = line["spans"].as_array().cloned().unwrap_or_default();
            (line["span"].clone(), parents)
        })
        .collect()
}

/// `00-<trace>-<span>-<flags>` split into its parts.
pub(crate) fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!((fields[0], fields[3]), ("00", "01"), "{traceparent}");
    (fields[1].to_owned(), fields[2].to_owned())
}

#[test]
fn spans_follow_a_message_into_its_outputs_and_traceparent_crosses_services() {
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: std::time::Duration::ZERO,
    });
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let traceparent =
        |trace: &str| Header::new("traceparent", format!("00-{trace}-{INPUT_SPAN}-01"));
    broker
        .produce(&[
            input(
                0,
                "hello",
                vec![
                    traceparent(TRACE),
                    Header::new("x-correlation-id", "order-42"),
                ],
            ),
            input(
                1,
                &format!("http:{}", target.url("/hook")),
                vec![traceparent(HTTP_TRACE)],
            ),
            input(2, "untraced", Vec::new()),
        ])
        .unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n[routes.http]\nallow = [\"{}\"]\n",
        target.host()
    );
    let config = scratch.write("t.toml", config(brokers, "t", &handlers, &routes));
    Host::start(
        &scratch,
        "host",
        &config,
        &["--until-drained", "--log-format", "json"],
    )
    .wait_ok();
    let spans = closed_spans(&log_of(&scratch, "host"));

    let message_span = |offset: i64| -> Value {
        let found: Vec<_> = spans
            .iter()
            .filter(|(span, _)| span["name"] == "message" && span["offset"] == offset)
            .map(|(span, _)| span.clone())
            .collect();
        assert_eq!(found.len(), 1, "one message span for offset {offset}");
        found[0].clone()
    };
    let children = |of: &Value, name: &str| -> Vec<Value> {
        spans
            .iter()
            .filter(|(span, parents)| {
                span["name"] == name
                    && parents
                        .iter()
                        .any(|p| p["name"] == "message" && p["span_id"] == of["span_id"])
            })
            .map(|(span, _)| span.clone())
            .collect()
    };

    // 1. A traced input: its span continues the trace, its output names a child span.
    let first = message_span(0);
    assert_eq!(first["trace_id"], TRACE);
    assert_eq!(first["parent_span_id"], INPUT_SPAN);
    assert_eq!(first["correlation_id"], "order-42");
    assert_eq!(first["handler"], "test-faults");
    assert_eq!(children(&first, "handle").len(), 1, "a handle span");
    let outputs: Vec<_> = children(&first, "output")
        .into_iter()
        .filter(|o| o["topic"] == "echo")
        .collect();
    assert_eq!(outputs.len(), 1, "one output span for the publish");
    assert_eq!(outputs[0]["index"], 0);
    let echoed = read_topic(brokers, "echo");
    let record = echoed.iter().find(|r| r.payload == "hello").unwrap();
    let traceparents: Vec<_> = record
        .headers
        .iter()
        .filter(|(n, _)| n == "traceparent")
        .collect();
    assert_eq!(
        traceparents.len(),
        1,
        "the guest's copy is replaced, not added to"
    );
    let (trace, span) = parts(&traceparents[0].1);
    assert_eq!(trace, TRACE, "the output stays in the input's trace");
    assert_eq!(span, outputs[0]["span_id"], "and names its own output span");
    assert_ne!(span, INPUT_SPAN);
    assert_eq!(record.header("x-correlation-id"), Some("order-42"));

    // 2. An HTTP effect carries its span to the target.
    let second = message_span(1);
    let requests = target.received();
    assert_eq!(requests.len(), 1);
    let (trace, span) = parts(requests[0].header("traceparent").expect("traceparent sent"));
    assert_eq!(trace, HTTP_TRACE);
    let http_spans: Vec<_> = children(&second, "output")
        .into_iter()
        .filter(|o| o.get("url").is_some())
        .collect();
    assert_eq!(http_spans.len(), 1);
    assert_eq!(span, http_spans[0]["span_id"]);
    assert_eq!(http_spans[0]["url"], target.url("/hook"));

    // 3. An untraced input starts a trace of its own.
    let third = message_span(2);
    assert!(third.get("parent_span_id").is_none(), "{third}");
    let record = echoed.iter().find(|r| r.payload == "untraced").unwrap();
    let (trace, _) = parts(record.header("traceparent").unwrap());
    assert_eq!(trace, third["trace_id"]);
    assert_ne!(trace, TRACE);
    assert!(record.header("x-correlation-id").is_none());
}
