//! Exactly-once routes on a broker with real transactions: outputs and
//! consumed offsets commit together, an aborted transaction is handled again
//! from the last committed offset, and neither a crash mid-transaction nor a
//! broker outage makes a read-committed consumer see an output twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sluice::contract::Message;

use crate::support::*;
use crate::transactional_broker::{TransactionalBroker, read_committed};

const PARTITIONS: i32 = 4;

const ROUTES: &str = r#"
[kafka.producer]
"message.max.bytes" = "5000000"

[limits]
workers = 2
# `spin:<ms>` busy-waits on the guest's clock, which must be real time.
deterministic = false
# Handler calls are counted by the guest's stdout lines: log every one.
stdio-lines-per-second = 1_000_000

[[routes]]
topic = "in"
handler = "test-faults"
publish-to = ["*"]
delivery = "exactly-once"
"#;

/// A broker holding `payloads` on `in` (spread over the partitions, keyed
/// over 50 keys), its output topics, and a host config for them.
fn setup(payloads: &[String], group: &str) -> (TransactionalBroker, Scratch, PathBuf) {
    let broker = TransactionalBroker::start();
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("echo", PARTITIONS);
    broker.create_topic("in.dlq", 1);
    let messages: Vec<Message> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            message(
                "in",
                i as i32 % PARTITIONS,
                &format!("k{}", i % 50),
                payload,
            )
        })
        .collect();
    sluice::embedded::produce(broker.bootstrap_servers(), &messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    // Like Kafka, noida refuses session timeouts under 6 s. Unlike Kafka it
    // never expires a killed member's session: static membership lets the
    // restarted host take its place at once.
    let text = config(broker.bootstrap_servers(), group, &handlers, ROUTES)
        .replace(
            "\"session.timeout.ms\" = \"3000\"",
            "\"session.timeout.ms\" = \"6000\"\n\"group.instance.id\" = \"test-host\"",
        )
        .replace(
            "\"heartbeat.interval.ms\" = \"300\"",
            "\"heartbeat.interval.ms\" = \"500\"",
        );
    let config = scratch.write("exactly-once.toml", text);
    (broker, scratch, config)
}

/// The input (partition, offset) of payload `i`, as `setup` laid them out.
fn input(i: usize) -> (i32, i64) {
    (i as i32 % PARTITIONS, (i / PARTITIONS as usize) as i64)
}

/// How many committed outputs each input has on `echo`.
fn committed_outputs(brokers: &str) -> BTreeMap<(i32, i64), usize> {
    let mut outputs = BTreeMap::new();
    for record in read_committed(brokers, "echo", PARTITIONS) {
        *outputs.entry(record.source()).or_insert(0) += 1;
    }
    outputs
}

/// Every one of the first `total` inputs has exactly one committed output;
/// says which do not, with the warnings and errors of the host's `log`.
fn assert_each_input_once(brokers: &str, total: usize, log: &str) {
    let trouble: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    let trouble = trouble[trouble.len().saturating_sub(40)..].join("\n");
    let outputs = committed_outputs(brokers);
    let missing: Vec<(i32, i64)> = (0..total)
        .map(input)
        .filter(|input| !outputs.contains_key(input))
        .collect();
    let repeated: Vec<(&(i32, i64), &usize)> = outputs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        missing.is_empty(),
        "{} inputs lost (partition, offset), the first: {:?}; {} outputs in all; \
         echo ends at {:?}; the host said:\n{trouble}",
        missing.len(),
        &missing[..missing.len().min(20)],
        outputs.len(),
        end_offsets(brokers, "echo"),
    );
    assert!(
        repeated.is_empty(),
        "{} outputs committed more than once, the first: {:?}; the host said:\n{trouble}",
        repeated.len(),
        &repeated[..repeated.len().min(20)]
    );
    assert_eq!(outputs.len(), total, "outputs of inputs never sent");
}

#[test]
fn outputs_and_offsets_commit_together_and_a_refused_record_aborts_and_is_dead_lettered() {
    const TOTAL: usize = 2_000;
    const BIG: usize = 1_001; // broker refuses records over 1 MB; the client allows 5
    let payloads: Vec<String> = (0..TOTAL)
        .map(|i| match i {
            BIG => "big:1500000".to_owned(),
            _ if i % 97 == 0 => "fail".to_owned(),
            _ => format!("m{i}"),
        })
        .collect();
    let (broker, scratch, config) = setup(&payloads, "eos");
    let brokers = broker.bootstrap_servers();

    Host::start(&scratch, "first", &config, &["--until-drained"]).wait_ok();

    let expected: BTreeSet<(i32, i64)> = (0..TOTAL)
        .filter(|&i| i != BIG && i % 97 != 0)
        .map(input)
        .collect();
    let outputs = committed_outputs(brokers);
    assert_eq!(
        outputs.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "inputs without their output, or outputs of failed inputs"
    );
    assert!(
        outputs.values().all(|&n| n == 1),
        "an output committed twice"
    );

    // The refused record aborted its transaction: every message in it was
    // handled again from the last commit (above: still once each), and the
    // refused one dead-lettered on the re-run.
    let log = log_of(&scratch, "first");
    assert!(log.contains("transaction aborted"), "{log}");
    assert!(log.contains("partition rewound"), "{log}");
    let dead: BTreeMap<(i32, i64), (String, String)> = read_committed(brokers, "in.dlq", 1)
        .into_iter()
        .map(|r| {
            let source = (
                r.header("sluice-source-partition")
                    .unwrap()
                    .parse()
                    .unwrap(),
                r.header("sluice-source-offset").unwrap().parse().unwrap(),
            );
            let why = (
                r.header("sluice-stage").unwrap().to_owned(),
                r.header("sluice-reason").unwrap().to_owned(),
            );
            (source, why)
        })
        .collect();
    let mut expected_dead: BTreeMap<(i32, i64), (String, String)> = (0..TOTAL)
        .filter(|i| i % 97 == 0)
        .map(|i| (input(i), ("handle".to_owned(), "failed".to_owned())))
        .collect();
    expected_dead.insert(
        input(BIG),
        ("interpret".to_owned(), "record-too-large".to_owned()),
    );
    assert_eq!(dead, expected_dead);
    assert_eq!(
        read_committed(brokers, "in.dlq", 1).len(),
        expected_dead.len(),
        "a dead letter committed twice"
    );
    assert_committed_to_the_end(brokers, "eos");

    // The offsets went in with the outputs: a second run has nothing to do.
    Host::start(&scratch, "second", &config, &["--until-drained"]).wait_ok();
    assert_eq!(committed_outputs(brokers), outputs);
    assert!(!log_of(&scratch, "second").contains("echo "));
}

