//! The handlers directory, live: versions swapped in under load, broken
//! files rejected while the old version serves, rollback on removal,
//! pinning, shadow runs with output diffs, and canaries by key.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice::embedded::EmbeddedBroker;

use crate::support::*;

const PARTITIONS: i32 = 4;

/// A broker with topic `in`, a scratch dir, and a handlers directory holding
/// `test-echo` as `1.0.0`.
fn setup() -> (EmbeddedBroker, Scratch, PathBuf) {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", PARTITIONS).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "1.0.0", &component("test-echo"))]);
    (broker, scratch, handlers)
}

/// A host config routing `in` to `test-echo`, with an admin server on a
/// free port and quick settling, plus `extra`.
fn host_config(
    broker: &EmbeddedBroker,
    scratch: &Scratch,
    handlers: &Path,
    extra: &str,
) -> PathBuf {
    let routes = format!(
        r#"handler-settle-ms = 300

[admin]
listen = "127.0.0.1:0"

[[routes]]
topic = "in"
handler = "test-echo"
publish-to = ["*"]

{extra}"#
    );
    scratch.write(
        "host.toml",
        config(broker.bootstrap_servers(), "handlers", handlers, &routes),
    )
}

/// `count` messages `<prefix><i>` on `in`, key `k<i % keys>`, each key
/// always in the same partition.
fn produce(
    broker: &EmbeddedBroker,
    from: usize,
    count: usize,
    keys: usize,
    payload: &dyn Fn(usize) -> String,
) {
    let messages: Vec<_> = (from..from + count)
        .map(|i| {
            let key = i % keys;
            message(
                "in",
                (key % PARTITIONS as usize) as i32,
                &format!("k{key}"),
                &payload(i),
            )
        })
        .collect();
    broker.produce(&messages).unwrap();
}

/// `sluice handlers` against a running host.
fn handlers_of(config: &Path, admin: &str) -> String {
    let output = sluice()
        .args(["handlers", "--config"])
        .arg(config)
        .args(["--admin", admin])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `sluice handlers` line of a version.
fn line_of(listing: &str, version: &str) -> Option<String> {
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(version))
        .map(str::to_owned)
}

/// Copies a component into the handlers directory under a temporary name
/// and renames it in, as a deployment would.
fn deploy(component: &Path, handlers: &Path, file: &str) {
    let target = handlers.join("test-echo").join(file);
    let partial = target.with_extension("part");
    std::fs::copy(component, &partial).unwrap();
    std::fs::rename(&partial, &target).unwrap();
}

fn versions_of(records: &[Record]) -> HashMap<String, usize> {
    let mut versions = HashMap::new();
    for r in records {
        let v = r
            .header("sluice-handler-version")
            .expect("outputs carry the handler version");
        *versions.entry(v.to_owned()).or_insert(0) += 1;
    }
    versions
}

#[test]
fn a_version_dropped_in_under_load_takes_over_with_nothing_lost_or_repeated() {
    const MESSAGES: usize = 20_000;
    const KEYS: usize = 200;
    let (broker, scratch, handlers) = setup();
    let config = host_config(&broker, &scratch, &handlers, "");
    let brokers = broker.bootstrap_servers().to_owned();
    let host = Host::start(&scratch, "host", &config, &[]);

    // A steady stream; the new version is dropped in halfway through it.
    let dropped = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            for chunk in 0..40 {
                produce(&broker, chunk * 500, 500, KEYS, &|i| format!("m{i}"));
                if chunk == 20 {
                    deploy(&component("test-echo-next"), &handlers, "2.0.0.wasm");
                    dropped.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    });
    assert!(dropped.load(Ordering::SeqCst));
    wait_until("every message to be echoed", || {
        count(&brokers, "echo") >= MESSAGES as i64
    });
    host.signal(libc::SIGTERM);
    let exit = host.wait_ok();
    assert!(exit.stderr.contains("handler swapped"), "{}", exit.stderr);

    let records = read_topic(&brokers, "echo");
    assert_eq!(
        records.len(),
        MESSAGES,
        "an input was lost or handled twice"
    );
    let sources: HashSet<(i32, i64)> = records.iter().map(Record::source).collect();
    assert_eq!(sources.len(), MESSAGES, "an input was handled twice");
    let versions = versions_of(&records);
    assert!(
        versions.get("1.0.0").is_some_and(|n| *n > 0),
        "{versions:?}"
    );
    assert!(
        versions.get("2.0.0").is_some_and(|n| *n > 0),
        "{versions:?}"
    );

    // Per key: outputs in input order, and never back to the old version.
    let mut last: HashMap<String, (i64, String)> = HashMap::new();
    for r in &records {
        let key = r.key.clone().unwrap();
        let offset: i64 = r.header("offset").unwrap().parse().unwrap();
        let version = r.header("sluice-handler-version").unwrap().to_owned();
        if let Some((before, was)) = last.get(&key) {
            assert!(
                offset > *before,
                "key {key}: input {offset} published after {before}"
            );
            assert!(
                !(was == "2.0.0" && version == "1.0.0"),
                "key {key}: went back to 1.0.0 at input {offset}"
            );
        }
        last.insert(key, (offset, version));
    }
}

