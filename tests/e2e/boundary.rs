//! The boundary between a handler and the host. A handler cannot escape its
//! sandbox, but every output it returns is the host acting on its behalf:
//! these tests attack that side with real components (guests/test-hostile
//! `abuse`, guests/test-decider) served by real hosts on a real broker, and
//! check what was published, committed, dead-lettered and logged, and how
//! much memory the host took.

use std::path::{Path, PathBuf};

use sluice::contract::Message;
use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;

const MIB: u64 = 1 << 20;

/// What a host did with the inputs it served.
struct Served {
    /// Dead letters, in offset order.
    dead: Vec<Record>,
    /// The broker's bootstrap servers, to read what was published.
    brokers: String,
    log: String,
    peak_rss: u64,
    /// `/metrics` just before the host stopped.
    metrics: String,
}

impl Served {
    /// The dead letter of the input at `offset`.
    fn dead_letter(&self, offset: i64) -> &Record {
        let offset = offset.to_string();
        self.dead
            .iter()
            .find(|r| r.header("sluice-source-offset") == Some(offset.as_str()))
            .unwrap_or_else(|| panic!("no dead letter of offset {offset}: {:#?}", self.dead))
    }

    /// What the handler published to `echo`.
    fn echoed(&self) -> Vec<Record> {
        records(&self.brokers, "echo")
    }
}

/// An input: its key and payload.
fn input(key: &str, payload: impl Into<Vec<u8>>) -> Message {
    let mut message = message("in", 0, key, "");
    message.payload = payload.into();
    message
}

/// Serves `inputs` on one partition of `in` to `component` (handler
/// `hostile` 1.0.0, one worker) until all are committed, on a broker of its
/// own (returned, to read other topics from). `route` is added to the route
/// (its `publish-to`, ...); `extra` is more config (its leading keys
/// top-level, its tables after the route); `args` go to `run`.
fn serve(
    component: &Path,
    inputs: &[Message],
    route: &str,
    extra: &str,
    args: &[&str],
) -> (EmbeddedBroker, Served) {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 1).unwrap();
    broker.produce(inputs).unwrap();
    let scratch = Scratch::new();
    let served = serve_on(
        &broker,
        &scratch,
        "host",
        component,
        inputs.len(),
        route,
        extra,
        args,
    );
    (broker, served)
}

/// Like `serve`, on a broker and in a scratch directory of the caller's,
/// with the inputs already produced (`count` of them in all), as host `name`.
#[allow(clippy::too_many_arguments)]
fn serve_on(
    broker: &EmbeddedBroker,
    scratch: &Scratch,
    name: &str,
    component: &Path,
    count: usize,
    route: &str,
    extra: &str,
    args: &[&str],
) -> Served {
    let brokers = broker.bootstrap_servers();
    let handlers = scratch.handlers(&[("hostile", "1.0.0", component)]);
    // The leading keys of `extra` are top-level, its tables go last.
    let tables = extra.find("\n[").map_or(
        if extra.starts_with('[') {
            0
        } else {
            extra.len()
        },
        |i| i + 1,
    );
    let (top, tables) = extra.split_at(tables);
    let routes = format!(
        "{top}\n[limits]\nworkers = 1\n\n[[routes]]\ntopic = \"in\"\nhandler = \"hostile\"\n{route}\n\n{tables}\n[admin]\nlisten = \"0\"\n"
    );
    let config = scratch.write(
        &format!("{name}.toml"),
        config(brokers, "boundary", &handlers, &routes),
    );
    let host = Host::start(scratch, name, &config, args);
    let admin = admin_address(scratch, name);
    wait_until("every input to be committed", || {
        committed(brokers, "boundary", "in") == vec![(0, Some(count as i64))]
    });
    let metrics = http_get(&admin, "/metrics");
    let peak_rss = host.peak_rss();
    host.signal(libc::SIGTERM);
    host.wait_ok();
    // Whatever the attack, the host stays small (tests with a budget to
    // check assert a tighter bound).
    assert!(
        peak_rss < 200 * MIB,
        "peak RSS {} MiB under attack",
        peak_rss / MIB
    );
    Served {
        dead: read_topic(brokers, "in.dlq"),
        brokers: brokers.to_owned(),
        log: log_of(scratch, name),
        peak_rss,
        metrics,
    }
}

fn abuse() -> PathBuf {
    hostile("abuse")
}

