//! `sluice redrive`: dead letters run again through the version serving
//! now, shown first (dry run), then for real, with their keys un-parked in
//! a running host and on the dead-letter topic.

use std::path::Path;

use serde_json::Value;
use sluice::embedded::EmbeddedBroker;

use crate::support::*;

const TOKEN: &str = "redrive-token-0123456789";

/// `sluice redrive` with these arguments: its exit, stdout and stderr.
fn redrive(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = sluice()
        .args(["redrive", "--config"])
        .arg(config)
        .args(["--dlq", "in.dlq"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn payloads_of(brokers: &str, topic: &str, key: &str) -> Vec<String> {
    read_topic(brokers, topic)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.payload)
        .collect()
}

/// Dead letters proper (not the markers a redrive adds).
fn letters(brokers: &str) -> Vec<Record> {
    read_topic(brokers, "in.dlq")
        .into_iter()
        .filter(|r| r.header("sluice-stage").is_some())
        .collect()
}

#[test]
fn redrive_shows_then_runs_dead_letters_through_the_fixed_version_and_unparks_their_keys() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker.create_topic("in.dlq", 1).unwrap();
    let scratch = Scratch::new();
    // 0.1.0 fails on `fail-next…` payloads; 0.2.0, the fix, echoes them.
    let handlers = scratch.handlers(&[("svc", "0.1.0", &component("test-echo-next"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"svc\"\npublish-to = [\"*\"]\non-dead-letter = \"park-key\"\n\n\
         [admin]\nlisten = \"0\"\ntoken = \"{TOKEN}\"\n"
    );
    let config = scratch.write("redrive.toml", config(brokers, "rd", &handlers, &routes));
    let inputs = [
        ("K", "a1"),
        ("K", "fail-next-1"),
        ("J", "b1"),
        ("K", "a2"),
        ("X", "fail-next-2"),
        ("J", "b2"),
    ];
    let inputs: Vec<_> = inputs.iter().map(|(k, p)| message("in", 0, k, p)).collect();
    broker.produce(&inputs).unwrap();
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    wait_until("K and X to be parked", || letters(brokers).len() == 3);
    assert_eq!(payloads_of(brokers, "echo", "J"), ["b1", "b2"]);
    assert_eq!(payloads_of(brokers, "echo", "K"), ["a1"]);

    // The fix arrives, and serves.
    let fixed = handlers.join("svc").join("0.2.0.wasm");
    std::fs::copy(component("test-echo"), fixed).unwrap();
    wait_until("0.2.0 to serve", || {
        log_of(&scratch, "host").contains("handler swapped")
    });

    // Dry run: each dead letter's outcome under 0.2.0; nothing executed.
    let (ok, stdout, stderr) = redrive(&config, &["--dry-run"]);
    assert!(ok, "{stderr}");
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Keys' dead letters interleave in any order; each key's keep theirs.
    lines.sort_by_key(|l| l["offset"].as_i64());
    let shown: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["version"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
                l["outputs"][0]["publish"]["payload"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("0.2.0", "failed", "fail-next-1"),
            ("0.2.0", "key-parked", "a2"),
            ("0.2.0", "failed", "fail-next-2"),
        ]
    );
    let offsets: Vec<i64> = lines
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 3, 4], "the source offsets are restored");
    assert!(stderr.contains("3 dead letters re-driven"), "{stderr}");
    assert_eq!(
        payloads_of(brokers, "echo", "K"),
        ["a1"],
        "a dry run executes nothing"
    );
    assert!(committed(brokers, "rd-redrive", "in.dlq")[0].1.is_none());

    // One key first: X runs, is un-parked, and nothing is committed.
    let (ok, stdout, stderr) = redrive(&config, &["--key", "X", "--admin", &admin]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 dead letters re-driven"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "key \"X\" of in[0]: un-parked on the topic; running hosts: {admin} unparked"
        )),
        "{stdout}"
    );
    assert_eq!(payloads_of(brokers, "echo", "X"), ["fail-next-2"]);
    assert!(committed(brokers, "rd-redrive", "in.dlq")[0].1.is_none());

    // Everything: only K's are left to run, in order, and the running
    // host lets K go.
    let (ok, stdout, stderr) = redrive(&config, &["--admin", &admin]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 dead letters re-driven; skipped: 1 markers, 1 re-driven before"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{admin} unparked")), "{stdout}");
    assert_eq!(
        payloads_of(brokers, "echo", "K"),
        ["a1", "fail-next-1", "a2"]
    );
    assert_eq!(
        payloads_of(brokers, "echo", "X"),
        ["fail-next-2"],
        "X ran once"
    );
    let redriven = read_topic(brokers, "echo")
        .into_iter()
        .find(|r| r.payload == "fail-next-1")
        .unwrap();
    assert_eq!(
        redriven.header("offset"),
        Some("1"),
        "the handler saw the source offset"
    );
    let dlq_end = end_offsets(brokers, "in.dlq")[0].1;
    let done = committed(brokers, "rd-redrive", "in.dlq")[0].1.unwrap();
    assert_eq!(done, dlq_end - 1, "committed up to its own marker");
    assert_eq!(letters(brokers).len(), 3, "nothing failed again");

    // The running host handles K again, and so does a restarted one (it
    // reads the parking and the un-parking back from the topic).
    broker.produce(&[message("in", 0, "K", "a3")]).unwrap();
    wait_until("K to flow again", || {
        payloads_of(brokers, "echo", "K").len() == 4
    });
    host.signal(libc::SIGTERM);
    host.wait_ok();
    broker
        .produce(&[message("in", 0, "K", "a4"), message("in", 0, "X", "x2")])
        .unwrap();
    Host::start(&scratch, "restarted", &config, &["--until-drained"]).wait_ok();
    assert_eq!(
        payloads_of(brokers, "echo", "K"),
        ["a1", "fail-next-1", "a2", "a3", "a4"]
    );
    assert_eq!(payloads_of(brokers, "echo", "X"), ["fail-next-2", "x2"]);
    assert_eq!(letters(brokers).len(), 3);

    // Again: nothing is left.
    let (ok, stdout, stderr) = redrive(&config, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("0 dead letters re-driven"), "{stdout}");
}

