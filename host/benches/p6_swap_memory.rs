//! P6: memory across swaps. A host serving `test-echo` gets 100 new
//! versions one after another (each with its own content hash, so each is
//! compiled, cached and instantiated; the previous file is removed), and
//! after each swap handles messages until the new version has answered.
//! Resident memory after the 100th swap against after the 1st; goal ≤ 1.1×.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;

const PARTITIONS: i32 = 4;
const SWAPS: usize = 100;

fn main() {
    support::handlers_dir();
    let scratch = tempfile::tempdir().unwrap();
    let handlers = scratch.path().join("handlers");
    std::fs::create_dir_all(handlers.join("test-echo")).unwrap();
    let builds = [
        std::fs::read(support::test_component("test-echo")).unwrap(),
        std::fs::read(support::test_component("test-echo-next")).unwrap(),
    ];
    let file = |n: usize| handlers.join(format!("test-echo/{n}.0.0.wasm"));
    std::fs::write(file(1), &builds[0]).unwrap();

    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    broker.create_topic("in", PARTITIONS).unwrap();
    broker.create_topic("echo", PARTITIONS).unwrap();
    let config = scratch.path().join("host.toml");
    std::fs::write(&config, config_text(&brokers, &handlers, scratch.path())).unwrap();
    // The host in a process of its own: its memory is measured alone,
    // without the broker and the reader of this one.
    let mut host = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rss = || support::rss_of(host.id());

    let echoes = support::reader(&brokers, "echo", PARTITIONS);
    let mut sent = 0;
    let mut after_first = 0;
    served_by(&broker, &echoes, &mut sent, "1.0.0");
    let started = Instant::now();
    for swap in 1..=SWAPS {
        let version = swap + 1;
        let bytes = support::with_custom_section(&builds[swap % 2], &version.to_string());
        support::deploy(&bytes, &file(version));
        std::fs::remove_file(file(version - 1)).unwrap();
        served_by(&broker, &echoes, &mut sent, &format!("{version}.0.0"));
        if swap == 1 {
            after_first = rss();
        }
        if swap % 25 == 0 {
            println!("after swap {swap}: RSS {:.1} MiB", support::mib(rss()));
        }
    }
    let after_last = rss();
    let mapped = std::fs::read_to_string(format!("/proc/{}/maps", host.id())).unwrap();
    let artifacts: HashSet<&str> = mapped
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.ends_with(".cwasm"))
        .collect();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    let mut summary = String::new();
    host.stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(host.wait().unwrap().success());
    println!(
        "{SWAPS} swaps in {:.1} s, {sent} messages; {} compiled versions mapped at the end; host RSS after the first swap {:.1} MiB, after the last {:.1} MiB",
        started.elapsed().as_secs_f64(),
        artifacts.len(),
        support::mib(after_first),
        support::mib(after_last),
    );
    assert!(
        summary.contains(&format!("{SWAPS} handler version swaps")),
        "{summary}"
    );
    println!(
        "RESULT P6 {:.2} ratio",
        after_last as f64 / after_first as f64
    );
}

fn config_text(brokers: &str, handlers: &Path, scratch: &Path) -> String {
    format!(
        r#"brokers = "{brokers}"
group-id = "p6"
handlers-dir = "{}"
artifact-cache = "{}"
handler-settle-ms = 50

[[routes]]
topic = "in"
handler = "test-echo"
publish-to = ["echo"]
"#,
        handlers.display(),
        scratch.join("cache").display()
    )
}

/// Sends a message per partition until `version` has echoed one in each.
fn served_by(broker: &EmbeddedBroker, echoes: &BaseConsumer, sent: &mut usize, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while answered < PARTITIONS {
        assert!(Instant::now() < deadline, "{version} never served");
        let batch: Vec<Message> = (0..PARTITIONS)
            .map(|p| Message {
                topic: "in".into(),
                partition: p,
                offset: 0,
                key: Some(format!("k{p}").into_bytes()),
                payload: b"m".to_vec(),
                headers: vec![Header::new("source", "bench")],
                timestamp: 0,
            })
            .collect();
        broker.produce(&batch).unwrap();
        *sent += batch.len();
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let Some(record) = echoes.poll(Duration::from_millis(20)) else {
                continue;
            };
            let record = record.unwrap();
            if support::version_of(&record).as_deref() == Some(version) {
                answered += 1;
            }
        }
    }
}