/// Records of a topic that does not have to exist.
fn records(brokers: &str, topic: &str) -> Vec<Record> {
    match count(brokers, topic) {
        0 => Vec::new(),
        _ => read_topic(brokers, topic),
    }
}

#[test]
fn a_handler_publishes_only_where_its_route_allows_and_never_to_sluices_own_topics() {
    let attacks: &[(&[u8], &str, &str)] = &[
        (
            b"attack:publish:in.dlq",
            "topic-reserved",
            "a dead-letter topic",
        ),
        (
            b"attack:publish:other.dlq",
            "topic-reserved",
            "a dead-letter topic",
        ),
        (
            b"attack:publish:hostile.shadow-diffs",
            "topic-reserved",
            "a shadow-diff topic",
        ),
        (
            b"attack:publish:__consumer_offsets",
            "topic-reserved",
            "a Kafka-internal topic",
        ),
        (
            b"attack:publish:__transaction_state",
            "topic-reserved",
            "a Kafka-internal topic",
        ),
        (
            b"attack:publish:payments",
            "topic-not-allowed",
            "not on the route's publish-to list [\"echo\", \"ok.*\"]",
        ),
        (
            b"attack:publish:ok\0evil",
            "invalid-topic",
            "'\\0' is not allowed",
        ),
        (b"attack:publish:", "invalid-topic", "cannot be empty"),
    ];
    let mut inputs = vec![input("k", "ok-1")];
    inputs.extend(attacks.iter().map(|(payload, _, _)| input("k", *payload)));
    inputs.push(input("k", "attack:publish:ok.fine"));
    inputs.push(input("k", "ok-2"));
    let (broker, served) = serve(
        &abuse(),
        &inputs,
        "publish-to = [\"echo\", \"ok.*\"]",
        "",
        &[],
    );

    for (i, (payload, reason, detail)) in attacks.iter().enumerate() {
        let dead = served.dead_letter(i as i64 + 1);
        assert_eq!(dead.header("sluice-reason"), Some(*reason), "{dead:?}");
        assert_eq!(dead.header("sluice-stage"), Some("interpret"));
        // Refused before any attempt: never retried, no breaker.
        assert_eq!(dead.header("sluice-attempts"), Some("0"));
        let got = dead.header("sluice-detail").unwrap();
        assert!(got.contains(detail), "{got:?} lacks {detail:?}");
        // The dead letter is the host's, holding the input, not the forgery.
        assert_eq!(dead.payload.as_bytes(), *payload);
    }
    assert_eq!(served.dead.len(), attacks.len(), "{:#?}", served.dead);
    let echoed = served.echoed();
    let echoed: Vec<&str> = echoed.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!(echoed, ["ok-1", "ok-2"], "the partition flows");
    let allowed = records(broker.bootstrap_servers(), "ok.fine");
    assert_eq!(allowed.len(), 1, "a topic the route allows is published to");
    assert_eq!(allowed[0].payload, "forged");
    for topic in [
        "other.dlq",
        "hostile.shadow-diffs",
        "__consumer_offsets",
        "__transaction_state",
        "payments",
    ] {
        assert!(
            records(broker.bootstrap_servers(), topic).is_empty(),
            "{topic} was written"
        );
    }
    assert!(
        !served.log.contains("retrying") && !served.log.contains("breaker"),
        "nothing was retried: {}",
        served.log
    );
}