#[test]
fn kills_mid_transaction_lose_nothing_and_commit_nothing_twice() {
    const TOTAL: usize = 6_000;
    const KILLS: usize = 5;
    // 1 ms of handler time each: slow enough to be killed mid-stream.
    let payloads = vec!["spin:1".to_owned(); TOTAL];
    let (broker, scratch, config) = setup(&payloads, "eos-kills");
    let brokers = broker.bootstrap_servers();

    let mut progress = 0;
    for kill in 0..KILLS {
        let host = Host::start(&scratch, &format!("run{kill}"), &config, &[]);
        let goal = progress + rand::random_range(200..900);
        wait_until("progress before the kill", || {
            count(brokers, "echo") >= goal
        });
        host.signal(libc::SIGKILL);
        assert!(!host.wait().status.success());
        progress = count(brokers, "echo");
    }
    Host::start(&scratch, "last", &config, &["--until-drained"]).wait_ok();

    assert_each_input_once(brokers, TOTAL, &log_of(&scratch, "last"));
    assert_committed_to_the_end(brokers, "eos-kills");

    // The kills did cut transactions short: more messages were handled than
    // there are inputs, and none of that repeated work shows.
    let handled: usize = (0..KILLS)
        .map(|kill| format!("run{kill}"))
        .chain(["last".to_owned()])
        .map(|run| log_of(&scratch, &run).matches("echo ").count())
        .sum();
    eprintln!("{KILLS} kills: {handled} handler calls for {TOTAL} inputs");
    assert!(handled > TOTAL, "no kill interrupted a transaction");
}

#[test]
fn a_broker_outage_aborts_and_retries_transactions_without_loss_or_repeats() {
    const TOTAL: usize = 3_000;
    // 3 ms of handler time each: the stream lasts seconds, well past the
    // moment the broker goes away.
    let payloads: Vec<String> = vec!["spin:3".to_owned(); TOTAL];
    let (broker, scratch, config) = setup(&payloads, "eos-outage");
    let brokers = broker.bootstrap_servers();

    let host = Host::start(&scratch, "outage", &config, &["--until-drained"]);
    wait_until("some outputs committed", || count(brokers, "echo") >= 300);
    broker.stop();
    // Away until a coordinator call goes unanswered (seconds): the open
    // transaction cannot commit in time and is aborted, whatever the broker
    // did with it meanwhile.
    wait_until("a transaction call to go unanswered", || {
        log_of(&scratch, "outage").contains("not answered yet")
    });
    broker.resume();
    let exit = host.wait();
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);

    let log = log_of(&scratch, "outage");
    assert!(log.contains("transaction aborted"), "{log}");
    assert_each_input_once(brokers, TOTAL, &log);
    assert_eq!(read_committed(brokers, "in.dlq", 1).len(), 0);
    assert_committed_to_the_end(brokers, "eos-outage");
}

#[test]
fn a_host_joining_mid_transaction_takes_partitions_without_loss_or_repeats() {
    const TOTAL: usize = 4_000;
    // 2 ms of handler time each: the first host is mid-stream, with a
    // transaction open, when the second one joins and takes partitions.
    let payloads = vec!["spin:2".to_owned(); TOTAL];
    let (broker, scratch, config) = setup(&payloads, "eos-join");
    let brokers = broker.bootstrap_servers();
    let text = std::fs::read_to_string(&config).unwrap();
    let second_config = scratch.write(
        "exactly-once-second.toml",
        text.replace("\"test-host\"", "\"test-host-2\""),
    );

    let first = Host::start(&scratch, "first", &config, &[]);
    wait_until("outputs committed before the join", || {
        count(brokers, "echo") >= 400
    });
    let second = Host::start(&scratch, "second", &second_config, &[]);
    wait_until("the first host to give partitions up", || {
        log_of(&scratch, "first").contains("partitions revoked")
    });
    wait_until("every input's output committed", || {
        read_committed(brokers, "echo", PARTITIONS).len() >= TOTAL
    });
    for host in [&first, &second] {
        host.signal(libc::SIGTERM);
    }
    first.wait_ok();
    second.wait_ok();

    let first_log = log_of(&scratch, "first");
    let second_log = log_of(&scratch, "second");
    let handled = |log: &str| log.matches("echo ").count();
    eprintln!(
        "first host handled {}, second {} of {TOTAL}",
        handled(&first_log),
        handled(&second_log)
    );
    assert!(
        handled(&second_log) > 0,
        "the second host took no partition"
    );
    assert!(
        handled(&first_log) < TOTAL,
        "the first host kept every partition"
    );
    assert_each_input_once(brokers, TOTAL, &format!("{first_log}\n{second_log}"));
    assert_committed_to_the_end(brokers, "eos-join");
}
