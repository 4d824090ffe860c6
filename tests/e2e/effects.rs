//! Effects beyond publish: HTTP with its allow-list and failure classes,
//! retries and circuit breakers, ordering modes, key parking, and
//! components built for earlier contract versions.

use std::collections::HashMap;
use std::time::Duration;

use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;

/// A broker with topic `in` holding `payloads` (key, payload) in partition 0.
fn broker_with(payloads: &[(String, String)]) -> EmbeddedBroker {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 1).unwrap();
    broker.create_topic("in.dlq", 1).unwrap();
    let messages: Vec<_> = payloads
        .iter()
        .map(|(key, payload)| message("in", 0, key, payload))
        .collect();
    broker.produce(&messages).unwrap();
    broker
}

fn test_faults(scratch: &Scratch) -> std::path::PathBuf {
    scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))])
}

fn route(target: &HttpTarget, extra: &str) -> String {
    format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n{extra}\n[routes.http]\nallow = [\"{}\"]\n",
        target.host()
    )
}

fn keyed(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    pairs.into_iter().collect()
}

#[test]
fn a_component_built_for_contract_0_1_still_loads_and_runs() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("legacy", 1).unwrap();
    let messages: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| message("legacy", 0, "k", p))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("legacy", "0.1.0", &component("test-v0-1"))]);
    let routes = "[[routes]]\ntopic = \"legacy\"\nhandler = \"legacy\"\npublish-to = [\"*\"]\n";
    let config = scratch.write("legacy.toml", config(brokers, "legacy", &handlers, routes));
    Host::start(&scratch, "legacy", &config, &["--until-drained"]).wait_ok();
    let echoed: Vec<String> = read_topic(brokers, "echo-v0-1")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(echoed, ["a", "b", "c"]);
}

#[test]
fn a_decider_built_for_contract_0_3_still_loads_and_decides() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("legacy", 1).unwrap();
    let messages: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| message("legacy", 0, "s", p))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("legacy", "0.1.0", &component("test-v0-3-decider"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"legacy\"\nhandler = \"legacy\"\npublish-to = [\"*\"]\n\n[store]\npath = {:?}\n",
        scratch.path().join("events.db")
    );
    let config = scratch.write("legacy.toml", config(brokers, "legacy", &handlers, &routes));
    Host::start(&scratch, "legacy", &config, &["--until-drained"]).wait_ok();
    let decided: Vec<String> = read_topic(brokers, "decided-v0-3")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(decided, ["+a", "a+b", "a,b+c"]);
}

#[test]
fn http_effects_run_and_their_failures_are_classified_and_dead_lettered() {
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: Duration::ZERO,
    });
    let payloads = keyed([
        ("a".into(), format!("http:{}", target.url("/a/0"))),
        ("b".into(), "http:http://evil.example.com/steal".into()),
        ("c".into(), format!("http:{}", target.url("/status/404"))),
        ("d".into(), format!("http:{}", target.url("/status/503"))),
        ("e".into(), format!("http:{}", target.url("/e/1"))),
    ]);
    let broker = broker_with(&payloads);
    let brokers = broker.bootstrap_servers();
    let scratch = Scratch::new();
    let handlers = test_faults(&scratch);
    let retry = "[routes.retry]\ninitial-ms = 1\nmax-interval-ms = 5\nmax-attempts = 3\n[routes.breaker]\nfailures = 100\n";
    let config = scratch.write(
        "http.toml",
        config(brokers, "http", &handlers, &route(&target, retry)),
    );
    Host::start(&scratch, "http", &config, &["--until-drained"]).wait_ok();

    // The good requests were made once each, as the handler described them
    // (different keys: in either order).
    let mut ok = target.succeeded();
    ok.sort_by(|a, b| a.path.cmp(&b.path));
    let paths: Vec<&str> = ok.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/a/0", "/e/1"]);
    assert_eq!(ok[0].method, "POST");
    assert_eq!(ok[0].body, payloads[0].1);
    assert_eq!(
        ok[0].header("origin"),
        Some("test"),
        "message headers forwarded"
    );
    assert_eq!(ok[0].header("sluice-id"), Some("in/0/0/0"));
    assert_eq!(ok[1].header("sluice-id"), Some("in/0/4/0"));
    // Nothing went to a host off the allow-list; the 503 was tried 3 times.
    let received = target.received();
    assert!(received.iter().all(|r| !r.path.contains("steal")));
    assert_eq!(
        received.iter().filter(|r| r.path == "/status/503").count(),
        3
    );
    assert_eq!(
        received.iter().filter(|r| r.path == "/status/404").count(),
        1
    );

    // Different keys run side by side, so their dead letters land in either
    // order: compare them by key.
    let mut dead = read_topic(brokers, "in.dlq");
    dead.sort_by(|a, b| a.key.cmp(&b.key));
    let summary: Vec<(&str, &str, &str, &str)> = dead
        .iter()
        .map(|r| {
            (
                r.key.as_deref().unwrap(),
                r.header("sluice-stage").unwrap(),
                r.header("sluice-reason").unwrap(),
                r.header("sluice-attempts").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("b", "interpret", "host-not-allowed", "0"),
            ("c", "interpret", "http-status", "1"),
            ("d", "interpret", "retries-exhausted", "3"),
        ]
    );
    assert!(dead[1].header("sluice-detail").unwrap().contains("404"));
    assert_eq!(committed(brokers, "http", "in"), vec![(0, Some(5))]);
}

