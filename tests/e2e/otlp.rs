//! OTLP export against a real receiver: an HTTP server in the test that
//! decodes what the host posts with the official OpenTelemetry protocol
//! definitions (`opentelemetry-proto`), as a collector's OTLP/HTTP
//! receiver does. The spans must be the ones the host writes into
//! `traceparent` (so a trace joins the records that left the host), carry
//! the message's place and handler, and the metrics must be those of
//! `/metrics`. A receiver that never answers must cost the run nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;
use crate::traces::{INPUT_SPAN, TRACE, input, parts};

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// 200 to every export.
    Ok,
    /// Never: each request waits until the client gives up.
    Never,
}

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// Headers of every request.
    headers: Vec<HashMap<String, String>>,
}

/// An OTLP/HTTP receiver on a free port of 127.0.0.1.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let state = (received.clone(), answer);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .route("/v1/metrics", axum::routing::post(metrics))
            .with_state(state);
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            addr,
            received,
            _runtime: runtime,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        let received = self.received.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

type Shared = (Arc<Mutex<Received>>, Answer);

fn headers_of(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

async fn traces(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receive(shared, &headers, body, |r, request| r.traces.push(request)).await
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receive(shared, &headers, body, |r, request| r.metrics.push(request)).await
}

/// Decodes an export request as a collector does, and keeps it.
async fn receive<R: prost::Message + Default>(
    (received, answer): Shared,
    headers: &HeaderMap,
    body: Bytes,
    keep: fn(&mut Received, R),
) -> StatusCode {
    if answer == Answer::Never {
        std::future::pending::<()>().await;
    }
    let Ok(request) = R::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = received.lock().unwrap();
    keep(&mut received, request);
    received.headers.push(headers_of(headers));
    StatusCode::OK
}

/// A config in `scratch` routing `in` on `brokers` to `handler` (the test
/// component of that name), with `extra` config after the route.
fn route_config(scratch: &Scratch, brokers: &str, handler: &str, extra: &str) -> PathBuf {
    let handlers = scratch.handlers(&[(handler, "0.1.0", &component(handler))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"{handler}\"\npublish-to = [\"*\"]\n{extra}"
    );
    scratch.write("t.toml", config(brokers, "t", &handlers, &routes))
}

/// A host on `config`, with `env`, run until every input is handled.
fn run_to_end(scratch: &Scratch, config: &Path, env: &[(&str, &str)]) -> Exit {
    Host::start_with_env(scratch, "host", config, &["--until-drained"], env).wait_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(any_value::Value::StringValue(text)) => Some(text.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(any_value::Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

#[test]
fn spans_and_metrics_reach_an_otlp_receiver_with_the_ids_of_traceparent() {
    let receiver = Receiver::start(Answer::Ok);
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: std::time::Duration::ZERO,
    });
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker
        .produce(&[
            input(
                0,
                "hello",
                vec![
                    Header::new("traceparent", format!("00-{TRACE}-{INPUT_SPAN}-01")),
                    Header::new("x-correlation-id", "order-42"),
                ],
            ),
            input(1, "untraced", Vec::new()),
            input(2, &format!("http:{}", target.url("/hook")), Vec::new()),
            input(3, "reject", Vec::new()),
        ])
        .unwrap();
    let scratch = Scratch::new();
    let http = format!("[routes.http]\nallow = [\"{}\"]\n", target.host());
    let config = route_config(&scratch, brokers, "test-faults", &http);
    let endpoint = receiver.endpoint();
    // Logs at `warn`: spans are exported whatever level the logs are at.
    run_to_end(
        &scratch,
        &config,
        &[
            ("RUST_LOG", "warn"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "orders-service"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k1"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );

    let received = receiver.received.lock().unwrap();
    assert!(!received.traces.is_empty(), "spans were exported");
    for headers in &received.headers {
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        assert_eq!(headers.get("api-key").map(String::as_str), Some("k1"));
    }
    let resource = received.traces[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert_eq!(
        text(&resource.attributes, "service.name").as_deref(),
        Some("orders-service")
    );
    assert_eq!(
        text(&resource.attributes, "deployment.environment").as_deref(),
        Some("test")
    );
    drop(received);
    let spans = receiver.spans();

    let message_span = |offset: i64| -> Span {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                text(&s.attributes, "sluice.span").as_deref() == Some("message")
                    && int(&s.attributes, "messaging.kafka.offset") == Some(offset)
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one message span for offset {offset}: {spans:#?}"
        );
        found[0].clone()
    };
    let children = |of: &Span, name: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| {
                s.parent_span_id == of.span_id
                    && text(&s.attributes, "sluice.span").as_deref() == Some(name)
            })
            .cloned()
            .collect()
    };

    // 1. A traced input: its span continues the input's trace, under the
    // input's span, with the message's place and handler.
    let first = message_span(0);
    assert_eq!(hex(&first.trace_id), TRACE);
    assert_eq!(hex(&first.parent_span_id), INPUT_SPAN);
    assert_eq!(first.name, "process in");
    assert_eq!(first.kind, SpanKind::Consumer as i32);
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", "in"),
        ("messaging.destination.partition.id", "0"),
        ("messaging.kafka.message.key", "k"),
        ("sluice.handler", "test-faults"),
        ("sluice.handler.version", "0.1.0"),
        ("sluice.correlation_id", "order-42"),
        ("sluice.outcome", "handled"),
    ] {
        assert_eq!(
            text(&first.attributes, key).as_deref(),
            Some(value),
            "{key}"
        );
    }
    assert!(first.status.is_none(), "{:?}", first.status);
    assert!(
        first.start_time_unix_nano > 0 && first.start_time_unix_nano <= first.end_time_unix_nano
    );

    let handle = children(&first, "handle");
    assert_eq!(handle.len(), 1, "a handle span under the message's");
    assert_eq!(handle[0].trace_id, first.trace_id);
    assert_eq!(handle[0].kind, SpanKind::Internal as i32);
    assert!(handle[0].start_time_unix_nano >= first.start_time_unix_nano);
    assert!(handle[0].end_time_unix_nano <= first.end_time_unix_nano);

    // Its publish: a producer span whose id is the one the record carries.
    let sends: Vec<Span> = children(&first, "output")
        .into_iter()
        .filter(|s| s.name == "send echo")
        .collect();
    assert_eq!(sends.len(), 1, "one send span for the publish");
    assert_eq!(sends[0].kind, SpanKind::Producer as i32);
    assert_eq!(sends[0].trace_id, first.trace_id);
    assert_eq!(int(&sends[0].attributes, "sluice.output.index"), Some(0));
    let echoed = read_topic(brokers, "echo");
    let record = echoed.iter().find(|r| r.payload == "hello").unwrap();
    let (trace, span) = parts(record.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_eq!(
        span,
        hex(&sends[0].span_id),
        "the next service's parent is the exported send span"
    );

    // 2. An untraced input is the root of a trace the record continues.
    let second = message_span(1);
    assert!(second.parent_span_id.is_empty());
    let record = echoed.iter().find(|r| r.payload == "untraced").unwrap();
    let (trace, span) = parts(record.header("traceparent").unwrap());
    assert_eq!(trace, hex(&second.trace_id));
    let send: Vec<Span> = children(&second, "output")
        .into_iter()
        .filter(|s| s.name == "send echo")
        .collect();
    assert_eq!(send.len(), 1);
    assert_eq!(span, hex(&send[0].span_id));

    // 3. An HTTP effect: a client span whose id the request carried.
    let third = message_span(2);
    let calls: Vec<Span> = children(&third, "output")
        .into_iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "http");
    assert_eq!(
        text(&calls[0].attributes, "url.full"),
        Some(target.url("/hook"))
    );
    let requests = target.received();
    let (trace, span) = parts(requests[0].header("traceparent").unwrap());
    assert_eq!(
        (trace, span),
        (hex(&third.trace_id), hex(&calls[0].span_id))
    );

    // 4. A dead-lettered message: an error, with the host's warning as an event.
    let fourth = message_span(3);
    assert_eq!(
        text(&fourth.attributes, "sluice.outcome").as_deref(),
        Some("dead-lettered")
    );
    let status = fourth.status.clone().expect("a status");
    assert_eq!(status.code, SpanStatus::Error as i32);
    let event = fourth
        .events
        .iter()
        .find(|e| e.name == "dead-lettering message")
        .unwrap_or_else(|| panic!("the dead-letter warning is an event: {fourth:#?}"));
    assert_eq!(
        text(&event.attributes, "sluice.reason").as_deref(),
        Some("rejected")
    );

    // The metrics of `/metrics`, the last export counting every input.
    let received = receiver.received.lock().unwrap();
    let last = received.metrics.last().expect("metrics were exported");
    let metrics = &last.resource_metrics[0].scope_metrics[0].metrics;
    let consumed = metrics
        .iter()
        .find(|m| m.name == "sluice_consumed")
        .expect("sluice_consumed");
    let Some(metric::Data::Sum(sum)) = &consumed.data else {
        panic!("a counter is a sum: {consumed:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsInt(4))
    );
    // The export's own counts are among them: nothing dropped here.
    let dropped = metrics
        .iter()
        .find(|m| m.name == "sluice_otlp_spans_dropped")
        .expect("sluice_otlp_spans_dropped");
    let Some(metric::Data::Sum(dropped)) = &dropped.data else {
        panic!("a counter is a sum: {dropped:?}")
    };
    assert_eq!(dropped.data_points.len(), 2, "one series per reason");
    for point in &dropped.data_points {
        assert_eq!(
            point.value,
            Some(number_data_point::Value::AsInt(0)),
            "{point:?}"
        );
    }
    let stages = metrics
        .iter()
        .find(|m| m.name == "sluice_stage_seconds")
        .expect("stage histogram");
    let Some(metric::Data::Histogram(histogram)) = &stages.data else {
        panic!("a histogram: {stages:?}")
    };
    let point = &histogram.data_points[0];
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
}

#[test]
fn a_receiver_that_never_answers_costs_the_run_nothing_and_drops_are_counted() {
    let receiver = Receiver::start(Answer::Never);
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 2).unwrap();
    let inputs: Vec<Message> = (0..400)
        .map(|i| message("in", i % 2, &format!("k{i}"), &format!("m{i}")))
        .collect();
    broker.produce(&inputs).unwrap();
    let scratch = Scratch::new();
    let config = route_config(&scratch, brokers, "test-faults", "");
    let endpoint = receiver.endpoint();
    let exit = run_to_end(
        &scratch,
        &config,
        &[
            // sluice's own rule for the [otlp] section, over OTEL_*.
            ("SLUICE_OTLP_ENDPOINT", &endpoint),
            ("SLUICE_OTLP_MAX_QUEUED_SPANS", "50"),
            ("SLUICE_OTLP_TIMEOUT_MS", "300"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ],
    );
    assert_eq!(count(brokers, "echo"), 400, "every input was handled");
    assert_committed_to_the_end(brokers, "t");
    let log = log_of(&scratch, "host");
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("OTLP export failed"))
        .collect();
    assert_eq!(failures.len(), 1, "one line for a failing receiver:\n{log}");
    assert!(failures[0].contains(&endpoint), "{}", failures[0]);
    let dropped = log
        .lines()
        .find(|l| l.contains("some spans were not exported"))
        .unwrap_or_else(|| panic!("drops are reported:\n{log}"));
    let count_of = |field: &str| -> u64 {
        let at = dropped
            .find(&format!("{field}="))
            .unwrap_or_else(|| panic!("{field} in {dropped}"));
        dropped[at + field.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count_of("dropped_queue_full") > 0, "{dropped}");
    assert_eq!(count_of("exported"), 0, "{dropped}");
    assert!(exit.status.success());
}

#[test]
fn check_asks_the_receiver_and_refuses_a_protocol_sluice_does_not_speak() {
    let receiver = Receiver::start(Answer::Ok);
    let scratch = Scratch::new();
    let config = route_config(&scratch, "embedded", "test-faults", "");
    let endpoint = receiver.endpoint();
    let (ok, said) = check(&config, &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert!(ok, "{said}");
    for signal in ["spans to {e}/v1/traces", "metrics to {e}/v1/metrics"] {
        let line = format!(
            "ok: otlp: {}, which answers",
            signal.replace("{e}", &endpoint)
        );
        assert!(said.lines().any(|l| l == line), "{line:?} not in:\n{said}");
    }
    assert_eq!(
        receiver.received.lock().unwrap().headers.len(),
        2,
        "one empty export per signal"
    );

    // A receiver that is not there: a warning, not a failure (a host runs
    // without it).
    let (ok, said) = check(
        &config,
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert!(ok, "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("warning: otlp: spans to http://127.0.0.1:9/v1/traces")),
        "{said}"
    );

    // gRPC is not spoken: refused, naming the variable and what is.
    let (ok, said) = check(
        &config,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert!(!ok);
    assert!(
        said.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && said.contains("http/protobuf"),
        "{said}"
    );
}

#[test]
fn a_deciders_stream_id_and_decide_spans_are_children_of_its_message() {
    let receiver = Receiver::start(Answer::Ok);
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker
        .produce(&[message("in", 0, "k", "s1:add:a")])
        .unwrap();
    let scratch = Scratch::new();
    let store = format!("\n[store]\npath = {:?}\n", scratch.path().join("events.db"));
    let config = route_config(&scratch, brokers, "test-decider", &store);
    let endpoint = receiver.endpoint();
    run_to_end(
        &scratch,
        &config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let spans = receiver.spans();
    let named = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| text(&s.attributes, "sluice.span").as_deref() == Some(name))
            .collect()
    };
    let messages = named("message");
    assert_eq!(messages.len(), 1, "{spans:#?}");
    let message = messages[0];
    for name in ["stream-id", "decide"] {
        let found = named(name);
        assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
        assert_eq!(found[0].parent_span_id, message.span_id, "{name}'s parent");
        assert_eq!(found[0].trace_id, message.trace_id);
    }
    let decide = named("decide")[0];
    assert_eq!(
        text(&decide.attributes, "sluice.stream").as_deref(),
        Some("s1")
    );
    let sends: Vec<&Span> = named("output")
        .into_iter()
        .filter(|s| s.kind == SpanKind::Producer as i32)
        .collect();
    assert_eq!(sends.len(), 1, "the decision's publish: {spans:#?}");
    assert_eq!(sends[0].parent_span_id, message.span_id);
}
