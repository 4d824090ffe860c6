//! At-least-once delivery across process deaths and graceful stops.

use std::collections::HashMap;

use sluice::embedded::EmbeddedBroker;

use crate::support::*;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 1_200;

const ROUTES: &str = r#"
[limits]
workers = 2

[[routes]]
topic = "in"
handler = "test-faults"
"#;

/// A broker with `MESSAGES` slow messages (1 ms of handler time each) on
/// `in`, and a host config for them (with `extra` config appended).
fn slow_stream(extra: &str) -> (EmbeddedBroker, Scratch, std::path::PathBuf) {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", PARTITIONS).unwrap();
    let messages: Vec<_> = (0..MESSAGES)
        .map(|i| {
            message(
                "in",
                i as i32 % PARTITIONS,
                &format!("k{}", i % 40),
                "spin:1",
            )
        })
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let config = scratch.write(
        "host.toml",
        config(
            broker.bootstrap_servers(),
            "delivery",
            &handlers,
            &format!("{ROUTES}\n{extra}"),
        ),
    );
    (broker, scratch, config)
}

/// How many outputs each input (partition, offset) has on `echo`.
fn outputs_per_input(brokers: &str) -> HashMap<(i32, i64), usize> {
    let mut outputs = HashMap::new();
    for record in read_topic(brokers, "echo") {
        *outputs.entry(record.source()).or_insert(0) += 1;
    }
    outputs
}

fn committed_map(brokers: &str) -> HashMap<i32, i64> {
    committed(brokers, "delivery", "in")
        .into_iter()
        .map(|(p, offset)| (p, offset.unwrap_or(0)))
        .collect()
}

#[test]
fn a_killed_host_loses_nothing_and_repeats_only_what_was_not_committed() {
    let (broker, scratch, config) = slow_stream("");
    let brokers = broker.bootstrap_servers();

    let first = Host::start(&scratch, "first", &config, &[]);
    wait_until("the first host to publish some outputs", || {
        count(brokers, "echo") >= 300
    });
    first.signal(libc::SIGKILL);
    let crashed = first.wait();
    assert!(!crashed.status.success());
    let published_before_crash = count(brokers, "echo");
    assert!(
        (published_before_crash as usize) < MESSAGES,
        "the first host finished before it was killed; nothing was tested"
    );
    let committed = committed_map(brokers);

    Host::start(&scratch, "second", &config, &["--until-drained"]).wait_ok();

    let outputs = outputs_per_input(brokers);
    let mut duplicates = 0;
    for partition in 0..PARTITIONS {
        let inputs = (MESSAGES as i64 + (PARTITIONS - 1 - partition) as i64) / PARTITIONS as i64;
        for offset in 0..inputs {
            let n = outputs.get(&(partition, offset)).copied().unwrap_or(0);
            assert!(n >= 1, "input {partition}@{offset} was lost");
            if offset < committed[&partition] {
                assert_eq!(
                    n, 1,
                    "input {partition}@{offset} was committed but handled {n} times"
                );
            }
            duplicates += n - 1;
        }
    }
    let uncommitted: i64 = (0..PARTITIONS)
        .map(|p| {
            let inputs = (MESSAGES as i64 + (PARTITIONS - 1 - p) as i64) / PARTITIONS as i64;
            inputs - committed[&p]
        })
        .sum();
    assert!(
        duplicates as i64 <= uncommitted,
        "{duplicates} duplicates but only {uncommitted} inputs were uncommitted"
    );
    assert_eq!(outputs.values().sum::<usize>(), MESSAGES + duplicates);
}

#[test]
fn sigterm_finishes_in_flight_messages_and_commits_exactly_what_was_done() {
    let (broker, scratch, config) = slow_stream("");
    let brokers = broker.bootstrap_servers();

    let host = Host::start(&scratch, "stopped", &config, &[]);
    wait_until("the host to publish some outputs", || {
        count(brokers, "echo") >= 200
    });
    host.signal(libc::SIGTERM);
    let exit = host.wait();
    assert!(
        exit.status.success(),
        "SIGTERM exit: {}\n{}",
        exit.status,
        exit.stderr
    );

    // Exactly the inputs below the committed offsets have outputs, once each.
    let committed = committed_map(brokers);
    let outputs = outputs_per_input(brokers);
    let done: usize = committed.values().map(|&c| c as usize).sum();
    assert!(done < MESSAGES, "stopped too late to test anything");
    assert_eq!(
        outputs.len(),
        done,
        "outputs for uncommitted inputs, or missing ones"
    );
    for (&(partition, offset), &n) in &outputs {
        assert!(
            offset < committed[&partition],
            "{partition}@{offset} handled but not committed"
        );
        assert_eq!(n, 1);
    }

    // A restart picks up exactly where the stop left off: no duplicates.
    Host::start(&scratch, "resumed", &config, &["--until-drained"]).wait_ok();
    let outputs = outputs_per_input(brokers);
    assert_eq!(outputs.len(), MESSAGES);
    assert!(
        outputs.values().all(|&n| n == 1),
        "duplicates after a graceful stop"
    );
}

#[test]
fn a_broker_outage_mid_stream_loses_nothing_and_publishes_are_retried() {
    // Deliveries give up quickly during the outage, so sluice's own retry
    // (not only librdkafka's) has to bring them through.
    let (broker, scratch, config) =
        slow_stream("[kafka.producer]\n\"message.timeout.ms\" = \"500\"\n");
    let brokers = broker.bootstrap_servers();

    let host = Host::start(&scratch, "outage", &config, &["--until-drained"]);
    wait_until("the host to publish some outputs", || {
        count(brokers, "echo") >= 100
    });
    broker.take_down().unwrap();
    let stderr = scratch.path().join("outage.stderr");
    wait_until("a publish to fail while the broker is down", || {
        std::fs::read_to_string(&stderr).is_ok_and(|log| log.contains("effect failed; retrying"))
    });
    broker.bring_up().unwrap();
    let exit = host.wait();
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);

    let outputs = outputs_per_input(brokers);
    assert_eq!(
        outputs.len(),
        MESSAGES,
        "inputs without an output after the outage"
    );
    assert_eq!(
        count(brokers, "in.dlq"),
        0,
        "nothing may be dead-lettered by an outage"
    );
    let committed = committed_map(brokers);
    for (partition, end) in end_offsets(brokers, "in") {
        assert_eq!(
            committed[&partition], end,
            "partition {partition} not committed to its end"
        );
    }
}
