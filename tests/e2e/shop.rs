//! The shop example end to end: what lands in the topics, committed offsets,
//! and that a second run publishes nothing new.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sluice::contract::Message;
use sluice::embedded::EmbeddedBroker;
use sluice::source::jsonl::JsonlReader;

use crate::support::*;
use crate::transactional_broker::TransactionalBroker;

const OUTPUT_TOPICS: [&str; 8] = [
    "email-requests",
    "order-events",
    "sku-events",
    "order-alerts",
    "order-shipped.dlq",
    "order-cancel-requests.dlq",
    "sku-commands.dlq",
    "orders.dlq",
];
const INPUT_TOPICS: [&str; 4] = [
    "order-shipped",
    "order-cancel-requests",
    "sku-commands",
    "orders",
];

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

[[routes]]
topic = "orders"
handler = "order-overdue"
publish-to = ["order-alerts"]
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

/// A record as one canonical JSON line (topic, key, payload, headers). A
/// fired timer's `sluice-id` ends in its due time, which follows from when
/// the `orders` samples were seeded: written `<due>` (`timers_fired_when_due`
/// checks it).
fn canonical(topic: &str, record: &Record) -> String {
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(name, value)| match value.rsplit_once(':') {
            Some((timer, _)) if name == "sluice-id" && value.starts_with("timer:") => {
                (name.clone(), json!(format!("{timer}:<due>")))
            }
            _ => (name.clone(), json!(value)),
        })
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
    let (scratch, config) = shop_config(broker.bootstrap_servers(), handlers, settings, |t| t);
    seed(&broker);
    run_and_compare(broker.bootstrap_servers(), handlers, &scratch, &config);
    (broker, scratch, config)
}

/// The shop's config on `brokers`, with its handlers compiled into the
/// artifact cache (as `sluice check` does): the `orders` samples set
/// timers due seconds after they are seeded, and a host compiling
/// JavaScript or Python components that long would find them past due.
/// `edit` adjusts the config text for the broker.
fn shop_config(
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
    let compiled = sluice()
        .args(["check", "--offline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stdout)
    );
    (scratch, config)
}

/// Runs the seeded shop until drained and compares what it published with
/// the expected records.
fn run_and_compare(brokers: &str, handlers: &Path, scratch: &Scratch, config: &Path) {
    let run = Host::start(scratch, "first", config, &["--until-drained"]).wait_ok();
    // The run's report says what became of the timers, o-3005's included.
    let timers = "timers: 6 scheduled, 2 cancelled, 2 fired, 1 left pending";
    assert!(run.stdout.contains(timers), "{}", run.stdout);

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
    timers_fired_when_due(brokers);
}

/// Each overdue alert fired at the deadline its order's event set: due
/// `withinSeconds` after that event's timestamp (its `sluice-id` says so),
/// and published no earlier.
fn timers_fired_when_due(brokers: &str) {
    let orders = read_topic(brokers, "orders");
    let alerts = read_topic(brokers, "order-alerts");
    assert_eq!(alerts.len(), 2, "o-3001 and o-3002 only");
    for alert in alerts {
        let body: Value = serde_json::from_str(&alert.payload).unwrap();
        let setting = orders
            .iter()
            .filter(|order| order.key == alert.key)
            .rfind(|order| {
                let event: Value = serde_json::from_str(&order.payload).unwrap();
                event["type"] == body["after"]
            })
            .unwrap();
        let due = setting.timestamp + body["withinSeconds"].as_i64().unwrap() * 1000;
        let key = alert.key.as_deref().unwrap();
        assert_eq!(
            alert.header("sluice-id"),
            Some(format!("timer:orders:{key}:{due}").as_str())
        );
        assert!(
            alert.timestamp >= due,
            "{key} published at {}, before it was due at {due}",
            alert.timestamp
        );
    }
}

#[test]
fn shop_publishes_exactly_the_expected_records_on_noida_db_too() {
    let broker = TransactionalBroker::start();
    let brokers = broker.bootstrap_servers();
    // Like Kafka, noida refuses session timeouts under 6 s.
    let (scratch, config) = shop_config(brokers, &dist(), "", |text| {
        text.replace(
            "\"session.timeout.ms\" = \"3000\"",
            "\"session.timeout.ms\" = \"6000\"",
        )
    });
    for topic in INPUT_TOPICS {
        // The samples are dated January 2026: kept whatever their age.
        broker.create_topic_with(topic, 4, &[("retention.ms", "-1")]);
        sluice::embedded::produce(brokers, &shop_messages(topic)).unwrap();
    }
    for topic in OUTPUT_TOPICS {
        broker.create_topic(topic, 1);
    }
    run_and_compare(brokers, &dist(), &scratch, &config);
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

/// The README's first command runs this config (`scripts/demo`): on the
/// embedded broker, its report shows each order's timer being scheduled,
/// replaced or cancelled under its message, and the two that fired, with
/// what they published.
#[test]
fn the_demo_reports_the_timers_its_orders_set_and_the_ones_that_fired() {
    let scratch = Scratch::new();
    let out = succeed(
        sluice()
            .args(["run", "--config"])
            .arg(repo().join("examples/shop/sluice.toml"))
            .env("SLUICE_STORE_PATH", scratch.path().join("events.db")),
    );
    let after = |heading: &str| -> Vec<&str> {
        let at = out
            .find(&format!("\n{heading}"))
            .unwrap_or_else(|| panic!("no {heading:?} in\n{out}"));
        out[at + 1..]
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect()
    };
    assert!(
        out.contains("timers: 6 scheduled, 2 cancelled, 2 fired, 1 left pending (the next due "),
        "{out}"
    );
    let [placed, delayed] =
        [0, 1].map(|offset| after(&format!("orders[0]@{offset}  (order-overdue 0.1.0)")));
    assert!(
        placed[0].starts_with("  scheduled  timer o-3002  due "),
        "{placed:?}"
    );
    assert!(
        delayed[0].starts_with("  scheduled  timer o-3002  due "),
        "{delayed:?}"
    );
    assert!(placed[0] < delayed[0], "the delay pushes the deadline back");
    let cancels = out
        .lines()
        .filter(|l| l.starts_with("  cancelled  timer o-300"))
        .count();
    assert_eq!(cancels, 2, "{out}");
    let fired: Vec<&str> = out.lines().filter(|l| l.starts_with("timer ")).collect();
    assert_eq!(fired.len(), 2, "{out}");
    assert!(
        fired[0].starts_with("timer o-3001 of orders  (due "),
        "{fired:?}"
    );
    assert!(
        fired[1].starts_with("timer o-3002 of orders  (due "),
        "{fired:?}"
    );
    let alert = after(fired[1]);
    assert!(
        alert[0].starts_with("  published  → order-alerts[")
            && alert[0].ends_with(r#"{"type":"OrderOverdue","orderId":"o-3002","after":"ShipmentDelayed","withinSeconds":9}"#),
        "{alert:?}"
    );
}
