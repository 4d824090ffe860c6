//! O1: what exporting spans over OTLP costs the message path. The run of
//! P1 (the Rust order-shipped-email component on the embedded broker, in
//! this process), under the binary's subscriber (text logs at `info`, here
//! to a sink, and the OTLP spans' layer), once with no endpoint and once
//! exporting spans and metrics to an OTLP/HTTP receiver on its own thread
//! that decodes every request, as a collector beside the host would.
//! Prints `RESULT O1 <rate exporting / rate not exporting> ratio` (median
//! over the rounds), and how many spans per message the receiver got:
//! what did not fit the queue was dropped, by design, not waited for.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 16;
const ROUNDS: usize = 3;

fn main() {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(logs)
        .with(sluice::telemetry::otlp::span_layer())
        .init();
    let handlers = support::handlers_dir();
    let (receiver, spans) = receiver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = support::order_shipped_broker(MESSAGES, PARTITIONS);
    let brokers = broker.bootstrap_servers().to_owned();
    let config =
        |group: &str, otlp: &str| support::order_shipped_config(&brokers, &handlers, group, otlp);
    let exporting =
        format!("[otlp]\nendpoint = \"http://{receiver}\"\nmetrics-interval-ms = 1000\n");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let run = |text: String| {
            let (took, report) = runtime.block_on(support::timed_run(&text));
            assert_eq!(report.published as usize, MESSAGES);
            MESSAGES as f64 / took.as_secs_f64()
        };
        let rate = run(config(&format!("off-{round}"), ""));
        println!("round {round}: not exporting {rate:.0} msg/s");
        off.push(rate);
        let before = spans.load(Ordering::Relaxed);
        let rate = run(config(&format!("on-{round}"), &exporting));
        let received = spans.load(Ordering::Relaxed) - before;
        println!(
            "round {round}: exporting {rate:.0} msg/s; the receiver got {received} spans ({:.2} per message)",
            received as f64 / MESSAGES as f64
        );
        assert!(received > 0, "spans reached the receiver");
        on.push(rate);
    }
    let (off, on) = (support::median(off), support::median(on));
    println!(
        "median over {ROUNDS} rounds of {MESSAGES} messages: not exporting {off:.0} msg/s, exporting {on:.0} msg/s"
    );
    println!("RESULT O1 {:.2} ratio", on / off);
}

/// An OTLP/HTTP receiver on its own runtime thread: its address, and the
/// spans it decoded so far.
fn receiver() -> (SocketAddr, Arc<AtomicU64>) {
    let spans = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let counted = spans.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new()
                .route("/v1/traces", axum::routing::post(traces))
                .route("/v1/metrics", axum::routing::post(|| async {}))
                .with_state(counted);
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (addr, spans)
}

async fn traces(State(spans): State<Arc<AtomicU64>>, body: Bytes) {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let count = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum::<u64>();
    spans.fetch_add(count, Ordering::Relaxed);
}