#[test]
fn broken_files_are_rejected_with_their_reason_while_the_old_version_serves() {
    let (broker, scratch, handlers) = setup();
    let config = host_config(&broker, &scratch, &handlers, "");
    let brokers = broker.bootstrap_servers().to_owned();
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let dir = handlers.join("test-echo");
    let next = std::fs::read(component("test-echo-next")).unwrap();

    // A copy in progress that completes within the settle time is picked
    // up whole, never rejected as truncated.
    let mut copying = std::fs::File::create(dir.join("1.5.0.wasm")).unwrap();
    copying.write_all(&next[..next.len() / 2]).unwrap();
    copying.flush().unwrap();
    copying.write_all(&next[next.len() / 2..]).unwrap();
    drop(copying);
    let mut core_module = b"\0asm\x01\0\0\0".to_vec();
    core_module.extend_from_slice(&[0; 8]);
    let mut corrupt = b"\0asm\x0d\0\x01\0".to_vec();
    corrupt.extend_from_slice(b"this is not a component");
    let broken: [(&str, Vec<u8>, &str); 5] = [
        ("2.0.0.wasm", corrupt, "does not compile"),
        // A copy that stopped half way.
        (
            "3.0.0.wasm",
            next[..next.len() / 2].to_vec(),
            "does not compile",
        ),
        ("4.0.0.wasm", core_module, "core WebAssembly module"),
        (
            "5.0.0.wasm",
            std::fs::read(component("test-other-world")).unwrap(),
            "not a sluice handler",
        ),
        (
            "6.0.0.wasm",
            std::fs::read(component("test-unknown-import")).unwrap(),
            "needs imports the host does not provide: component imports instance `test:unknown-import/query`",
        ),
    ];
    for (file, bytes, _) in &broken {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    let mut listing = String::new();
    wait_until("every file to get its verdict", || {
        listing = handlers_of(&config, &admin);
        // The table of versions, before what the routes reach.
        listing.lines().take_while(|l| !l.is_empty()).count() == 1 + 7
    });
    assert!(
        line_of(&listing, "1.5.0").unwrap().contains("active"),
        "{listing}"
    );
    for (file, _, reason) in &broken {
        let version = file.trim_end_matches(".wasm");
        let line = line_of(&listing, version).unwrap();
        assert!(
            line.contains("rejected") && line.contains(reason),
            "{version}: {line}"
        );
    }
    let log = log_of(&scratch, "host");
    let rejections: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handler version rejected"))
        .collect();
    assert_eq!(
        rejections.len(),
        5,
        "one log line per rejected file:\n{log}"
    );
    let metrics = http_get(&admin, "/metrics");
    assert_eq!(
        metrics.matches("state=\"rejected\"").count(),
        5,
        "{metrics}"
    );
    // The reasons (wasmtime's words about the files) stay inside their
    // label values: every line is a comment or one series and its value.
    let (head, body) = metrics.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_default();
        assert!(
            series.starts_with("sluice_") && value.parse::<f64>().is_ok(),
            "a broken exposition line {line:?} in:\n{metrics}"
        );
    }
    assert!(metrics.contains("version=\"6.0.0\",state=\"rejected\",reason=\""));

    // The good version serves while the broken ones sit there.
    produce(&broker, 0, 100, 10, &|i| format!("m{i}"));
    wait_until("the messages to be echoed", || {
        count(&brokers, "echo") >= 100
    });

    // Removing the active version's file rolls back to the previous one.
    std::fs::remove_file(dir.join("1.5.0.wasm")).unwrap();
    wait_until("the rollback", || {
        line_of(&handlers_of(&config, &admin), "1.0.0").is_some_and(|l| l.contains("active"))
    });
    produce(&broker, 100, 100, 10, &|i| format!("m{i}"));
    wait_until("the messages to be echoed", || {
        count(&brokers, "echo") >= 200
    });
    // Metrics count each message under the version that handled it.
    let metrics = http_get(&admin, "/metrics");
    for version in ["1.5.0", "1.0.0"] {
        let line = format!(
            "sluice_messages_total{{handler=\"test-echo\",version=\"{version}\",outcome=\"handled\"}} 100"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    host.signal(libc::SIGTERM);
    host.wait_ok();

    let records = read_topic(&brokers, "echo");
    assert_eq!(records.len(), 200);
    for r in &records {
        let offset: i64 = r.header("offset").unwrap().parse().unwrap();
        let payload_index: usize = r.payload.trim_start_matches('m').parse().unwrap();
        let version = r.header("sluice-handler-version").unwrap();
        let expected = if payload_index < 100 {
            "1.5.0"
        } else {
            "1.0.0"
        };
        assert_eq!(version, expected, "input {offset} ({})", r.payload);
    }
}

#[test]
fn a_pinned_version_serves_and_the_listing_shows_every_state() {
    let (broker, scratch, handlers) = setup();
    deploy(&component("test-echo-next"), &handlers, "2.0.0.wasm");
    deploy(&component("test-echo-next"), &handlers, "3.0.0.shadow.wasm");
    std::fs::write(handlers.join("test-echo/4.0.0.wasm"), b"not wasm").unwrap();
    let config = host_config(
        &broker,
        &scratch,
        &handlers,
        "[handlers.test-echo]\nversion = \"1.0.0\"\n",
    );

    // With no host running, `sluice handlers` evaluates the directory.
    let output = sluice()
        .args(["handlers", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    let state = |v: &str| {
        line_of(&listing, v)
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    assert_eq!(state("1.0.0"), "active", "{listing}");
    assert_eq!(state("2.0.0"), "standby", "{listing}");
    assert_eq!(state("3.0.0"), "shadow", "{listing}");
    assert_eq!(state("4.0.0"), "rejected", "{listing}");

    produce(&broker, 0, 50, 5, &|i| format!("m{i}"));
    let brokers = broker.bootstrap_servers().to_owned();
    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();
    let versions = versions_of(&read_topic(&brokers, "echo"));
    assert_eq!(versions, HashMap::from([("1.0.0".to_owned(), 50)]));
}

/// `/api/handlers/{name}`.
fn api_handler(admin: &str, name: &str) -> serde_json::Value {
    let (status, body) = status_of(admin, &format!("/api/handlers/{name}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_shadow_reports_exactly_the_inputs_whose_outputs_differ_and_runs_nothing() {
    const MESSAGES: usize = 300;
    let (broker, scratch, handlers) = setup();
    deploy(&component("test-echo-next"), &handlers, "2.0.0.shadow.wasm");
    let config = host_config(&broker, &scratch, &handlers, "");
    let brokers = broker.bootstrap_servers().to_owned();
    // Every 37th input is changed by the new version, every 53rd fails in it.
    let payload = |i: usize| match i {
        i if i % 37 == 5 => format!("changed:{i}"),
        i if i % 53 == 7 => format!("fail-next:{i}"),
        i => format!("m{i}"),
    };
    produce(&broker, 0, MESSAGES, 20, &payload);
    let differing: HashSet<String> = (0..MESSAGES)
        .map(payload)
        .filter(|p| !p.starts_with('m'))
        .collect();
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    wait_until("every input to be echoed and compared", || {
        count(&brokers, "echo") >= MESSAGES as i64
            && count(&brokers, "test-echo.shadow-diffs") >= differing.len() as i64
    });
    // The handler's page tells what the shadow came to, once the last
    // comparison is counted (its difference is published before).
    let mut page = serde_json::Value::Null;
    wait_until("the handler's page to count every comparison", || {
        page = api_handler(&admin, "test-echo");
        page["shadow"]["versions"][0]["compared"] == MESSAGES
    });
    assert_eq!(
        page["shadow"],
        serde_json::json!({
            "serving": "2.0.0",
            "diff_topic": "test-echo.shadow-diffs",
            "versions": [{
                "handler": "test-echo", "version": "2.0.0",
                "compared": MESSAGES, "differed": differing.len(), "skipped": 0,
            }],
        })
    );
    assert_eq!(page["canary"]["serving"], serde_json::Value::Null);
    host.signal(libc::SIGTERM);
    let exit = host.wait_ok();
    assert!(
        exit.stdout.contains(&format!(
            "shadow: {MESSAGES} messages compared, {} differed",
            differing.len()
        )),
        "{}",
        exit.stdout
    );

    let diffs = read_topic(&brokers, "test-echo.shadow-diffs");
    let reported: HashSet<String> = diffs
        .iter()
        .map(|d| {
            let diff: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
            assert_eq!(diff["serving"]["version"], "1.0.0");
            assert_eq!(diff["shadow"]["version"], "2.0.0");
            diff["serving"]["outcome"]["outputs"][0]["publish"]["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(diffs.len(), differing.len());
    assert_eq!(reported, differing);

    // Only the serving version's outputs ran; the shadow's failures dead-lettered nothing.
    let echoed = read_topic(&brokers, "echo");
    assert_eq!(echoed.len(), MESSAGES);
    assert_eq!(
        versions_of(&echoed),
        HashMap::from([("1.0.0".to_owned(), MESSAGES)])
    );
    assert!(echoed.iter().all(|r| !r.payload.starts_with("CHANGED")));
    assert_eq!(count(&brokers, "in.dlq"), 0);
}

#[test]
fn a_canary_gets_its_share_of_keys_and_keeps_each_key() {
    const KEYS: usize = 10_000;
    let (broker, scratch, handlers) = setup();
    deploy(&component("test-echo-next"), &handlers, "2.0.0.wasm");
    let config = host_config(
        &broker,
        &scratch,
        &handlers,
        "[handlers.test-echo.canary]\nversion = \"2.0.0\"\npercent = 20\n",
    );
    let brokers = broker.bootstrap_servers().to_owned();
    // Every key once, then the first 2,000 keys again.
    produce(&broker, 0, KEYS, KEYS, &|i| format!("m{i}"));
    produce(&broker, KEYS, 2_000, KEYS, &|i| format!("m{i}"));
    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();

    let records = read_topic(&brokers, "echo");
    assert_eq!(records.len(), KEYS + 2_000);
    let mut version_of_key: HashMap<String, String> = HashMap::new();
    for r in &records {
        let version = r.header("sluice-handler-version").unwrap().to_owned();
        let key = r.key.clone().unwrap();
        if let Some(before) = version_of_key.insert(key.clone(), version.clone()) {
            assert_eq!(before, version, "key {key} changed version");
        }
    }
    let canary_keys = version_of_key.values().filter(|v| *v == "2.0.0").count();
    // Within ±5% of the configured 20%.
    assert!(
        (1_900..=2_100).contains(&canary_keys),
        "{canary_keys} of {KEYS} keys on the canary"
    );
}

#[test]
fn a_failing_canary_is_rolled_back_and_its_keys_return_to_the_active_version() {
    let (broker, scratch, handlers) = setup();
    deploy(&component("test-echo-next"), &handlers, "2.0.0.canary.wasm");
    let config = host_config(
        &broker,
        &scratch,
        &handlers,
        "[handlers.test-echo.canary]\npercent = 50\nmax-dead-letter-rate = 0.2\nmin-messages = 20\n",
    );
    let brokers = broker.bootstrap_servers().to_owned();
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let before = api_handler(&admin, "test-echo");
    assert_eq!(
        before["canary"]["serving"],
        serde_json::json!(["2.0.0", 50.0]),
        "{before}"
    );
    assert_eq!(before["canary"]["handled"], 0, "{before}");
    // The canary fails on every one of these.
    produce(&broker, 0, 400, 400, &|i| format!("fail-next:{i}"));
    let mut listing = String::new();
    wait_until("the canary to be rolled back", || {
        listing = handlers_of(&config, &admin);
        line_of(&listing, "2.0.0").is_some_and(|l| l.contains("rolled-back"))
    });
    // The handler's page says which version was rolled back and why, and
    // its chart marks the moment.
    let page = api_handler(&admin, "test-echo");
    let canary = &page["canary"];
    assert_eq!(canary["serving"], serde_json::Value::Null, "{page}");
    assert_eq!(canary["rolled_back"][0][0], "2.0.0", "{page}");
    assert!(
        canary["rolled_back"][0][1]
            .as_str()
            .unwrap()
            .contains("over the 20% allowed"),
        "{page}"
    );
    assert_eq!(canary["min_messages"], 20);
    // What it had done when it was rolled back: nothing but dead letters.
    let handled = canary["handled"].as_u64().unwrap();
    assert!(handled >= 20, "{page}");
    assert_eq!(canary["dead_lettered"], handled, "{page}");
    let mut marker = serde_json::Value::Null;
    wait_until("a sample to mark the rollback", || {
        let page = api_handler(&admin, "test-echo");
        marker = page["throughput"]["markers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["kind"] == "rolled-back")
            .cloned()
            .unwrap_or_default();
        !marker.is_null()
    });
    assert_eq!(marker["version"], "2.0.0");
    let (status, html) = status_of(&admin, "/handlers/test-echo");
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!(
            "data-kind=\"rolled-back\" data-at=\"{}\"",
            marker["at"]
        )),
        "{html}"
    );
    assert!(html.contains("2.0.0 rolled back: dead-lettered"), "{html}");
    assert!(
        line_of(&listing, "2.0.0")
            .unwrap()
            .contains("dead-lettered"),
        "{listing}"
    );
    wait_until("the first batch to be done", || {
        count(&brokers, "echo") + count(&brokers, "in.dlq") >= 400
    });
    let dead_before = count(&brokers, "in.dlq");
    assert!(
        dead_before >= 20,
        "rolled back after {dead_before} dead letters"
    );

    // After the rollback every key goes to the active version.
    produce(&broker, 400, 400, 400, &|i| format!("fail-next:{i}"));
    wait_until("the second batch to be done", || {
        count(&brokers, "echo") + count(&brokers, "in.dlq") >= 800
    });
    host.signal(libc::SIGTERM);
    let exit = host.wait_ok();
    assert!(
        exit.stderr.contains("canary rolled back"),
        "{}",
        exit.stderr
    );
    assert_eq!(
        count(&brokers, "in.dlq"),
        dead_before,
        "the canary served after its rollback"
    );
    let later: Vec<Record> = read_topic(&brokers, "echo")
        .into_iter()
        .filter(|r| {
            r.payload
                .trim_start_matches("fail-next:")
                .parse::<usize>()
                .unwrap()
                >= 400
        })
        .collect();
    assert_eq!(later.len(), 400);
    assert_eq!(
        versions_of(&later),
        HashMap::from([("1.0.0".to_owned(), 400)])
    );
    for dead in read_topic(&brokers, "in.dlq") {
        assert_eq!(dead.header("sluice-handler-version"), Some("2.0.0"));
    }
}

#[test]
fn a_copy_that_stalled_and_was_rejected_is_taken_once_it_is_complete() {
    let (broker, scratch, handlers) = setup();
    let config = host_config(&broker, &scratch, &handlers, "");
    let brokers = broker.bootstrap_servers().to_owned();
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let next = std::fs::read(component("test-echo-next")).unwrap();
    let file = handlers.join("test-echo/2.0.0.wasm");

    std::fs::write(&file, &next[..next.len() / 3]).unwrap();
    wait_until("the partial file to be rejected", || {
        line_of(&handlers_of(&config, &admin), "2.0.0").is_some_and(|l| l.contains("rejected"))
    });
    std::fs::write(&file, &next).unwrap();
    wait_until("the completed file to serve", || {
        line_of(&handlers_of(&config, &admin), "2.0.0").is_some_and(|l| l.contains("active"))
    });
    produce(&broker, 0, 20, 4, &|i| format!("m{i}"));
    wait_until("the messages to be echoed", || {
        count(&brokers, "echo") >= 20
    });
    host.signal(libc::SIGTERM);
    host.wait_ok();
    let versions = versions_of(&read_topic(&brokers, "echo"));
    assert_eq!(versions, HashMap::from([("2.0.0".to_owned(), 20)]));
}