#[test]
fn a_forged_dead_letter_or_parking_marker_changes_nothing() {
    // The route parks keys: a forged `sluice-parks-key` dead letter for key
    // `victim` would park it at the next assignment, and `sluice redrive`
    // would run the forgery as if it came from offset 0.
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 1).unwrap();
    let first = [
        input("victim", "v-1"),
        input("attacker", "attack:forge-dead-letter:in.dlq:victim"),
        input("attacker", "attack:forge-dead-letter:other.dlq:victim"),
    ];
    broker.produce(&first).unwrap();
    let scratch = Scratch::new();
    let route = "publish-to = [\"*\"]\non-dead-letter = \"park-key\"";
    let served = serve_on(&broker, &scratch, "first", &abuse(), 3, route, "", &[]);
    let reasons: Vec<(Option<&str>, Option<&str>)> = served
        .dead
        .iter()
        .map(|r| (r.key.as_deref(), r.header("sluice-reason")))
        .collect();
    // The forgeries are dead-lettered; the first parks its own key (the
    // attacker's), which holds the second behind it.
    assert_eq!(
        reasons,
        [
            (Some("attacker"), Some("topic-reserved")),
            (Some("attacker"), Some("key-parked"))
        ]
    );
    assert!(records(broker.bootstrap_servers(), "other.dlq").is_empty());
    let dead_letters = read_topic(broker.bootstrap_servers(), "in.dlq");
    assert!(dead_letters.iter().all(|r| r.payload != "forged"));

    // A new host restores parked keys from the dead-letter topic: only the
    // attacker's own key is parked, the victim's messages flow.
    broker
        .produce(&[input("victim", "v-2"), input("attacker", "a-2")])
        .unwrap();
    let again = serve_on(&broker, &scratch, "second", &abuse(), 5, route, "", &[]);
    let echoed = again.echoed();
    let echoed: Vec<(Option<&str>, &str)> = echoed
        .iter()
        .map(|r| (r.key.as_deref(), r.payload.as_str()))
        .collect();
    assert_eq!(echoed, [(Some("victim"), "v-1"), (Some("victim"), "v-2")]);
    assert!(again.log.contains("parked keys restored"), "{}", again.log);
    let held = again
        .dead
        .iter()
        .find(|r| r.payload == "a-2")
        .expect("a-2 held");
    assert_eq!(held.header("sluice-reason"), Some("key-parked"));

    // Redrive sees the host's dead letters only.
    let config = scratch.path().join("second.toml");
    let out = succeed(
        sluice()
            .args(["redrive", "--dry-run", "--dlq", "in.dlq", "--config"])
            .arg(&config),
    );
    // Each line is a dead letter the host wrote, from the offset it names;
    // none claims the forged source (offset 0, the victim's).
    let letters: Vec<(u64, String)> = out
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                value["offset"].as_u64().unwrap(),
                value["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        letters,
        [
            (1, "topic-reserved".to_owned()),
            (2, "key-parked".to_owned()),
            (4, "key-parked".to_owned())
        ]
    );
}

#[test]
fn host_headers_on_a_publish_are_the_hosts_alone() {
    let (_broker, served) = serve(
        &abuse(),
        &[input("k", "ok-1"), input("k", "attack:headers")],
        "publish-to = [\"echo\"]",
        "",
        &[],
    );
    assert!(served.dead.is_empty(), "{:#?}", served.dead);
    let echoed = served.echoed();
    only_the_hosts_headers(&echoed[1], "in/0/1/0");
}

/// A record bearing the abuse guest's forged headers: only the host's
/// remain (`sluice-id` as given), and the handler's own.
fn only_the_hosts_headers(forged: &Record, id: &str) {
    let values = |name: &str| -> Vec<&str> {
        forged
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("sluice-id"), [id], "{forged:?}");
    assert_eq!(values("sluice-handler"), ["hostile"]);
    assert_eq!(values("sluice-handler-version"), ["1.0.0"]);
    assert!(values("sluice-stage").is_empty(), "{forged:?}");
    let traceparent = values("traceparent");
    assert_eq!(traceparent.len(), 1);
    assert!(
        !traceparent[0].contains("2222222222222222"),
        "{traceparent:?}"
    );
    assert_eq!(values("x-own"), ["kept"], "the handler's own headers stay");
}

/// A timer's record is kept for later: the headers only the host sets are
/// dropped when it is scheduled, and the host's are on it when it fires.
#[test]
fn host_headers_on_a_timer_are_the_hosts_alone() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker
        .produce(&[input("k", "attack:timer-headers")])
        .unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("hostile", "1.0.0", &abuse())]);
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"hostile\"\npublish-to = [\"echo\"]\n";
    let config = scratch.write("timer.toml", config(brokers, "boundary", &handlers, routes));
    // Until drained: it waits for the timer, due at once, to fire.
    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();
    let echoed = records(brokers, "echo");
    assert_eq!(echoed.len(), 1, "{echoed:?}");
    // Due at the message's time, which the broker gave it.
    let due = read_topic(brokers, "in")[0].timestamp;
    let id = format!("timer:in:forged:{due}");
    only_the_hosts_headers(&echoed[0], &id);
}

