//! At-least-once delivery across process deaths and graceful stops.

use std::collections::HashMap;
use std::time::Duration;

use sluice::embedded::EmbeddedBroker;

use crate::support::*;
use crate::transactional_broker::TransactionalBroker;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 1_200;

const ROUTES: &str = r#"
[limits]
workers = 2
# `spin:<ms>` busy-waits on the guest's clock, which must be real time.
deterministic = false

[[routes]]
topic = "in"
handler = "test-faults"
publish-to = ["*"]
"#;

/// A broker with `MESSAGES` slow messages (4 ms of handler time each: the
/// stream lasts seconds, so a test can act on it mid-stream) on
/// `in`, and a host config for them (with `extra` config appended).
fn slow_stream(extra: &str) -> (EmbeddedBroker, Scratch, std::path::PathBuf) {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", PARTITIONS).unwrap();
    let (scratch, config) = slow_stream_on(broker.bootstrap_servers(), extra, |text| text);
    (broker, scratch, config)
}

/// The slow stream on `brokers`, whose topic `in` (of `PARTITIONS`) the
/// caller made; `edit` adjusts the config's text to the broker.
fn slow_stream_on(
    brokers: &str,
    extra: &str,
    edit: impl Fn(String) -> String,
) -> (Scratch, std::path::PathBuf) {
    let messages: Vec<_> = (0..MESSAGES)
        .map(|i| {
            message(
                "in",
                i as i32 % PARTITIONS,
                &format!("k{}", i % 40),
                "spin:4",
            )
        })
        .collect();
    sluice::embedded::produce(brokers, &messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let config = scratch.write(
        "host.toml",
        edit(config(
            brokers,
            "delivery",
            &handlers,
            &format!("{ROUTES}\n{extra}"),
        )),
    );
    (scratch, config)
}

/// noida-db with the topics of these tests (it creates none on first use).
fn noida_db(partitions: i32) -> TransactionalBroker {
    let broker = TransactionalBroker::start();
    broker.create_topic("in", partitions);
    broker.create_topic("echo", 1);
    broker.create_topic("in.dlq", 1);
    broker
}

/// A config's text for noida-db: a session timeout it accepts (6 s at
/// least, like Kafka) and, for a host that restarts after a kill, static
/// membership: unlike Kafka, noida never expires a killed member's session,
/// so only a member of the same `group.instance.id` can take its place.
fn for_noida_db(text: String, instance: Option<&str>) -> String {
    let member = instance.map_or(String::new(), |id| {
        format!("\n\"group.instance.id\" = \"{id}\"")
    });
    text.replace(
        "\"session.timeout.ms\" = \"3000\"",
        &format!("\"session.timeout.ms\" = \"6000\"{member}"),
    )
}

/// How many outputs each input (partition, offset) has on `echo`.
fn outputs_per_input(brokers: &str) -> HashMap<(i32, i64), usize> {
    let mut outputs = HashMap::new();
    for record in read_topic(brokers, "echo") {
        *outputs.entry(record.source()).or_insert(0) += 1;
    }
    outputs
}

fn committed_map(brokers: &str, group: &str) -> HashMap<i32, i64> {
    committed(brokers, group, "in")
        .into_iter()
        .map(|(p, offset)| (p, offset.unwrap_or(0)))
        .collect()
}

#[test]
fn a_killed_host_loses_nothing_and_repeats_only_what_was_not_committed() {
    let (broker, scratch, config) = slow_stream("");
    killed_host_loses_nothing(broker.bootstrap_servers(), &scratch, &config);
}

#[test]
fn on_noida_db_a_killed_host_loses_nothing_and_repeats_only_what_was_not_committed() {
    let broker = noida_db(PARTITIONS);
    let (scratch, config) = slow_stream_on(broker.bootstrap_servers(), "", |text| {
        for_noida_db(text, Some("restarting-host"))
    });
    killed_host_loses_nothing(broker.bootstrap_servers(), &scratch, &config);
}

/// A host killed mid-stream, then a second run to the end: every input has
/// an output, and only uncommitted ones may have two.
fn killed_host_loses_nothing(brokers: &str, scratch: &Scratch, config: &std::path::Path) {
    let first = Host::start(scratch, "first", config, &[]);
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
    let committed = committed_map(brokers, "delivery");

    Host::start(scratch, "second", config, &["--until-drained"]).wait_ok();

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
    let committed = committed_map(brokers, "delivery");
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
    let (broker, scratch, config) = slow_stream(QUICK_DELIVERY_TIMEOUT);
    let down = || broker.take_down().unwrap();
    let up = || broker.bring_up().unwrap();
    outage_loses_nothing(broker.bootstrap_servers(), &scratch, &config, down, up);
}

#[test]
fn on_noida_db_a_broker_outage_mid_stream_loses_nothing_and_publishes_are_retried() {
    let broker = noida_db(PARTITIONS);
    let (scratch, config) =
        slow_stream_on(broker.bootstrap_servers(), QUICK_DELIVERY_TIMEOUT, |text| {
            for_noida_db(text, None)
        });
    let (down, up) = (|| broker.stop(), || broker.resume());
    outage_loses_nothing(broker.bootstrap_servers(), &scratch, &config, down, up);
}

/// Deliveries give up quickly during an outage, so sluice's own retry
/// (not only librdkafka's) has to bring them through.
const QUICK_DELIVERY_TIMEOUT: &str = "[kafka.producer]\n\"message.timeout.ms\" = \"500\"\n";

/// The brokers go away mid-stream (`down`) and come back (`up`): nothing is
/// lost or dead-lettered, and the log says down, then back.
fn outage_loses_nothing(
    brokers: &str,
    scratch: &Scratch,
    config: &std::path::Path,
    down: impl Fn(),
    up: impl Fn(),
) {
    let host = Host::start(scratch, "outage", config, &["--until-drained"]);
    wait_until("the host to publish some outputs", || {
        count(brokers, "echo") >= 100
    });
    down();
    let stderr = scratch.path().join("outage.stderr");
    wait_until("a publish to fail while the broker is down", || {
        std::fs::read_to_string(&stderr).is_ok_and(|log| log.contains("effect failed; retrying"))
    });
    up();
    let exit = host.wait();
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    // The outage in the log as state changes: down, then back.
    let consumer = |l: &&str| l.contains("client=\"consumer\"");
    let lines: Vec<&str> = exit.stderr.lines().filter(consumer).collect();
    let down = lines.iter().position(|l| l.contains("kafka client error"));
    let back = lines
        .iter()
        .position(|l| l.contains("kafka brokers answer again"));
    assert!(
        matches!((down, back), (Some(down), Some(back)) if down < back),
        "{}",
        exit.stderr
    );

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
    assert_committed_to_the_end(brokers, "delivery");
}

#[test]
fn memory_stays_flat_under_a_backlog_of_a_million_messages() {
    const BACKLOG: usize = 1_000_000;
    const BACKLOG_PARTITIONS: i32 = 25; // ~3 MB each: under the mock's 5 MB per partition
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", BACKLOG_PARTITIONS).unwrap();
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(100_000) {
        let messages: Vec<_> = chunk
            .iter()
            .map(|i| {
                message(
                    "in",
                    *i as i32 % BACKLOG_PARTITIONS,
                    &format!("k{}", i % 1000),
                    "ignore",
                )
            })
            .collect();
        broker.produce(&messages).unwrap();
    }
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let config = scratch.write(
        "backlog.toml",
        config(brokers, "backlog", &handlers, ROUTES),
    );

    let mut host = Host::start(&scratch, "backlog", &config, &["--until-drained"]);
    let mut samples = Vec::new();
    while host.running() {
        samples.push(host.rss());
        std::thread::sleep(Duration::from_millis(100)); // a sampling period, not a wait on a condition
    }
    let exit = host.wait();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        exit.stdout
            .starts_with(&format!("{BACKLOG} messages consumed")),
        "{}",
        exit.stdout
    );

    let samples: Vec<u64> = samples.into_iter().filter(|&rss| rss > 0).collect();
    assert!(
        samples.len() >= 10,
        "the run was too short to sample: {samples:?}"
    );
    let mib = |b: u64| b / (1 << 20);
    let third = samples.len() / 3;
    let early = samples[..third].iter().max().copied().unwrap();
    let late = samples[2 * third..].iter().max().copied().unwrap();
    let peak = samples.iter().max().copied().unwrap();
    eprintln!(
        "RSS MiB: early {} late {} peak {} ({} samples)",
        mib(early),
        mib(late),
        mib(peak),
        samples.len()
    );
    // librdkafka's stock prefetch (64 MB or 100k messages per partition) peaks near
    // 300 MiB here: the whole backlog in memory. sluice's defaults keep it near 85.
    assert!(mib(peak) < 150, "peak RSS {} MiB", mib(peak));
    assert!(
        late <= early + early / 4,
        "RSS grew from {} to {} MiB",
        mib(early),
        mib(late)
    );
}

