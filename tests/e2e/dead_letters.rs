//! Every dead-letter cause lands in the dead-letter topic with all its
//! headers, and the partition goes on, on a fresh instance after a trap.

use sluice::embedded::EmbeddedBroker;

use crate::support::*;

const ROUTES: &str = r#"
[limits]
workers = 1
deadline-ms = 200
memory-mib = 32

[[routes]]
topic = "faults"
handler = "test-faults"
publish-to = ["*"]
dead-letter-topic = "faults.dead"
"#;

#[test]
fn each_failure_is_dead_lettered_with_its_headers_and_the_partition_goes_on() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("faults", 1).unwrap();
    broker.create_topic("faults.dead", 1).unwrap();
    let inputs = [
        "invalid", "ok-1", "reject", "ok-2", "panic", "ok-3", "loop", "ok-4", "oom", "ok-5",
        "fail", "ok-6",
    ];
    let messages: Vec<_> = inputs
        .iter()
        .map(|p| message("faults", 0, "k", p))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let config = scratch.write("faults.toml", config(brokers, "faults", &handlers, ROUTES));

    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();

    // (payload, stage, reason, a piece of the detail)
    let expected = [
        ("invalid", "decode", "invalid-input", "invalid requested"),
        ("reject", "handle", "rejected", "rejection requested"),
        ("panic", "handle", "trap", "test-faults: panic requested"),
        ("loop", "handle", "deadline", "deadline of 200 ms exceeded"),
        ("oom", "handle", "memory", "over the cap of 33554432 bytes"),
        ("fail", "handle", "failed", "failure requested"),
    ];
    let dead = read_topic(brokers, "faults.dead");
    assert_eq!(dead.len(), expected.len(), "{dead:#?}");
    for (record, (payload, stage, reason, detail)) in dead.iter().zip(expected) {
        let offset = inputs.iter().position(|i| *i == payload).unwrap();
        assert_eq!(record.payload, payload);
        assert_eq!(record.key.as_deref(), Some("k"), "original key kept");
        assert_eq!(
            record.header("origin"),
            Some("test"),
            "original headers kept"
        );
        assert_eq!(record.header("sluice-stage"), Some(stage), "{payload}");
        assert_eq!(record.header("sluice-reason"), Some(reason), "{payload}");
        let got = record.header("sluice-detail").unwrap();
        assert!(
            got.contains(detail),
            "{payload}: detail {got:?} lacks {detail:?}"
        );
        assert_eq!(record.header("sluice-source-topic"), Some("faults"));
        assert_eq!(record.header("sluice-source-partition"), Some("0"));
        assert_eq!(
            record.header("sluice-source-offset"),
            Some(offset.to_string().as_str())
        );
        assert_eq!(record.header("sluice-handler"), Some("test-faults"));
        assert_eq!(record.header("sluice-handler-version"), Some("0.1.0"));
    }

    // The good messages all came through, in order; after each trap the next
    // one ran on a fresh instance (its first call), otherwise the instance
    // was kept (one worker, so calls count up across errors).
    let echoed: Vec<(String, String)> = read_topic(brokers, "echo")
        .into_iter()
        .map(|r| {
            (
                r.payload.clone(),
                r.header("instance-calls").unwrap().to_owned(),
            )
        })
        .collect();
    let expected_echoes = [
        ("ok-1", "2"),
        ("ok-2", "4"),
        ("ok-3", "1"),
        ("ok-4", "1"),
        ("ok-5", "1"),
        ("ok-6", "3"),
    ];
    let expected_echoes: Vec<(String, String)> = expected_echoes
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(echoed, expected_echoes);

    assert_eq!(
        committed(brokers, "faults", "faults"),
        vec![(0, Some(inputs.len() as i64))]
    );
}