#[test]
fn host_headers_on_a_request_are_the_hosts_and_host_and_framing_are_refused() {
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: std::time::Duration::ZERO,
    });
    let url = target.url("/abuse");
    let inputs = [
        input("k", format!("attack:http-headers:{url}")),
        input("k", format!("attack:http-host:{url}")),
        input("k", format!("attack:http-framing:{url}")),
        input("k", "ok-1"),
    ];
    let route = format!(
        "publish-to = [\"echo\"]\n[routes.http]\nallow = [\"{}\"]",
        target.host()
    );
    let (_broker, served) = serve(&abuse(), &inputs, &route, "", &[]);
    let received = target.received();
    assert_eq!(
        received.len(),
        1,
        "only the first request was sent: {received:#?}"
    );
    let request = &received[0];
    assert_eq!(request.header_values("sluice-id"), ["in/0/0/0"]);
    let traceparent = request.header_values("traceparent");
    assert_eq!(traceparent.len(), 1);
    assert!(!traceparent[0].contains("2222222222222222"));
    assert_eq!(request.header_values("x-own"), ["kept"]);
    assert_eq!(request.header_values("host"), [target.host().as_str()]);
    for (offset, header) in [(1, "\"Host\""), (2, "\"Transfer-Encoding\"")] {
        let dead = served.dead_letter(offset);
        assert_eq!(dead.header("sluice-reason"), Some("invalid-request"));
        let detail = dead.header("sluice-detail").unwrap();
        assert!(
            detail.contains(header) && detail.contains("a handler cannot"),
            "{detail}"
        );
    }
    assert_eq!(served.dead.len(), 2);
    assert_eq!(served.echoed().len(), 1);
}