/// Enough work (about 6 s of handler time) to outlast the rebalance.
const SHARED: usize = 4_000;

#[test]
fn two_hosts_share_partitions_and_one_takes_over_when_the_other_dies() {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 8).unwrap();
    two_hosts_share_partitions(broker.bootstrap_servers(), |text| text, libc::SIGKILL);
}

/// noida-db never expires a killed member (see `for_noida_db`): there the
/// first host leaves the group by a stop (SIGTERM) instead.
#[test]
fn on_noida_db_two_hosts_share_partitions_and_one_takes_over_when_the_other_stops() {
    let broker = noida_db(8);
    let edit = |text| for_noida_db(text, None);
    two_hosts_share_partitions(broker.bootstrap_servers(), edit, libc::SIGTERM);
}

/// Two hosts of one group on `brokers` (topic `in` of 8 partitions, made
/// by the caller): they share the partitions, and when one ends by
/// `signal` the other finishes everything, nothing lost.
fn two_hosts_share_partitions(brokers: &str, edit: impl Fn(String) -> String, signal: i32) {
    const HOST_CAP: usize = 200;
    let messages: Vec<_> = (0..SHARED)
        .map(|i| message("in", i as i32 % 8, &format!("k{}", i % 40), "spin:3"))
        .collect();
    sluice::embedded::produce(brokers, &messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let text = config(brokers, "shared", &handlers, ROUTES).replace(
        "shutdown-timeout-ms = 20000",
        &format!("shutdown-timeout-ms = 20000\nmax-in-flight = {HOST_CAP}"),
    );
    let config = scratch.write("shared.toml", edit(text));

    let first = Host::start(&scratch, "first", &config, &[]);
    wait_until("the first host to work", || count(brokers, "echo") >= 100);
    let second = Host::start(&scratch, "second", &config, &[]);
    wait_until("the group to share the partitions", || {
        log_of(&scratch, "second").contains("partitions assigned")
            && log_of(&scratch, "first").contains("partitions revoked")
    });
    wait_until("the second host to work", || {
        log_of(&scratch, "second").contains("echo ")
    });
    // The hand-over drains and commits first; a broker that refuses that
    // commit mid-rebalance (the mock cluster may) costs at most what was
    // uncommitted, which finished messages' slots keep within the cap.
    let repeated = outputs_per_input(brokers)
        .values()
        .filter(|&&n| n > 1)
        .count();
    assert!(
        repeated <= HOST_CAP,
        "the rebalance repeated {repeated} messages; cap {HOST_CAP}"
    );

    first.signal(signal);
    assert_eq!(first.wait().status.success(), signal == libc::SIGTERM);
    wait_until("the survivor to finish everything", || {
        outputs_per_input(brokers).len() == SHARED
    });
    second.signal(libc::SIGTERM);
    assert!(second.wait().status.success());

    let outputs = outputs_per_input(brokers);
    assert_eq!(outputs.len(), SHARED, "inputs lost");
    assert_committed_to_the_end(brokers, "shared");
}

#[test]
fn ten_kills_at_random_points_lose_nothing_and_repeat_only_uncommitted_work() {
    const TOTAL: usize = 20_000;
    const KILLS: usize = 10;
    const HOST_CAP: usize = 200;
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", PARTITIONS).unwrap();
    let messages: Vec<_> = (0..TOTAL)
        .map(|i| {
            message(
                "in",
                i as i32 % PARTITIONS,
                &format!("k{}", i % 100),
                "spin:4",
            )
        })
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let text = config(brokers, "chaos", &handlers, ROUTES)
        .replace("commit-interval-ms = 200", "commit-interval-ms = 50")
        .replace(
            "shutdown-timeout-ms = 20000",
            &format!("shutdown-timeout-ms = 20000\nmax-in-flight = {HOST_CAP}"),
        );
    let config = scratch.write("chaos.toml", text);

    // For each kill: what was committed, and which inputs had outputs.
    let mut exposures = Vec::new();
    let mut published = 0;
    for kill in 0..KILLS {
        let host = Host::start(&scratch, &format!("run{kill}"), &config, &[]);
        let goal = published + rand::random_range(300..1500);
        wait_until("progress before the kill", || {
            count(brokers, "echo") >= goal
        });
        host.signal(libc::SIGKILL);
        assert!(!host.wait().status.success());
        published = count(brokers, "echo");
        let committed = committed_map(brokers, "chaos");
        let done: Vec<(i32, i64)> = outputs_per_input(brokers).into_keys().collect();
        let exposed: Vec<(i32, i64)> = done
            .into_iter()
            .filter(|(p, o)| *o >= committed.get(p).copied().unwrap_or(0))
            .collect();
        // Every input with outputs and no commit held one of the host's
        // in-flight slots: finished messages keep theirs until committed.
        assert!(
            exposed.len() <= HOST_CAP,
            "kill {kill}: {} inputs processed but uncommitted (cap {HOST_CAP})",
            exposed.len()
        );
        exposures.push(exposed);
    }
    Host::start(&scratch, "last", &config, &["--until-drained"]).wait_ok();

    let outputs = outputs_per_input(brokers);
    assert_eq!(outputs.len(), TOTAL, "inputs lost");
    let exposed: std::collections::HashSet<(i32, i64)> =
        exposures.iter().flatten().copied().collect();
    let mut duplicates = 0;
    for (input, n) in &outputs {
        if *n > 1 {
            assert!(
                exposed.contains(input),
                "{input:?} handled {n} times though it was committed"
            );
            duplicates += n - 1;
        }
    }
    let exposure: usize = exposures.iter().map(Vec::len).sum();
    eprintln!("{KILLS} kills: {duplicates} duplicates, {exposure} inputs exposed");
    assert!(duplicates <= exposure);
}
