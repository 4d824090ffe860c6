//! T1/T2: timers. A host (a process of its own) serving `test-timers` gets
//! 100,000 messages, each scheduling one timer; the timers come due over
//! 5 s, starting `LEAD` after the messages were produced, so all of them
//! are pending at once. Measured from outside: each fired record's broker
//! timestamp (set when the host published it) minus its due time, and the
//! host's resident memory with every timer pending against before them,
//! after a warm-up of as many messages that each cancel a timer (the same
//! way through the host and a store write each, leaving nothing pending),
//! so that the ratio is what pending timers cost, not what handling
//! 100,000 messages does to the allocator. On SQLite, then PostgreSQL (127.0.0.1:5432,
//! a schema of its own). Goals: p99 lateness ≤ 100 ms, RSS ratio ≤ 1.1.
//! T1 and T2 report the worse of the two stores (`TIMERS_ONLY=Sqlite` or
//! `Postgres` runs one).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;

const TIMERS: usize = 100_000;
const PARTITIONS: i32 = 4;
/// From producing the messages to the first due time: long enough for the
/// host to schedule them all first.
const LEAD: Duration = Duration::from_secs(30);
/// Over how long the timers come due.
const SPREAD_MS: u64 = 5_000;
const PATIENCE: Duration = Duration::from_secs(180);

fn main() {
    support::handlers_dir();
    let mut worst = (0.0f64, 0.0f64);
    let only = std::env::var("TIMERS_ONLY").ok();
    for store in [Store::Sqlite, Store::Postgres] {
        if only.as_deref().is_some_and(|o| o != format!("{store:?}")) {
            continue;
        }
        let (p99, ratio) = run(store);
        worst = (worst.0.max(p99), worst.1.max(ratio));
    }
    println!("RESULT T1 {:.1} ms", worst.0);
    println!("RESULT T2 {:.2} ratio", worst.1);
}

#[derive(Clone, Copy, Debug)]
enum Store {
    Sqlite,
    Postgres,
}

/// One store's round: its p99 lateness (ms) and RSS ratio.
fn run(store: Store) -> (f64, f64) {
    let scratch = tempfile::tempdir().unwrap();
    let handlers = scratch.path().join("handlers");
    let component = support::test_component("test-timers");
    std::fs::create_dir_all(handlers.join("test-timers")).unwrap();
    support::deploy(
        &std::fs::read(component).unwrap(),
        &handlers.join("test-timers/0.1.0.wasm"),
    );
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    for (topic, partitions) in [("in", PARTITIONS), ("in.dlq", 1), ("fired", PARTITIONS)] {
        broker.create_topic(topic, partitions).unwrap();
    }
    let store_section = match store {
        Store::Sqlite => format!("[store]\npath = {:?}\n", scratch.path().join("timers.db")),
        Store::Postgres => format!(
            "[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 port=5432 user=postgres dbname=test\"\nschema = \"bench_timers_{}_{}\"\n",
            std::process::id(),
            now_ms()
        ),
    };
    let config = scratch.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"brokers = "{brokers}"
group-id = "timers"
handlers-dir = "{}"

[[routes]]
topic = "in"
handler = "test-timers"
publish-to = ["fired"]

{store_section}"#,
            handlers.display()
        ),
    )
    .unwrap();
    let mut host = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rss = || support::rss_of(host.id());
    let fired = support::reader(&brokers, "fired", PARTITIONS);

    // Warm up: one timer due at once, so the store is open and the firing
    // path has run; then as many cancels as there will be timers.
    broker
        .produce(&[command(0, &format!("at warm-up {} fired 0", now_ms()))])
        .unwrap();
    let mut lateness = Vec::with_capacity(TIMERS);
    read_fired(&fired, 1, &mut Vec::new());
    let cancels: Vec<Message> = (0..TIMERS)
        .map(|i| command(i, &format!("cancel w{i}")))
        .collect();
    broker.produce(&cancels).unwrap();
    wait_committed(&brokers, TIMERS as i64 + 1);
    let before = rss();

    let first_due = now_ms() + LEAD.as_millis() as u64;
    let messages: Vec<Message> = (0..TIMERS)
        .map(|i| {
            let due = first_due + i as u64 * SPREAD_MS / TIMERS as u64;
            command(i, &format!("at t{i} {due} fired {due}"))
        })
        .collect();
    let started = Instant::now();
    broker.produce(&messages).unwrap();
    wait_committed(&brokers, 2 * TIMERS as i64 + 1);
    let scheduled_in = started.elapsed();
    let after = rss();
    assert!(
        now_ms() < first_due,
        "scheduling took {scheduled_in:?}, longer than the lead of {LEAD:?}: lateness would measure the backlog"
    );
    read_fired(&fired, TIMERS, &mut lateness);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    assert!(host.wait().unwrap().success());

    let (p50, p99, max) = (
        support::percentile(&lateness, 50.0),
        support::percentile(&lateness, 99.0),
        support::percentile(&lateness, 100.0),
    );
    println!(
        "{store:?}: {TIMERS} timers scheduled in {:.1} s ({:.0}/s); lateness p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; host RSS after the cancels {:.1} MiB, with all pending {:.1} MiB",
        scheduled_in.as_secs_f64(),
        TIMERS as f64 / scheduled_in.as_secs_f64(),
        support::mib(before),
        support::mib(after),
    );
    (p99, after as f64 / before as f64)
}

/// The message scheduling timer `i` by `text`.
fn command(i: usize, text: &str) -> Message {
    Message {
        topic: "in".into(),
        partition: (i % PARTITIONS as usize) as i32,
        offset: 0,
        key: Some(format!("k{}", i % 64).into_bytes()),
        payload: text.as_bytes().to_vec(),
        headers: vec![Header::new("bench", "timers")],
        timestamp: 0,
    }
}

/// Reads `n` fired records; each one's lateness (its timestamp minus the
/// due time its payload holds) in ms.
fn read_fired(fired: &BaseConsumer, n: usize, lateness: &mut Vec<f64>) {
    let started = Instant::now();
    let mut read = 0;
    while read < n {
        assert!(
            started.elapsed() < PATIENCE,
            "only {read} of {n} timers fired"
        );
        let Some(record) = fired.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = record.unwrap();
        let due: u64 = std::str::from_utf8(record.payload().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let at = record.timestamp().to_millis().unwrap() as u64;
        lateness.push(at.saturating_sub(due) as f64);
        read += 1;
    }
}

/// Waits until the group committed `total` offsets of `in` in all.
fn wait_committed(brokers: &str, total: i64) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "timers")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("in", p);
    }
    let started = Instant::now();
    loop {
        let committed: i64 = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .map(|list| {
                list.elements()
                    .iter()
                    .filter_map(|e| e.offset().to_raw())
                    .filter(|o| *o > 0)
                    .sum()
            })
            .unwrap_or(0);
        if committed >= total {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "only {committed} of {total} inputs committed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