#[test]
fn log_outputs_share_the_rate_limit_and_no_guest_text_forges_a_log_line() {
    // The forgery first, while the budget has room for its lines.
    let inputs = [
        input("k", "attack:log-forge"),
        input("k", "attack:log-lines:2000"),
        input("k", "attack:log-lines:2000"),
    ];
    let limits = "[handlers.hostile.limits]\nstdio-lines-per-second = 20\n";
    let (_broker, served) = serve(&abuse(), &inputs, "publish-to = [\"echo\"]", limits, &[]);
    assert!(served.dead.is_empty(), "{:#?}", served.dead);
    let logged = served
        .log
        .lines()
        .filter(|l| l.contains("abuse log line"))
        .count();
    // 4000 asked for; about one second's worth (20) and a refill got through.
    assert!(
        (1..=100).contains(&logged),
        "{logged} log outputs were logged"
    );
    assert!(
        served
            .log
            .contains("guest log over 20 lines per second: dropping lines"),
        "the drop is announced"
    );
    let dropped: u64 = served
        .metrics
        .lines()
        .find(|l| l.starts_with("sluice_guest_log_lines_dropped_total{handler=\"hostile\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("dropped lines in /metrics");
    assert!(dropped >= 3900, "{dropped} dropped");
    // The log output's text stays on one escaped line. Stdout is read as
    // lines, so its newline ends a guest line: each piece is a host line of
    // its own, escaped all the same. No line of the log starts with guest
    // text, nothing raw gets out.
    assert!(
        served.log.lines().all(|l| !l.starts_with("FORGED-LINE")),
        "{}",
        served.log
    );
    let lines_with = |text: &str| served.log.lines().filter(|l| l.contains(text)).count();
    let whole = "innocent\\nFORGED-LINE ERROR sluice: all partitions lost\\r\\u{1b}[2J";
    assert_eq!(lines_with(whole), 1, "{}", served.log);
    let tail = "FORGED-LINE ERROR sluice: all partitions lost\\r\\u{1b}[2J";
    assert_eq!(lines_with(tail), 2, "{}", served.log);
    assert!(
        !served.log.chars().any(|c| c.is_control() && c != '\n'),
        "a raw control character reached the log"
    );
}

#[test]
fn json_logs_stay_one_valid_object_per_line_whatever_a_guest_writes() {
    let (_broker, served) = serve(
        &abuse(),
        &[input("k", "attack:log-forge")],
        "publish-to = [\"echo\"]",
        "",
        &["--log-format", "json"],
    );
    let forged = "innocent\nFORGED-LINE ERROR sluice: all partitions lost\r\u{1b}[2J";
    let messages: Vec<String> = served
        .log
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            value["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let count = |text: &str| messages.iter().filter(|m| *m == text).count();
    assert_eq!(count(forged), 1, "the log output, decoded intact");
    let (first, second) = forged.split_once('\n').unwrap();
    assert_eq!((count(first), count(second)), (1, 1), "the stdout lines");
}

#[test]
fn a_stdout_write_past_the_check_write_budget_traps_at_once() {
    let inputs = [
        input("k", "ok-1"),
        input("k", "attack:write:8388608"),
        input("k", "ok-2"),
    ];
    let (_broker, served) = serve(&abuse(), &inputs, "publish-to = [\"echo\"]", "", &[]);
    let dead = served.dead_letter(1);
    assert_eq!(dead.header("sluice-reason"), Some("trap"));
    let detail = dead.header("sluice-detail").unwrap();
    assert!(
        detail.contains(
            "a write of 8388608 bytes to stdout, over the check-write budget of 16384 bytes"
        ),
        "{detail}"
    );
    assert_eq!(served.dead.len(), 1);
    let echoed = served.echoed();
    let echoed: Vec<&str> = echoed.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!(echoed, ["ok-1", "ok-2"]);
}

#[test]
fn outputs_held_for_their_effects_stay_within_the_hosts_byte_budget() {
    // Each call returns 12 records of 900 kB (under max-output-bytes): a
    // batch of 30 would hold over 300 MB (twice, with the producer's copy)
    // before the broker confirmed them. The budget holds 32 MiB.
    let inputs: Vec<Message> = (0..30)
        .map(|i| input(&format!("k{i}"), "attack:big:12:900000"))
        .collect();
    let (_broker, served) = serve(
        &abuse(),
        &inputs,
        "publish-to = [\"echo\"]",
        "max-in-flight-mib = 32\n",
        &[],
    );
    assert!(
        served.dead.is_empty(),
        "nothing fails for the budget: {:#?}",
        served.dead.len()
    );
    assert_eq!(
        count(&served.brokers, "echo"),
        30 * 12,
        "every output published"
    );
    eprintln!("host peak RSS {} MiB", served.peak_rss / MIB);
    // README: base + instances + 2 × (budget + one call's reservation).
    assert!(
        served.peak_rss < 260 * MIB,
        "peak RSS {} MiB",
        served.peak_rss / MIB
    );
    assert!(
        served
            .metrics
            .contains("sluice_held_output_bytes_cap 33554432")
    );
}

#[test]
fn decider_states_in_memory_stay_within_their_byte_budget() {
    // Each stream's state is 6 MiB: 60 streams would keep 360 MiB cached.
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 1).unwrap();
    // A second pass decides on every state again, from the cache or the
    // store.
    let fat = (0..60).map(|i| input(&format!("s{i}"), format!("s{i}:fat:6")));
    let add = (0..60).map(|i| input(&format!("s{i}"), format!("s{i}:add:x")));
    let inputs: Vec<Message> = fat.chain(add).collect();
    broker.produce(&inputs).unwrap();
    let scratch = Scratch::new();
    let store = scratch.path().join("events.db");
    let extra = format!(
        "[store]\npath = \"{}\"\n\n[decider]\ncache-mib = 24\n",
        store.display()
    );
    let served = serve_on(
        &broker,
        &scratch,
        "host",
        &component("test-decider"),
        inputs.len(),
        "publish-to = [\"decided\"]",
        &extra,
        &[],
    );
    let decided = read_topic(broker.bootstrap_servers(), "decided");
    assert!(served.dead.is_empty(), "{:#?}", served.dead);
    // `decided` is keyed by stream: each stream's pair is in order.
    for i in 0..60 {
        let stream = format!("s{i}");
        let payloads: Vec<&str> = decided
            .iter()
            .filter(|r| r.key.as_deref() == Some(stream.as_str()))
            .map(|r| r.payload.as_str())
            .collect();
        assert_eq!(payloads, ["|fat:6", "6291456 bytes|add:x"], "{stream}");
    }
    eprintln!("host peak RSS {} MiB", served.peak_rss / MIB);
    assert!(
        served.peak_rss < 220 * MIB,
        "peak RSS {} MiB",
        served.peak_rss / MIB
    );
}

/// A valid component padded with a custom section to `size` bytes.
fn padded(component: &Path, size: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(component).unwrap();
    let name = b"padding";
    let body_len = size - bytes.len() - 1 - 5;
    bytes.push(0);
    // A five-byte LEB128 length, so the size comes out exact.
    let mut n = body_len;
    for i in 0..5 {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        bytes.push(if i < 4 { byte | 0x80 } else { byte });
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.resize(size, 0);
    bytes
}

#[test]
fn a_component_over_its_size_cap_is_refused_before_it_is_read() {
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("hostile", "1.0.0", &abuse())]);
    let big = handlers.join("hostile/2.0.0.wasm");
    std::fs::write(&big, padded(&abuse(), 100 << 20)).unwrap();
    let routes = |limits: &str| {
        format!(
            "[[routes]]\ntopic = \"in\"\nhandler = \"hostile\"\npublish-to = [\"echo\"]\n{limits}"
        )
    };
    let verdict = |limits: &str| {
        let config = scratch.write(
            "handlers.toml",
            config("127.0.0.1:9", "g", &handlers, &routes(limits)),
        );
        succeed(sluice().args(["handlers", "--config"]).arg(&config))
    };
    let refused = verdict("");
    let line = refused.lines().find(|l| l.contains("2.0.0")).unwrap();
    assert!(line.contains("rejected"), "{refused}");
    assert!(
        line.contains("104857600 bytes, over the cap of 50331648 bytes (limits.max-component-mib)"),
        "{line}"
    );
    assert!(
        refused
            .lines()
            .any(|l| l.contains("1.0.0") && l.contains("active"))
    );
    // The same file under a higher cap is a component like any other.
    let allowed = verdict("\n[handlers.hostile.limits]\nmax-component-mib = 128\n");
    assert!(
        allowed
            .lines()
            .any(|l| l.contains("2.0.0") && l.contains("active")),
        "{allowed}"
    );
    let out = sluice().arg("inspect").arg(&big).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("over the cap of 50331648 bytes"));

    // A host beside it serves 1.0.0, having never read the big file.
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 1).unwrap();
    broker.produce(&[input("k", "ok-1")]).unwrap();
    let config = scratch.write(
        "host.toml",
        config(
            broker.bootstrap_servers(),
            "boundary",
            &handlers,
            &routes(""),
        ),
    );
    let host = Host::start(&scratch, "host", &config, &[]);
    wait_until("the input to be committed", || {
        committed(broker.bootstrap_servers(), "boundary", "in") == vec![(0, Some(1))]
    });
    let peak_rss = host.peak_rss();
    host.signal(libc::SIGTERM);
    host.wait_ok();
    let echoed = read_topic(broker.bootstrap_servers(), "echo");
    assert_eq!(echoed[0].header("sluice-handler-version"), Some("1.0.0"));
    assert!(peak_rss < 100 * MIB, "peak RSS {} MiB", peak_rss / MIB);
}