#[test]
fn redrive_refuses_a_topic_no_route_dead_letters_to_and_skips_foreign_records() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker.create_topic("in.dlq", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("svc", "0.1.0", &component("test-echo"))]);
    let routes = "[[routes]]\ntopic = \"other\"\nhandler = \"svc\"\npublish-to = [\"*\"]\n";
    let other = scratch.write("other.toml", config(brokers, "rf", &handlers, routes));
    let (ok, _, stderr) = redrive(&other, &["--dry-run"]);
    assert!(!ok);
    assert!(
        stderr.contains("no route dead-letters to \"in.dlq\"") && stderr.contains("other.dlq"),
        "{stderr}"
    );

    // A record someone else wrote to the dead-letter topic is said and
    // left there; the dead letter behind it still runs.
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"svc\"\npublish-to = [\"*\"]\n";
    let config = scratch.write("in.toml", config(brokers, "rf", &handlers, routes));
    let mut letter = message("in.dlq", 0, "K", "payload");
    letter.headers = [
        ("sluice-stage", "handle"),
        ("sluice-reason", "failed"),
        ("sluice-source-topic", "in"),
        ("sluice-source-partition", "0"),
        ("sluice-source-offset", "7"),
    ]
    .iter()
    .map(|(n, v)| sluice::contract::Header::new(*n, *v))
    .collect();
    broker
        .produce(&[message("in.dlq", 0, "K", "not a dead letter"), letter])
        .unwrap();
    let (ok, stdout, stderr) = redrive(&config, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("not a sluice dead letter"), "{stderr}");
    assert!(
        stdout.contains(
            "1 dead letters re-driven; skipped: 0 markers, 0 re-driven before, 1 not dead letters"
        ),
        "{stdout}"
    );
    let echoed = read_topic(brokers, "echo");
    assert_eq!(echoed.len(), 1);
    assert_eq!(echoed[0].header("offset"), Some("7"));
    assert_eq!(count(brokers, "in.dlq"), 2, "nothing was removed or added");
    assert_eq!(committed(brokers, "rf-redrive", "in.dlq")[0].1, Some(2));
}
