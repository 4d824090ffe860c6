//! Shared by the benchmarks: built guests, input generation, the native
//! baseline of the order-shipped-email handler, and statistics.
// Each benchmark uses a different part of this module.
#![allow(dead_code)]

// The binary's allocator (host/src/main.rs), so sluice is measured as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use std::time::{Duration, Instant};

use sluice::contract::{Header, LogEntry, LogLevel, Message, Output, Publish};
use sluice::runtime::{CallError, Handler, HandlerInstance, Trap};
use sluice::telemetry::RunReport;
use sluice::{Config, RunOptions};

/// The guest's own logic, compiled natively: the baseline runs the same code.
#[path = "../../../guests/order-shipped-email/src/logic.rs"]
pub mod logic;
pub mod p1;

pub mod wait_server;

/// Runs sluice on config `text` until every message is handled and
/// committed; how long that took, and what it did.
pub async fn timed_run(text: &str) -> (Duration, RunReport) {
    let config = Config::parse(text, "bench.toml".as_ref(), ".".as_ref()).unwrap();
    let options = RunOptions {
        until_drained: true,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let report = sluice::run(&config, options, std::future::pending())
        .await
        .unwrap();
    (started.elapsed(), report)
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the guests (a no-op when up to date) and returns the handlers directory.
pub fn handlers_dir() -> PathBuf {
    let status = Command::new(repo().join("scripts/build-guests"))
        .status()
        .expect("run scripts/build-guests");
    assert!(status.success(), "scripts/build-guests failed");
    repo().join("guests/dist")
}

/// An embedded broker whose `order-shipped` topic holds `n` events of
/// `order_shipped`.
pub fn order_shipped_broker(n: usize, partitions: i32) -> sluice::embedded::EmbeddedBroker {
    let broker = sluice::embedded::EmbeddedBroker::start().unwrap();
    broker.create_topic("order-shipped", partitions).unwrap();
    broker.produce(&order_shipped(n, partitions)).unwrap();
    broker
}

/// A config routing `order-shipped` on `brokers` to the order-shipped-email
/// component in `handlers`, as group `group`, with `extra` config before
/// the route.
pub fn order_shipped_config(brokers: &str, handlers: &Path, group: &str, extra: &str) -> String {
    format!(
        r#"brokers = "{brokers}"
group-id = "{group}"
handlers-dir = "{}"
{extra}
[[routes]]
topic = "order-shipped"
handler = "order-shipped-email"
publish-to = ["email-requests"]
"#,
        handlers.display()
    )
}

/// `n` valid order-shipped events spread over `partitions` by order id.
pub fn order_shipped(n: usize, partitions: i32) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let order = format!("o-{i}");
            let payload = format!(
                r#"{{"orderId":"{order}","customer":{{"name":"Customer {i}","email":"c{i}@example.com"}},"carrier":"UPS","tracking":"1Z{i:016}","items":[{{"sku":"SKU-1","qty":1}},{{"sku":"SKU-2","qty":{}}}]}}"#,
                i % 5
            );
            Message {
                topic: "order-shipped".into(),
                partition: i as i32 % partitions,
                offset: (i as i32 / partitions) as i64,
                key: Some(order.into_bytes()),
                payload: payload.into_bytes(),
                headers: vec![Header::new("source", "bench")],
                timestamp: 1_767_225_600_000 + i as u64,
            }
        })
        .collect()
}

/// The outputs the order-shipped-email component returns, made natively.
pub fn native_outputs(payload: &[u8]) -> Result<Vec<Output>, CallError> {
    let email = logic::handle(payload).map_err(|refusal| {
        CallError::Handler(match refusal {
            logic::Refusal::InvalidInput(why) => sluice::contract::HandleError::InvalidInput(why),
            logic::Refusal::Rejected(why) => sluice::contract::HandleError::Rejected(why),
        })
    })?;
    Ok(vec![
        Output::Publish(Publish {
            topic: logic::OUTPUT_TOPIC.into(),
            key: Some(email.order_id.into_bytes()),
            payload: email.payload,
            headers: vec![Header::new("content-type", "application/json")],
        }),
        Output::Log(LogEntry {
            level: LogLevel::Info,
            text: email.log,
        }),
    ])
}

/// order-shipped-email as a native sluice handler.
pub struct NativeOrderShippedEmail;

impl Handler for NativeOrderShippedEmail {
    fn name(&self) -> &str {
        "order-shipped-email"
    }

    fn version(&self) -> &str {
        "native"
    }

    fn instantiate(&self) -> Result<Box<dyn HandlerInstance>, Trap> {
        Ok(Box::new(NativeOrderShippedEmail))
    }
}

impl HandlerInstance for NativeOrderShippedEmail {
    fn handle(&mut self, msg: &Message) -> Result<Vec<Output>, CallError> {
        native_outputs(&msg.payload)
    }
}

pub fn native_handler() -> Arc<dyn Handler> {
    Arc::new(NativeOrderShippedEmail)
}

/// CPU time this process has used so far (all threads).
pub fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Microseconds per call: each message handled on the instance its
/// strategy gives (one for all, or a new one for each).
pub fn per_call(handler: &Arc<dyn Handler>, messages: &[Message], fresh: bool) -> f64 {
    let started = Instant::now();
    let mut instance = handler.instantiate().unwrap();
    for msg in messages {
        if fresh {
            instance = handler.instantiate().unwrap();
        }
        let outputs = instance.handle(msg).unwrap();
        assert_eq!(outputs.len(), 2);
    }
    started.elapsed().as_secs_f64() * 1e6 / messages.len() as f64
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A test guest's component (built by `handlers_dir`).
pub fn test_component(crate_name: &str) -> PathBuf {
    repo().join(format!(
        "guests/target/wasm32-wasip2/release/{}.wasm",
        crate_name.replace('-', "_")
    ))
}

/// The component with a custom section appended: the same code, another
/// content hash (so another artifact to compile and cache).
pub fn with_custom_section(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"sluice-bench";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section
    leb128(body.len(), &mut bytes);
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes `bytes` under a temporary name and renames it into place, as a
/// deployment would.
pub fn deploy(bytes: &[u8], target: &Path) {
    let partial = target.with_extension("part");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(&partial, target).unwrap();
}

/// A process's resident memory, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes as MiB, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The `p`-th percentile (0–100) of `values`.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

/// A consumer reading every partition of `topic` from the start, quickly
/// (the latency and swap benchmarks read their outputs with it).
pub fn reader(brokers: &str, topic: &str, partitions: i32) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-bench-reader"))
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// The handler version an output's `sluice-handler-version` header names.
pub fn version_of(record: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    use rdkafka::message::{Headers, Message as _};
    record
        .headers()
        .and_then(|hs| hs.iter().find(|h| h.key == "sluice-handler-version"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