#[test]
fn handlers_and_inspect_show_what_a_route_lets_its_handler_reach() {
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("hostile", "1.0.0", &abuse())]);
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"hostile\"\npublish-to = [\"echo\", \"ok.*\"]\n[routes.http]\nallow = [\"api.example.com\"]\n\n[[routes]]\ntopic = \"quiet\"\nhandler = \"hostile\"\npublish-to = []\ndead-letter-topic = \"errors\"\n";
    let config = scratch.write("reach.toml", config("127.0.0.1:9", "g", &handlers, routes));
    let never = "never     dead-letter topics (in.dlq, errors, *.dlq), shadow-diff topics (hostile.shadow-diffs, *.shadow-diffs), Kafka-internal topics (__*)";
    let text = succeed(sluice().args(["handlers", "--config"]).arg(&config));
    for expected in [
        "route in -> hostile\n  publish   echo, ok.*\n  http      api.example.com\n",
        "route quiet -> hostile\n  publish   nothing\n  http      nothing\n",
        never,
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let text = succeed(
        sluice()
            .arg("inspect")
            .arg(handlers.join("hostile/1.0.0.wasm"))
            .arg("--config")
            .arg(&config),
    );
    assert!(text.contains("world     handler"), "{text}");
    assert!(
        text.contains("route in -> hostile\n  publish   echo, ok.*"),
        "{text}"
    );
}

/// The memory a `raw-outputs` guest returns: bytes laid out as the
/// canonical ABI lays out `result<list<output>, handle-error>`, and the
/// offsets of the words that are pointers (the guest adds its buffer's
/// address to them).
#[derive(Default)]
struct Image {
    bytes: Vec<u8>,
    pointers: Vec<u32>,
}

impl Image {
    fn alloc(&mut self, size: usize) -> usize {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
        let at = self.bytes.len();
        self.bytes.resize(at + size, 0);
        at
    }