#[test]
fn a_flaky_then_dead_target_opens_the_breaker_and_nothing_is_lost() {
    const MESSAGES: usize = 400;
    let target = HttpTarget::start(Behaviour::FailEveryOther);
    let payloads = keyed((0..MESSAGES).map(|i| {
        (
            format!("k{}", i % 20),
            format!("http:{}", target.url(&format!("/k{}/{i}", i % 20))),
        )
    }));
    let broker = broker_with(&payloads);
    let brokers = broker.bootstrap_servers();
    let scratch = Scratch::new();
    let handlers = test_faults(&scratch);
    let extra = "[routes.retry]\ninitial-ms = 5\nmax-interval-ms = 50\nmax-attempts = 20\n\
                 [routes.breaker]\nfailures = 5\nopen-ms = 200\n";
    let config = scratch.write(
        "flaky.toml",
        config(brokers, "flaky", &handlers, &route(&target, extra)),
    );
    let host = Host::start(&scratch, "flaky", &config, &["--until-drained"]);

    // Half the requests fail: retried, delivered.
    wait_until("some requests to succeed", || {
        target.succeeded().len() >= 100
    });
    // Then the target is gone entirely.
    target.go_down();
    wait_until("the breaker to open", || {
        log_of(&scratch, "flaky").contains("circuit breaker open")
    });
    // Paused as soon as a message waits for the open breaker (all 400 fit
    // in the default in-flight cap: it is not the cap that pauses it).
    wait_until("the partition to be paused", || {
        log_of(&scratch, "flaky").contains("partition paused: effect target down")
    });
    let in_dlq_while_down = count(brokers, "in.dlq");
    target.behave(Behaviour::Ok {
        max_delay: Duration::ZERO,
    });
    target.come_up();
    host.wait_ok();

    assert_eq!(
        in_dlq_while_down, 0,
        "dead-lettered while the breaker was open"
    );
    assert_eq!(count(brokers, "in.dlq"), 0, "nothing may be dead-lettered");
    let mut delivered: Vec<String> = target
        .succeeded()
        .iter()
        .map(|r| r.header("sluice-id").unwrap().to_owned())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        MESSAGES,
        "every message's request got through"
    );
    let log = log_of(&scratch, "flaky");
    assert!(
        log.contains("circuit breaker closed: probe succeeded"),
        "{log}"
    );
}

/// Runs `messages` HTTP effects keyed over `keys` keys with `ordering`, at
/// most `concurrency` at once, and returns the target that saw them.
fn ordered_run(ordering: &str, keys: usize, messages: usize, concurrency: usize) -> HttpTarget {
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: Duration::from_millis(3),
    });
    let payloads = keyed((0..messages).map(|i| {
        let key = format!("k{}", i % keys);
        (
            key.clone(),
            format!("http:{}", target.url(&format!("/{key}/{i}"))),
        )
    }));
    let broker = broker_with(&payloads);
    let scratch = Scratch::new();
    let handlers = test_faults(&scratch);
    let extra = format!("ordering = \"{ordering}\"\nconcurrency = {concurrency}\n");
    let config = scratch.write(
        "ordered.toml",
        config(
            broker.bootstrap_servers(),
            "ordered",
            &handlers,
            &route(&target, &extra),
        ),
    );
    Host::start(&scratch, "ordered", &config, &["--until-drained"]).wait_ok();
    assert_eq!(target.succeeded().len(), messages);
    target
}

