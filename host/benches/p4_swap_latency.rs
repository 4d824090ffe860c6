//! P4: end-to-end latency while a handler version is swapped in. A steady
//! 2,000 messages/s stream runs through `test-echo` for 12 s; at 6 s a new
//! version (same code, another content hash, so it is compiled for real) is
//! dropped into the handlers directory. Latency is from the producer's send
//! to the echo's arrival at a consumer, both in this process. The swap's
//! second starts when the file lands and lasts at least a second, and at
//! least half a second past the first output of the new version. Goal:
//! p99 in that second ≤ 2× the steady p99 (from 2 s to 0.5 s before the drop).

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::embedded::EmbeddedBroker;
use sluice::{Config, RunOptions};

const PARTITIONS: i32 = 4;
const RATE_PER_TICK: usize = 20;
const TICK: Duration = Duration::from_millis(10);
const RUN: Duration = Duration::from_secs(12);
const DROP_AT: Duration = Duration::from_secs(6);

/// An echo's arrival: when, how long after it was sent, and which version made it.
struct Arrival {
    at: Duration,
    latency: Duration,
    version: String,
}

fn main() {
    support::handlers_dir();
    let scratch = tempfile::tempdir().unwrap();
    let handlers = scratch.path().join("handlers");
    std::fs::create_dir_all(handlers.join("test-echo")).unwrap();
    let echo = std::fs::read(support::test_component("test-echo")).unwrap();
    std::fs::write(handlers.join("test-echo/1.0.0.wasm"), &echo).unwrap();

    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    broker.create_topic("in", PARTITIONS).unwrap();
    broker.create_topic("echo", PARTITIONS).unwrap();
    let config = config(&brokers, &handlers, scratch.path());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = runtime.spawn(async move {
        let options = RunOptions::default();
        sluice::run(&config, options, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });

    // Sent one by one, never waiting for acks: the stream stays steady.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let epoch = Instant::now();
    let arrivals = Mutex::new(Vec::new());
    let all_arrived = AtomicBool::new(false);
    let mut dropped_at = Duration::ZERO;
    let sent = std::thread::scope(|s| {
        let reader = s.spawn(|| read_echoes(&brokers, epoch, &arrivals, &all_arrived));
        let mut sent = 0;
        while epoch.elapsed() < RUN {
            let tick_start = epoch.elapsed();
            for i in 0..RATE_PER_TICK {
                send(&producer, sent + i, epoch.elapsed());
            }
            producer.poll(Duration::ZERO);
            sent += RATE_PER_TICK;
            if dropped_at == Duration::ZERO && tick_start >= DROP_AT {
                let next = support::with_custom_section(&echo, "2.0.0");
                support::deploy(&next, &handlers.join("test-echo/2.0.0.wasm"));
                dropped_at = epoch.elapsed();
            }
            if let Some(rest) = (tick_start + TICK).checked_sub(epoch.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrivals.lock().unwrap().len() < sent {
            assert!(Instant::now() < deadline, "echoes missing");
            std::thread::sleep(Duration::from_millis(20));
        }
        all_arrived.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        sent
    });
    let _ = stop.send(());
    runtime.block_on(host).unwrap();

    let arrivals = arrivals.into_inner().unwrap();
    assert_eq!(arrivals.len(), sent, "every message echoed once");
    let swapped_at = arrivals
        .iter()
        .filter(|a| a.version == "2.0.0")
        .map(|a| a.at)
        .min()
        .expect("the new version served");
    let swap_end =
        (dropped_at + Duration::from_secs(1)).max(swapped_at + Duration::from_millis(500));
    let ms = |a: &Arrival| a.latency.as_secs_f64() * 1000.0;
    let steady: Vec<f64> = arrivals
        .iter()
        .filter(|a| {
            a.at >= Duration::from_secs(2) && a.at + Duration::from_millis(500) < dropped_at
        })
        .map(ms)
        .collect();
    let swap: Vec<f64> = arrivals
        .iter()
        .filter(|a| a.at >= dropped_at && a.at <= swap_end)
        .map(ms)
        .collect();
    let (steady_p99, swap_p99) = (
        support::percentile(&steady, 99.0),
        support::percentile(&swap, 99.0),
    );
    println!(
        "{sent} messages at {} msg/s; new version dropped at {:.2} s, first served at {:.2} s",
        RATE_PER_TICK as u128 * 1000 / TICK.as_millis(),
        dropped_at.as_secs_f64(),
        swapped_at.as_secs_f64()
    );
    println!(
        "steady: {} messages, p50 {:.2} ms, p99 {steady_p99:.2} ms; swap second: {} messages, p50 {:.2} ms, p99 {swap_p99:.2} ms, max {:.2} ms",
        steady.len(),
        support::percentile(&steady, 50.0),
        swap.len(),
        support::percentile(&swap, 50.0),
        support::percentile(&swap, 100.0),
    );
    println!("RESULT P4 {:.2} ratio", swap_p99 / steady_p99);
}

fn config(brokers: &str, handlers: &Path, scratch: &Path) -> Config {
    let text = format!(
        r#"brokers = "{brokers}"
group-id = "p4"
handlers-dir = "{}"
artifact-cache = "{}"
handler-settle-ms = 100

[kafka.consumer]
"fetch.wait.max.ms" = "5"

[kafka.producer]
"linger.ms" = "1"

[[routes]]
topic = "in"
handler = "test-echo"
publish-to = ["echo"]
"#,
        handlers.display(),
        scratch.join("cache").display()
    );
    Config::parse(&text, "bench.toml".as_ref(), ".".as_ref()).unwrap()
}

/// Sends message `n`, its send time in its payload.
fn send(producer: &BaseProducer, n: usize, sent: Duration) {
    let key = format!("k{}", n % 64);
    let payload = sent.as_micros().to_string();
    let record = BaseRecord::to("in")
        .partition((n % 64 % PARTITIONS as usize) as i32)
        .key(&key)
        .payload(&payload);
    producer.send(record).map_err(|(e, _)| e).unwrap();
}

fn read_echoes(
    brokers: &str,
    epoch: Instant,
    arrivals: &Mutex<Vec<Arrival>>,
    all_arrived: &AtomicBool,
) {
    let consumer = support::reader(brokers, "echo", PARTITIONS);
    let deadline = Instant::now() + RUN + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(record) = consumer.poll(Duration::from_millis(50)) else {
            if all_arrived.load(Ordering::SeqCst) {
                return;
            }
            continue;
        };
        let record = record.unwrap();
        let at = epoch.elapsed();
        let sent: u64 = std::str::from_utf8(record.payload().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let version = support::version_of(&record).unwrap();
        arrivals.lock().unwrap().push(Arrival {
            at,
            latency: at - Duration::from_micros(sent),
            version,
        });
    }
}