    fn word(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// A list or string at `at`: its bytes, pointed to, and its length.
    fn list(&mut self, at: usize, target: usize, len: usize) {
        self.word(at, target as u32);
        self.pointers.push(at as u32);
        self.word(at + 4, len as u32);
    }

    fn bytes(&mut self, at: usize, bytes: &[u8]) {
        let target = self.alloc(bytes.len());
        self.bytes[target..target + bytes.len()].copy_from_slice(bytes);
        self.list(at, target, bytes.len());
    }

    fn headers(&mut self, at: usize, headers: &[(String, String)]) {
        let target = self.alloc(16 * headers.len());
        for (i, (name, value)) in headers.iter().enumerate() {
            self.bytes(target + 16 * i, name.as_bytes());
            self.bytes(target + 16 * i + 8, value.as_bytes());
        }
        self.list(at, target, headers.len());
    }

    /// The image of `Ok(outputs)`.
    fn of(outputs: &[RawOutput]) -> Image {
        let mut image = Image::default();
        let result = image.alloc(12);
        let list = image.alloc(40 * outputs.len());
        image.list(result + 4, list, outputs.len());
        for (i, output) in outputs.iter().enumerate() {
            let at = list + 40 * i;
            match output {
                RawOutput::Publish {
                    topic,
                    key,
                    payload,
                    headers,
                } => {
                    image.bytes(at + 4, topic.as_bytes());
                    if let Some(key) = key {
                        image.bytes[at + 12] = 1;
                        image.bytes(at + 16, key.as_bytes());
                    }
                    image.bytes(at + 24, payload.as_bytes());
                    image.headers(at + 32, headers);
                }
                RawOutput::Log { level, text } => {
                    image.bytes[at] = 1;
                    image.bytes[at + 4] = *level;
                    image.bytes(at + 8, text.as_bytes());
                }
                RawOutput::Http {
                    method,
                    url,
                    headers,
                    body,
                } => {
                    image.bytes[at] = 2;
                    image.bytes[at + 4] = *method;
                    image.bytes(at + 8, url.as_bytes());
                    image.headers(at + 16, headers);
                    image.bytes(at + 24, body.as_bytes());
                }
            }
        }
        image
    }

    /// The payload that makes the guest return this image.
    fn payload(&self) -> Vec<u8> {
        let mut payload = (self.pointers.len() as u32).to_le_bytes().to_vec();
        for at in &self.pointers {
            payload.extend_from_slice(&at.to_le_bytes());
        }
        payload.extend_from_slice(&self.bytes);
        payload
    }
}

#[derive(Debug, Clone)]
enum RawOutput {
    Publish {
        topic: String,
        key: Option<String>,
        payload: String,
        headers: Vec<(String, String)>,
    },
    Log {
        level: u8,
        text: String,
    },
    Http {
        method: u8,
        url: String,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl RawOutput {
    /// As `sluice replay` prints it.
    fn canonical(&self) -> serde_json::Value {
        use serde_json::json;
        let headers = |headers: &[(String, String)]| -> Vec<serde_json::Value> {
            headers
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect()
        };
        match self {
            RawOutput::Publish {
                topic,
                key,
                payload,
                headers: h,
            } => {
                let mut publish =
                    json!({"topic": topic, "payload": payload, "headers": headers(h)});
                if let Some(key) = key {
                    publish["key"] = key.clone().into();
                }
                json!({ "publish": publish })
            }
            RawOutput::Log { level, text } => {
                let level = ["trace", "debug", "info", "warn", "error"][*level as usize];
                json!({"log": {"level": level, "text": text}})
            }
            RawOutput::Http {
                method,
                url,
                headers: h,
                body,
            } => {
                let method =
                    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"][*method as usize];
                json!({"http": {"method": method, "url": url, "headers": headers(h), "body": body}})
            }
        }
    }
}

fn raw_outputs() -> impl proptest::strategy::Strategy<Value = Vec<RawOutput>> {
    use proptest::prelude::*;
    let text = || ".{0,12}";
    let headers = move || proptest::collection::vec((text(), text()), 0..3);
    let output = prop_oneof![
        (text(), proptest::option::of(text()), text(), headers()).prop_map(
            |(topic, key, payload, headers)| RawOutput::Publish {
                topic,
                key,
                payload,
                headers
            }
        ),
        (0..5u8, text()).prop_map(|(level, text)| RawOutput::Log { level, text }),
        (0..7u8, text(), headers(), text()).prop_map(|(method, url, headers, body)| {
            RawOutput::Http {
                method,
                url,
                headers,
                body,
            }
        }),
    ];
    proptest::collection::vec(output, 0..5)
}

/// One way to spoil an image: what a guest may return instead of outputs.
#[derive(Debug, Clone)]
enum Spoil {
    /// A byte of the image replaced.
    Byte { at: usize, value: u8 },
    /// A word replaced (a pointer, a length or a discriminant).
    Word { at: usize, value: u32 },
    /// The image cut short.
    Cut { len: usize },
    /// A pointer left as an offset (pointing into the guest's low memory).
    Unrelocated { which: usize },
}

fn spoils() -> impl proptest::strategy::Strategy<Value = Vec<Spoil>> {
    use proptest::prelude::*;
    let words = prop_oneof![
        Just(0u32),
        Just(1),
        Just(3),
        Just(u32::MAX),
        Just(0x7fff_ffff),
        Just(10_001),
        Just(1 << 20),
        any::<u32>()
    ];
    let spoil = prop_oneof![
        (0..512usize, any::<u8>()).prop_map(|(at, value)| Spoil::Byte { at, value }),
        (0..128usize, words).prop_map(|(at, value)| Spoil::Word { at: at * 4, value }),
        (0..512usize).prop_map(|len| Spoil::Cut { len }),
        (0..16usize).prop_map(|which| Spoil::Unrelocated { which }),
    ];
    proptest::collection::vec(spoil, 1..4)
}

#[test]
fn the_hosts_lifting_of_outputs_takes_any_bytes_a_guest_returns() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    // One replay of many calls: well-formed images must come out exactly
    // as they went in, spoiled ones as outputs or as a clean error, and
    // the host must answer every call.
    let mut runner = TestRunner::deterministic();
    let mut cases = String::new();
    let mut expected = Vec::new();
    for i in 0..600 {
        let outputs = raw_outputs().new_tree(&mut runner).unwrap().current();
        let mut image = Image::of(&outputs);
        let spoiled = i % 3 != 0;
        if spoiled {
            for spoil in spoils().new_tree(&mut runner).unwrap().current() {
                match spoil {
                    Spoil::Byte { at, value } if at < image.bytes.len() => image.bytes[at] = value,
                    Spoil::Word { at, value } if at + 4 <= image.bytes.len() => {
                        image.pointers.retain(|p| *p as usize != at);
                        image.word(at, value);
                    }
                    Spoil::Cut { len } if len < image.bytes.len() => image.bytes.truncate(len),
                    Spoil::Unrelocated { which } if which < image.pointers.len() => {
                        image.pointers.remove(which);
                    }
                    _ => {}
                }
            }
        }
        let payload =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, image.payload());
        cases.push_str(&format!(
            "{{\"topic\":\"in\",\"payload-base64\":\"{payload}\"}}\n"
        ));
        expected
            .push((!spoiled).then(|| outputs.iter().map(RawOutput::canonical).collect::<Vec<_>>()));
    }
    let scratch = Scratch::new();
    let input = scratch.write("raw.jsonl", cases);
    let out = succeed(
        sluice()
            .args(["replay", "--handler"])
            .arg(hostile("raw-outputs"))
            .arg("--input")
            .arg(&input),
    );
    let outcomes: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), expected.len(), "one outcome per call");
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (i, (outcome, expected)) in outcomes.iter().zip(&expected).enumerate() {
        match expected {
            Some(outputs) => assert_eq!(
                outcome["outputs"].as_array(),
                Some(outputs),
                "case {i}: {outcome}"
            ),
            None => {
                let kind = match outcome.get("error") {
                    Some(error) => error["kind"].as_str().unwrap().to_owned(),
                    None => {
                        assert!(outcome["outputs"].is_array(), "case {i}: {outcome}");
                        "outputs".to_owned()
                    }
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
    }
    eprintln!("spoiled images: {kinds:?}");
    // The spoiling reaches the host's refusals, not only harmless bytes.
    assert!(kinds.get("trap").copied().unwrap_or(0) >= 50, "{kinds:?}");
    for kind in kinds.keys() {
        assert!(
            ["outputs", "trap", "output-count", "output-bytes"].contains(&kind.as_str()),
            "{kind}: {kinds:?}"
        );
    }
}
