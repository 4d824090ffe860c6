//! Handlers written in JavaScript and Python: every language's build of a
//! shop handler meets the same conformance vectors (tests/vectors) byte for
//! byte, and a Python build hot-swaps in for the Rust one under load.

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sluice::contract::Message;
use sluice::embedded::EmbeddedBroker;

use crate::support::*;

/// Each vector file and the handler version it specifies.
const VECTORS: [(&str, &str); 5] = [
    ("order-shipped-email", "order-shipped-email/0.1.0.wasm"),
    ("cancel-order", "cancel-order/0.1.0.wasm"),
    ("cancel-order-decider", "cancel-order/0.2.0.wasm"),
    ("sku-coupon", "sku-coupon/0.1.0.wasm"),
    ("order-overdue", "order-overdue/0.1.0.wasm"),
];

fn replay(handler: &Path, vectors: &Path) -> Output {
    sluice()
        .args(["replay", "--handler"])
        .arg(handler)
        .arg("--input")
        .arg(vectors)
        .arg("--artifact-cache")
        .arg(shared_artifact_cache())
        .output()
        .unwrap()
}

fn lines_of(text: &str) -> usize {
    text.lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn every_language_build_of_a_shop_handler_meets_the_same_vectors_byte_for_byte() {
    for (vectors, handler) in VECTORS {
        let file = repo().join(format!("tests/vectors/{vectors}.jsonl"));
        let cases = lines_of(&std::fs::read_to_string(&file).unwrap());
        assert!(cases >= 10, "{vectors}: only {cases} vectors");
        let mut outputs = Vec::new();
        for (language, dist) in dists() {
            let output = replay(&dist.join(handler), &file);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8(output.stdout).unwrap();
            let unmet: Vec<&str> = stdout
                .lines()
                .filter(|l| !l.contains(r#""matches":true"#))
                .collect();
            assert!(
                output.status.success() && unmet.is_empty(),
                "{language} {vectors}: {stderr}\n{}",
                unmet.join("\n")
            );
            assert!(
                stderr.contains(&format!("{cases} of {cases} expectations met; 0 not")),
                "{language} {vectors}: {stderr}"
            );
            assert_eq!(lines_of(&stdout), cases);
            outputs.push((language, stdout));
        }
        // The whole replay, outcome by outcome, is the same text.
        for (language, stdout) in &outputs[1..] {
            assert_eq!(
                stdout, &outputs[0].1,
                "{language} {vectors} differs from rust"
            );
        }
    }
}

#[test]
fn an_outcome_one_byte_off_its_vector_fails_replay_and_shows_what_was_expected() {
    let scratch = Scratch::new();
    let text = std::fs::read_to_string(repo().join("tests/vectors/cancel-order.jsonl")).unwrap();
    // One expectation changed by a single byte (the threshold's text).
    let changed = text.replacen("below threshold 0.5", "below threshold 0.6", 1);
    assert_ne!(changed, text);
    let file = scratch.write("cancel-order.jsonl", changed);
    for (language, dist) in dists() {
        let output = replay(&dist.join("cancel-order/0.1.0.wasm"), &file);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{language}: {stderr}");
        let cases = lines_of(&text);
        assert!(
            stderr.contains(&format!("{} of {cases} expectations met; 1 not", cases - 1)),
            "{language}: {stderr}"
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let unmet: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["matches"] == false)
            .collect();
        assert_eq!(unmet.len(), 1, "{language}: {stdout}");
        assert_eq!(unmet[0]["name"], "fraud below the threshold does not");
        assert!(
            unmet[0]["expected"].to_string().contains("threshold 0.6")
                && unmet[0]["outputs"].to_string().contains("threshold 0.5"),
            "{language}: {}",
            unmet[0]
        );
    }
}

/// An order-shipped message; its email is the order id at example.com.
fn shipped(i: usize) -> Message {
    let id = format!("o-{i}");
    message(
        "order-shipped",
        (i % 4) as i32,
        &id,
        &format!(
            r#"{{"orderId":"{id}","customer":{{"name":"Zoë {i}","email":"{id}@example.com"}},"items":[{{"qty":{}}}]}}"#,
            i % 7
        ),
    )
}

#[test]
fn a_python_build_swaps_in_for_the_rust_one_under_load_with_nothing_lost_or_changed() {
    const MESSAGES: usize = 3_000;
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("order-shipped", 4).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let scratch = Scratch::new();
    let handlers = scratch.path().join("handlers");
    let installed = handlers.join("order-shipped-email");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::copy(
        dist().join("order-shipped-email/0.1.0.wasm"),
        installed.join("1.0.0.wasm"),
    )
    .unwrap();
    let routes = format!(
        r#"artifact-cache = "{}"

[[routes]]
topic = "order-shipped"
handler = "order-shipped-email"
publish-to = ["*"]
"#,
        shared_artifact_cache().display()
    );
    let config = scratch.write("host.toml", config(&brokers, "swap", &handlers, &routes));
    let host = Host::start(&scratch, "host", &config, &[]);

    let half = MESSAGES / 2;
    broker
        .produce(&(0..half).map(shipped).collect::<Vec<_>>())
        .unwrap();
    wait_until("the first half to be handled by Rust", || {
        count(&brokers, "email-requests") >= half as i64
    });
    // Copied in under a temporary name, then renamed: the way to deploy.
    let python = dists()[2].1.join("order-shipped-email/0.1.0.wasm");
    let partial = installed.join("2.0.0.wasm.partial");
    std::fs::copy(&python, &partial).unwrap();
    std::fs::rename(&partial, installed.join("2.0.0.wasm")).unwrap();
    wait_until("the Python version to take over", || {
        log_of(&scratch, "host").contains("handler swapped")
    });
    broker
        .produce(&(half..MESSAGES).map(shipped).collect::<Vec<_>>())
        .unwrap();
    wait_until("every message to be handled", || {
        count(&brokers, "email-requests") >= MESSAGES as i64
    });
    host.signal(libc::SIGTERM);
    host.wait_ok();

    let records = read_topic(&brokers, "email-requests");
    assert_eq!(
        records.len(),
        MESSAGES,
        "an input was lost or handled twice"
    );
    let keys: HashSet<&str> = records.iter().filter_map(|r| r.key.as_deref()).collect();
    assert_eq!(keys.len(), MESSAGES, "an input was handled twice");
    let mut by_version = [0usize; 2];
    for r in &records {
        let i: usize = r.key.as_deref().unwrap()[2..].parse().unwrap();
        let version = r.header("sluice-handler-version").unwrap();
        by_version[usize::from(version == "2.0.0")] += 1;
        // What either language publishes for the same input, byte for byte.
        let id = format!("o-{i}");
        let expected = format!(
            r#"{{"to":"{id}@example.com","template":"order-shipped","subject":"Your order {id} has shipped","vars":{{"name":"Zoë {i}","orderId":"{id}","carrier":null,"tracking":null,"itemCount":{}}}}}"#,
            i % 7
        );
        assert_eq!(r.payload, expected, "version {version}");
        if i >= half {
            assert_eq!(version, "2.0.0", "{id} was produced after the swap");
        }
    }
    assert!(
        by_version[0] >= half && by_version[1] >= MESSAGES - half,
        "{by_version:?}"
    );
}

/// A JavaScript or Python handler with a bug (an exception that is not a
/// handle-error) loses nothing: the message is dead-lettered `trap` with the
/// exception's text, and the partition goes on, on a fresh instance.
#[test]
fn an_uncaught_exception_is_dead_lettered_with_its_text_and_the_partition_goes_on() {
    let cases = [
        (
            "js",
            vec!["a", "throw", "b", "null", "c"],
            vec![
                ("throw", "Error: boom in javascript"),
                (
                    "null",
                    "TypeError: can't access property \"outputs\" of null",
                ),
            ],
        ),
        (
            "python",
            vec!["a", "throw", "b"],
            vec![("throw", "KeyError: 'boom in python'")],
        ),
    ];
    for (language, inputs, failures) in cases {
        let broker = EmbeddedBroker::start().unwrap();
        let brokers = broker.bootstrap_servers();
        broker.create_topic("in", 1).unwrap();
        let messages: Vec<Message> = inputs.iter().map(|p| message("in", 0, "k", p)).collect();
        broker.produce(&messages).unwrap();
        let scratch = Scratch::new();
        let built = guests().join(format!("target/{language}/test-throws.wasm"));
        let handlers = scratch.handlers(&[("throws", "0.1.0", &built)]);
        let routes = format!(
            r#"artifact-cache = "{}"

[[routes]]
topic = "in"
handler = "throws"
publish-to = ["*"]
dead-letter-topic = "in.dead"
"#,
            shared_artifact_cache().display()
        );
        let config = scratch.write("host.toml", config(brokers, "throws", &handlers, &routes));

        Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();

        let dead = read_topic(brokers, "in.dead");
        assert_eq!(dead.len(), failures.len(), "{language}: {dead:#?}");
        for (record, (payload, detail)) in dead.iter().zip(&failures) {
            assert_eq!(record.payload, *payload, "{language}");
            assert_eq!(record.header("sluice-reason"), Some("trap"), "{language}");
            let said = record.header("sluice-detail").unwrap_or_default();
            assert!(said.contains(detail), "{language}: {said}");
        }
        // Every message, the ones after each trap too, is committed.
        assert_eq!(
            committed(brokers, "throws", "in"),
            vec![(0, Some(inputs.len() as i64))],
            "{language}"
        );
        let log = log_of(&scratch, "host");
        for ok in inputs
            .iter()
            .filter(|i| !failures.iter().any(|(f, _)| f == *i))
        {
            assert!(
                log.contains(&format!("sluice::handler: {ok} handler=\"throws\"")),
                "{language}: {ok} not handled:\n{log}"
            );
        }
    }
}
