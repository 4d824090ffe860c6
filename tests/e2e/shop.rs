//! The shop example end to end: what lands in the topics, committed offsets,
//! and that a second run publishes nothing new.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sluice::contract::Message;
use sluice::embedded::EmbeddedBroker;
use sluice::source::jsonl::JsonlReader;

use crate::support::*;
use crate::transactional_broker::TransactionalBroker;

const OUTPUT_TOPICS: [&str; 6] = [
    "email-requests",
    "order-events",
    "sku-events",
    "order-shipped.dlq",
    "order-cancel-requests.dlq",
    "sku-commands.dlq",
];
const INPUT_TOPICS: [&str; 3] = ["order-shipped", "order-cancel-requests", "sku-commands"];

pub const ROUTES: &str = r#"
[[routes]]
topic = "order-shipped"
handler = "order-shipped-email"
publish-to = ["email-requests"]
dead-letter-topic = "order-shipped.dlq"

[[routes]]
topic = "order-cancel-requests"
handler = "cancel-order"
publish-to = ["order-events"]

[[routes]]
topic = "sku-commands"
handler = "sku-coupon"
publish-to = ["sku-events"]
"#;

/// Seeds the shop messages the way the demo does: four partitions, by key.
pub fn seed(broker: &EmbeddedBroker) {
    for topic in INPUT_TOPICS {
        broker.create_topic(topic, 4).unwrap();
        broker.produce(&shop_messages(topic)).unwrap();
    }
}

/// The demo's sample messages of one input topic, on 4 partitions by key.
fn shop_messages(topic: &str) -> Vec<Message> {
    let file = repo().join(format!("examples/shop/messages/{topic}.jsonl"));
    JsonlReader::open(&file)
        .unwrap()
        .partition_by_key(4)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A record as one canonical JSON line (topic, key, payload, headers).
fn canonical(topic: &str, record: &Record) -> String {
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    json!({ "topic": topic, "key": record.key, "payload": record.payload, "headers": headers })
        .to_string()
}

fn all_outputs(brokers: &str) -> Vec<String> {
    let mut lines: Vec<String> = OUTPUT_TOPICS
        .iter()
        .flat_map(|topic| {
            read_topic(brokers, topic)
                .iter()
                .map(|r| canonical(topic, r))
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// Runs the shop on `handlers` (with `settings` on top of the config) until
/// drained, and checks it published exactly the expected records.
fn run_shop_and_compare(handlers: &Path, settings: &str) -> (EmbeddedBroker, Scratch, PathBuf) {
    let broker = EmbeddedBroker::start().unwrap();
    seed(&broker);
    let (scratch, config) = shop_on(broker.bootstrap_servers(), handlers, settings, |t| t);
    (broker, scratch, config)
}

/// The shop's run and comparison on `brokers`, seeded by the caller; `edit`
/// adjusts the config text for the broker.
fn shop_on(
    brokers: &str,
    handlers: &Path,
    settings: &str,
    edit: impl Fn(String) -> String,
) -> (Scratch, PathBuf) {
    let scratch = Scratch::new();
    let routes = format!("{settings}\n{ROUTES}");
    let config = scratch.write(
        "shop.toml",
        edit(config(brokers, "shop", handlers, &routes)),
    );

    Host::start(&scratch, "first", &config, &["--until-drained"]).wait_ok();

    let expected_file = repo().join("examples/shop/expected/records.jsonl");
    let mut expected: Vec<String> = std::fs::read_to_string(&expected_file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    expected.sort();
    let actual = all_outputs(brokers);
    assert_eq!(
        actual,
        expected,
        "records of {} differ from {}; actual:\n{}",
        handlers.display(),
        expected_file.display(),
        actual.join("\n")
    );
    (scratch, config)
}

#[test]
fn shop_publishes_exactly_the_expected_records_on_noida_db_too() {
    let broker = TransactionalBroker::start();
    let brokers = broker.bootstrap_servers();
    for topic in INPUT_TOPICS {
        // The samples are dated January 2026: kept whatever their age.
        broker.create_topic_with(topic, 4, &[("retention.ms", "-1")]);
        sluice::embedded::produce(brokers, &shop_messages(topic)).unwrap();
    }
    for topic in OUTPUT_TOPICS {
        broker.create_topic(topic, 1);
    }
    // Like Kafka, noida refuses session timeouts under 6 s.
    shop_on(brokers, &dist(), "", |text| {
        text.replace(
            "\"session.timeout.ms\" = \"3000\"",
            "\"session.timeout.ms\" = \"6000\"",
        )
    });
    for topic in INPUT_TOPICS {
        let committed = committed(brokers, "shop", topic);
        for (partition, end) in end_offsets(brokers, topic) {
            let done = committed.iter().find(|(p, _)| *p == partition).unwrap().1;
            assert_eq!(done.unwrap_or(0), end, "{topic}[{partition}]");
        }
    }
}

#[test]
fn shop_publishes_exactly_the_expected_records_and_commits_to_the_end() {
    let (broker, scratch, config) = run_shop_and_compare(&dist(), "");
    let brokers = broker.bootstrap_servers();

    // Two shipments of o-1001 share a key: their emails keep input order.
    let emails = read_topic(brokers, "email-requests");
    let o1001: Vec<(i32, i64)> = emails
        .iter()
        .filter(|r| r.key.as_deref() == Some("o-1001"))
        .map(Record::source)
        .collect();
    assert_eq!(o1001.len(), 2);
    assert!(
        o1001[0].1 < o1001[1].1,
        "o-1001 emails out of order: {o1001:?}"
    );

    for topic in INPUT_TOPICS {
        let committed = committed(brokers, "shop", topic);
        let ends = end_offsets(brokers, topic);
        for (partition, end) in ends {
            let done = committed.iter().find(|(p, _)| *p == partition).unwrap().1;
            // A partition with no messages may have nothing to commit.
            assert_eq!(
                done.unwrap_or(0),
                end,
                "{topic}[{partition}] committed {done:?}, end {end}"
            );
        }
    }

    // Same group again: everything is committed, so nothing new is published.
    let before: Vec<i64> = OUTPUT_TOPICS.iter().map(|t| count(brokers, t)).collect();
    let second = Host::start(&scratch, "second", &config, &["--until-drained"]).wait_ok();
    let after: Vec<i64> = OUTPUT_TOPICS.iter().map(|t| count(brokers, t)).collect();
    assert_eq!(
        before, after,
        "second run published again:\n{}",
        second.stdout
    );
    assert!(
        second.stdout.starts_with("0 messages consumed"),
        "{}",
        second.stdout
    );
}

/// The demo's config switch: the same handlers built from JavaScript, then
/// from Python, publish the very same records (deciders included).
#[test]
fn shop_publishes_the_same_records_from_its_javascript_and_python_builds() {
    // A deadline for meaning, not speed: a CI machine busy with other
    // tests once took over a second for a JavaScript decider's first calls,
    // and dead-lettered them.
    let settings = format!(
        "artifact-cache = \"{}\"\n[limits]\ndeadline-ms = 30000",
        shared_artifact_cache().display()
    );
    for (language, handlers) in &dists()[1..] {
        let (broker, _scratch, _config) = run_shop_and_compare(handlers, &settings);
        assert!(
            count(broker.bootstrap_servers(), "sku-events") > 0,
            "{language}"
        );
    }
}