/// Each key's requests, as sequence numbers in the order they were answered.
fn per_key_order(target: &HttpTarget) -> HashMap<String, Vec<usize>> {
    let mut order: HashMap<String, Vec<usize>> = HashMap::new();
    for r in target.succeeded() {
        let mut parts = r.path.trim_start_matches('/').split('/');
        let key = parts.next().unwrap().to_owned();
        order
            .entry(key)
            .or_default()
            .push(parts.next().unwrap().parse().unwrap());
    }
    order
}

#[test]
fn key_ordering_keeps_each_keys_effects_in_order_with_keys_concurrent() {
    let target = ordered_run("key", 1000, 5000, 64);
    for (key, seq) in per_key_order(&target) {
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "key {key} out of order");
    }
    assert_eq!(
        target.max_concurrency_per_key(),
        1,
        "a key ran concurrently with itself"
    );
    let max = target.max_concurrency();
    assert!(
        (2..=64).contains(&max),
        "keys should run concurrently, at most 64: {max}"
    );
}

#[test]
fn partition_ordering_runs_one_effect_at_a_time() {
    let target = ordered_run("partition", 50, 200, 64);
    assert_eq!(target.max_concurrency(), 1);
    let seq: Vec<usize> = target
        .succeeded()
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seq, (0..200).collect::<Vec<_>>());
}

#[test]
fn unordered_runs_even_one_keys_effects_concurrently() {
    let target = ordered_run("unordered", 1, 200, 64);
    assert!(target.max_concurrency_per_key() > 1);
}

#[test]
fn park_key_dead_letters_the_rest_of_a_failed_key_in_order_across_restarts() {
    let payloads = keyed(
        [
            ("K", "ok-1"),
            ("K", "fail"),
            ("J", "ok-2"),
            ("K", "ok-3"),
            ("J", "ok-4"),
            ("K", "ok-5"),
        ]
        .map(|(k, p)| (k.to_owned(), p.to_owned())),
    );
    let broker = broker_with(&payloads);
    let brokers = broker.bootstrap_servers();
    let scratch = Scratch::new();
    let handlers = test_faults(&scratch);
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\non-dead-letter = \"park-key\"\n";
    let config = scratch.write("park.toml", config(brokers, "park", &handlers, routes));
    Host::start(&scratch, "park", &config, &["--until-drained"]).wait_ok();

    // A new process (a restart, or the partition's next owner) still holds
    // K parked: it reads the parking back from the dead-letter topic.
    broker
        .produce(&[message("in", 0, "K", "ok-6"), message("in", 0, "J", "ok-7")])
        .unwrap();
    Host::start(&scratch, "restarted", &config, &["--until-drained"]).wait_ok();
    assert!(
        log_of(&scratch, "restarted").contains("parked keys restored"),
        "{}",
        log_of(&scratch, "restarted")
    );

    let echoed: Vec<String> = read_topic(brokers, "echo")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(
        echoed,
        ["ok-1", "ok-2", "ok-4", "ok-7"],
        "other keys flow, K stops at its failure"
    );
    let dead: Vec<(String, String, String, Option<String>)> = read_topic(brokers, "in.dlq")
        .into_iter()
        .map(|r| {
            (
                r.payload.clone(),
                r.header("sluice-stage").unwrap().to_owned(),
                r.header("sluice-reason").unwrap().to_owned(),
                r.header("sluice-parks-key").map(str::to_owned),
            )
        })
        .collect();
    let parks = Some("true".to_owned());
    let expected = [
        ("fail", "handle", "failed"),
        ("ok-3", "schedule", "key-parked"),
        ("ok-5", "schedule", "key-parked"),
        ("ok-6", "schedule", "key-parked"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned(), parks.clone()));
    assert_eq!(dead, expected);
}
