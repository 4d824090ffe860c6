//! Timers: a handler's `schedule` and `cancel` outputs (contract 0.4),
//! kept in the store (SQLite and PostgreSQL) and fired by real hosts on the
//! embedded broker. The handler is guests/test-timers, which reads its
//! commands from the payload.

use sluice::config::StoreBackend;
use sluice::embedded::EmbeddedBroker;

use crate::deciders::TestStore;
use crate::support::*;

/// A broker with `in` (one partition), its dead letters and `fired`.
fn broker() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start().unwrap();
    for topic in ["in", "in.dlq", "fired"] {
        broker.create_topic(topic, 1).unwrap();
    }
    broker
}

/// Produces one message per command to `in`, all keyed `k`.
fn produce(broker: &EmbeddedBroker, commands: &[&str]) {
    let messages: Vec<_> = commands.iter().map(|c| message("in", 0, "k", c)).collect();
    broker.produce(&messages).unwrap();
}

/// A config serving test-timers on `in`, publishing to `fired` only.
fn timers_config(
    scratch: &Scratch,
    brokers: &str,
    group: &str,
    store: &TestStore,
) -> std::path::PathBuf {
    let handlers = scratch.handlers(&[("test-timers", "0.1.0", &component("test-timers"))]);
    let route = "[[routes]]\ntopic = \"in\"\nhandler = \"test-timers\"\npublish-to = [\"fired\"]\n";
    let text = config(brokers, group, &handlers, route) + "\n" + &store.section();
    scratch.write(&format!("{group}.toml"), text)
}

/// The timestamps the broker gave `in`'s messages, by offset: what the
/// handler computes due times from.
fn sent_at(brokers: &str) -> Vec<u64> {
    sent_at_of(brokers, "in")
}

fn sent_at_of(brokers: &str, topic: &str) -> Vec<u64> {
    read_topic(brokers, topic)
        .iter()
        .map(|r| r.timestamp as u64)
        .collect()
}

/// Stops a host as an operator would, and checks it ended well.
fn stop(host: Host) {
    host.signal(libc::SIGTERM);
    host.wait_ok();
}

on_both_stores!(
    a_timer_fires_once_when_due_a_replaced_one_at_its_new_time_and_a_cancelled_one_never
);

fn a_timer_fires_once_when_due_a_replaced_one_at_its_new_time_and_a_cancelled_one_never(
    backend: StoreBackend,
) {
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    let config = timers_config(&scratch, brokers, "timers", &store);
    let host = Host::start(&scratch, "host", &config, &[]);
    // Once the host serves, the commands below run within moments of each
    // other: well before their timers' 3 s.
    produce(&broker, &["cancel nothing"]);
    wait_until("the host to serve", || {
        committed(brokers, "timers", "in") == [(0, Some(1))]
    });
    produce(
        &broker,
        &[
            "schedule a 3000 fired a1",
            "schedule b 3000 fired b1",
            "schedule c 3000 fired c1",
            "schedule b 6000 fired b2",
            "cancel c",
            // Refused before anything of the message runs: dead-lettered.
            "schedule  100 fired no-id",
            "schedule d 100 elsewhere d1",
        ],
    );
    // Timers fire soonest first: once b's replacement fired, a and (had it
    // not been cancelled) c had fired before it.
    wait_until("b's replacement to fire", || {
        count(brokers, "fired") >= 2
            && read_topic(brokers, "fired")
                .iter()
                .any(|r| r.payload == "b2")
    });
    wait_until("every input to be committed", || {
        committed(brokers, "timers", "in") == [(0, Some(8))]
    });
    stop(host);

    let sent = sent_at(brokers);
    let fired = read_topic(brokers, "fired");
    let payloads: Vec<&str> = fired.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!(payloads, ["a1", "b2"]);
    let (a_due, b_due) = (sent[1] + 3000, sent[4] + 6000);
    for (record, id, due) in [(&fired[0], "a", a_due), (&fired[1], "b", b_due)] {
        assert_eq!(
            record.header("sluice-id"),
            Some(format!("timer:in:{id}:{due}").as_str())
        );
        // Published once due, not before.
        assert!(
            record.timestamp as u64 >= due,
            "{id} published at {} before it was due at {due}",
            record.timestamp
        );
        assert_eq!(record.key.as_deref(), Some("k"));
        assert_eq!(record.header("sluice-handler"), Some("test-timers"));
        assert_eq!(record.header("sluice-handler-version"), Some("0.1.0"));
    }
    assert_eq!(fired[0].header("scheduled-at-offset"), Some("1"));
    assert_eq!(fired[1].header("scheduled-at-offset"), Some("4"));

    let dead = read_topic(brokers, "in.dlq");
    let reasons: Vec<(Option<&str>, Option<&str>)> = dead
        .iter()
        .map(|r| (r.header("sluice-source-offset"), r.header("sluice-reason")))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("6"), Some("invalid-timer")),
            (Some("7"), Some("topic-not-allowed"))
        ]
    );
}

on_both_stores!(a_killed_host_loses_no_timer_and_the_next_one_fires_it_once);

/// kill -9 between scheduling and firing: the timer was in the store before
/// its message was committed, so the next host fires it.
fn a_killed_host_loses_no_timer_and_the_next_one_fires_it_once(backend: StoreBackend) {
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    produce(&broker, &["schedule x 4000 fired x1"]);
    let config = timers_config(&scratch, brokers, "killed", &store);
    let first = Host::start(&scratch, "first", &config, &[]);
    wait_until("the input to be committed", || {
        committed(brokers, "killed", "in") == [(0, Some(1))]
    });
    first.signal(libc::SIGKILL);
    let _ = first.wait();
    let due = sent_at(brokers)[0] + 4000;
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if killed_at < due {
        assert_eq!(count(brokers, "fired"), 0, "fired before it was due");
    }
    let second = Host::start(&scratch, "second", &config, &[]);
    wait_until("the timer to fire", || count(brokers, "fired") >= 1);
    stop(second);
    let fired = read_topic(brokers, "fired");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].payload, "x1");
    assert_eq!(
        fired[0].header("sluice-id"),
        Some(format!("timer:in:x:{due}").as_str())
    );
}

on_both_stores!(a_redelivered_message_does_not_bring_back_a_timer_that_fired);

/// A second group reads `in` from the start, as a redelivery would: the
/// schedule it reads again was kept (and fired) already, so nothing fires
/// twice; a new message's timer still fires.
fn a_redelivered_message_does_not_bring_back_a_timer_that_fired(backend: StoreBackend) {
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    produce(&broker, &["schedule y 300 fired y1"]);
    let first = Host::start(
        &scratch,
        "first",
        &timers_config(&scratch, brokers, "one", &store),
        &[],
    );
    wait_until("y to fire", || count(brokers, "fired") >= 1);
    stop(first);
    produce(&broker, &["schedule z 0 fired z1"]);
    let second = Host::start(
        &scratch,
        "second",
        &timers_config(&scratch, brokers, "two", &store),
        &[],
    );
    wait_until("z to fire", || count(brokers, "fired") >= 2);
    wait_until("both inputs to be committed", || {
        committed(brokers, "two", "in") == [(0, Some(2))]
    });
    stop(second);
    let payloads: Vec<String> = read_topic(brokers, "fired")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, ["y1", "z1"]);
}

/// Timers due over 3 s, each publishing its number, scheduled through
/// `in`'s four partitions.
fn many_timers(broker: &EmbeddedBroker, n: usize, first_due: u64) {
    let messages: Vec<_> = (0..n)
        .map(|i| {
            let due = first_due + (i as u64 * 3000) / n as u64;
            message(
                "in",
                (i % 4) as i32,
                &format!("k{i}"),
                &format!("at t{i} {due} fired {i}"),
            )
        })
        .collect();
    broker.produce(&messages).unwrap();
}

/// How many times each of `n` timers fired.
fn firings(brokers: &str, n: usize) -> Vec<usize> {
    let mut times = vec![0; n];
    for record in read_topic(brokers, "fired") {
        times[record.payload.parse::<usize>().unwrap()] += 1;
    }
    times
}

/// Two hosts of one group on one PostgreSQL share 10,000 timers; one is
/// killed while they fire. Every timer fires; a repeat is only possible for
/// what the killed host had claimed (its lease, 2 s here, ran out and the
/// other host took the claims over): the batches it was firing, each
/// marked fired only once all of it was published. At 10,000 over 3 s and
/// a 250 ms horizon that is under two batches of 1024.
#[test]
fn two_hosts_on_postgres_fire_each_timer_once_and_one_killed_midway_loses_none() {
    const TIMERS: usize = 10_000;
    let scratch = Scratch::new();
    let store = TestStore::new(StoreBackend::Postgres, &scratch);
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    for (topic, partitions) in [("in", 4), ("in.dlq", 1), ("fired", 4)] {
        broker.create_topic(topic, partitions).unwrap();
    }
    let handlers = scratch.handlers(&[("test-timers", "0.1.0", &component("test-timers"))]);
    let route = "[[routes]]\ntopic = \"in\"\nhandler = \"test-timers\"\npublish-to = [\"fired\"]\n";
    let text = config(brokers, "pair", &handlers, route)
        + "\n"
        + &store.section()
        + "\n[timers]\nlease-ms = 2000\npoll-ms = 50\n";
    let config = scratch.write("pair.toml", text);
    let first = Host::start(&scratch, "first", &config, &[]);
    let second = Host::start(&scratch, "second", &config, &[]);
    many_timers(&broker, TIMERS, now_ms() + 6000);
    wait_until("every schedule to be committed", || {
        committed(brokers, "pair", "in")
            .iter()
            .map(|(_, offset)| offset.unwrap_or(0))
            .sum::<i64>()
            == TIMERS as i64
    });
    wait_until("a third of the timers to fire", || {
        count(brokers, "fired") >= TIMERS as i64 / 3
    });
    first.signal(libc::SIGKILL);
    let _ = first.wait();
    wait_until("every timer to fire", || {
        firings(brokers, TIMERS).iter().all(|&n| n >= 1)
    });
    stop(second);
    let firings = firings(brokers, TIMERS);
    let repeated = firings.iter().filter(|&&n| n > 1).count();
    println!("{repeated} of {TIMERS} timers fired more than once");
    assert!(
        firings.iter().all(|&n| n <= 2),
        "a timer fired 3 times or more"
    );
    assert!(
        repeated <= 2048,
        "{repeated} repeats: more than the killed host's claims"
    );
}

/// PostgreSQL goes away while timers are being scheduled and while they are
/// due: scheduling waits behind the store's breaker (its messages are not
/// committed), firing waits, and once it is back every timer fires once.
#[test]
fn a_store_outage_delays_timers_and_loses_none() {
    const TIMERS: usize = 500;
    let scratch = Scratch::new();
    let proxy = crate::deciders::Proxy::start("127.0.0.1:5432");
    let mut store = TestStore::new(StoreBackend::Postgres, &scratch);
    store.url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.port
    );
    store.timeout_ms = Some(1000);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    let handlers = scratch.handlers(&[("test-timers", "0.1.0", &component("test-timers"))]);
    let route = "[[routes]]\ntopic = \"in\"\nhandler = \"test-timers\"\npublish-to = [\"fired\"]\n\
                 [routes.retry]\ninitial-ms = 20\nmax-interval-ms = 200\n\
                 [routes.breaker]\nfailures = 3\nopen-ms = 300\n";
    let text = config(brokers, "outage", &handlers, route) + "\n" + &store.section();
    let config = scratch.write("outage.toml", text);
    let host = Host::start(&scratch, "host", &config, &[]);
    // The first half is scheduled with the store up; it comes due while the
    // store is down.
    let half = TIMERS / 2;
    let messages: Vec<_> = (0..half)
        .map(|i| message("in", 0, "k", &format!("schedule t{i} 5000 fired {i}")))
        .collect();
    broker.produce(&messages).unwrap();
    wait_until("the first half to be committed", || {
        committed(brokers, "outage", "in") == [(0, Some(half as i64))]
    });
    proxy.cut();
    let messages: Vec<_> = (half..TIMERS)
        .map(|i| message("in", 0, "k", &format!("schedule t{i} 0 fired {i}")))
        .collect();
    broker.produce(&messages).unwrap();
    wait_until("the host to meet the outage", || {
        log_of(&scratch, "host").contains("circuit breaker open")
    });
    let due = sent_at(brokers)[half - 1] + 5000;
    wait_until("the first half to be due", || now_ms() > due + 500);
    assert_eq!(count(brokers, "fired"), 0, "fired while the store was down");
    assert_ne!(
        committed(brokers, "outage", "in"),
        [(0, Some(TIMERS as i64))],
        "committed schedules the store never took"
    );
    proxy.restore();
    wait_until("every timer to fire", || {
        firings(brokers, TIMERS).iter().all(|&n| n >= 1)
    });
    wait_until("every schedule to be committed", || {
        committed(brokers, "outage", "in") == [(0, Some(TIMERS as i64))]
    });
    stop(host);
    assert!(firings(brokers, TIMERS).iter().all(|&n| n == 1));
    assert_eq!(count(brokers, "in.dlq"), 0, "nothing dead-lettered");
}

on_both_stores!(pending_timers_are_listed_by_the_cli_the_admin_api_the_page_and_metrics);

fn pending_timers_are_listed_by_the_cli_the_admin_api_the_page_and_metrics(backend: StoreBackend) {
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    let in_an_hour = now_ms() + 3_600_000;
    produce(
        &broker,
        &[
            &format!("at later {} fired l", in_an_hour + 1000),
            &format!("at sooner {in_an_hour} fired s"),
            &format!("at gone {in_an_hour} fired g"),
            "cancel gone",
            // A handler may pick any time: past year 9999, which RFC 3339
            // cannot write (the CLI once panicked on it); kept as i64::MAX.
            &format!("at never {} fired n", u64::MAX),
        ],
    );
    let config = timers_config(&scratch, brokers, "listed", &store);
    let text = std::fs::read_to_string(&config).unwrap();
    let config = scratch.write("listed.toml", format!("{text}\n[admin]\nlisten = \"0\"\n"));
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    wait_until("every input to be committed", || {
        committed(brokers, "listed", "in") == [(0, Some(5))]
    });
    let expected = serde_json::json!({
        "pending": 3,
        "timers": [
            { "route": "in", "id": "sooner", "due": in_an_hour, "topic": "fired" },
            { "route": "in", "id": "later", "due": in_an_hour + 1000, "topic": "fired" },
            { "route": "in", "id": "never", "due": i64::MAX, "topic": "fired" },
        ]
    });
    let json = |path| {
        let (status, body) = status_of(&admin, path);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(json("/timers"), expected);
    let one = json("/timers?limit=1");
    assert_eq!(one["pending"], 3);
    assert_eq!(one["timers"].as_array().unwrap().len(), 1);
    // The page and the gauge show what the firing task last counted: once
    // it counted after the last input (an earlier count, before the cancel
    // and `never`, was 3 as well), the page lists `never` and not `gone`.
    let never = format!("{} ms after 1970-01-01T00:00:00Z", i64::MAX);
    wait_until("the page to list the pending timers as they are", || {
        let page = http_get(&admin, "/");
        page.contains(&format!("<td>{never}</td>")) && !page.contains("<td>gone</td>")
    });
    let counted = now_ms();
    assert!(http_get(&admin, "/metrics").contains("sluice_timers_pending 3"));
    let metrics = http_get(&admin, "/metrics");
    for line in [
        "sluice_timers_scheduled_total 4",
        "sluice_timers_cancelled_total 1",
        "sluice_timers_fired_total 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    // The charts' samples count them too.
    wait_until("a sample taken after that count", || {
        let history: serde_json::Value =
            serde_json::from_str(&status_of(&admin, "/api/history").1).unwrap();
        history["samples"]
            .as_array()
            .and_then(|samples| samples.last())
            .is_some_and(|sample| sample["at"].as_u64() > Some(counted))
    });
    let history: serde_json::Value =
        serde_json::from_str(&status_of(&admin, "/api/history").1).unwrap();
    let last = history["samples"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["timers_pending"], 3, "{last}");
    let page = http_get(&admin, "/");
    assert!(page.contains("<figure id=\"chart-timers\""), "{page}");
    assert!(
        page.contains("<p id=\"timers-pending\">3 pending</p>"),
        "{page}"
    );
    assert!(page.contains("<td>sooner</td>"), "{page}");
    stop(host);
    // The CLI reads the store itself: no host needed.
    let table = succeed(sluice().args(["timers", "--config"]).arg(&config));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "3 pending");
    assert!(
        lines[2].starts_with("in ") && lines[2].contains(" sooner "),
        "{table}"
    );
    assert!(lines[3].contains(" later "), "{table}");
    assert!(lines[4].contains(&never), "{table}");
    let json = succeed(sluice().args(["timers", "--json", "--config"]).arg(&config));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        expected
    );
}

/// A decider returns a timer among its decision's outputs: it is kept once
/// the decision's events are appended, and fires with the decider's name.
#[test]
fn a_decider_schedules_a_timer_among_its_outputs() {
    let scratch = Scratch::new();
    let store = TestStore::new(StoreBackend::Sqlite, &scratch);
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    for topic in ["in", "in.dlq", "decided"] {
        broker.create_topic(topic, 1).unwrap();
    }
    broker
        .produce(&[
            message("in", 0, "s", "s:add:a"),
            message("in", 0, "s", "s:remind:500"),
        ])
        .unwrap();
    let handlers = scratch.handlers(&[("test-decider", "0.1.0", &component("test-decider"))]);
    let route =
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-decider\"\npublish-to = [\"decided\"]\n";
    let text = config(brokers, "decider", &handlers, route) + "\n" + &store.section();
    let config = scratch.write("decider.toml", text);
    let host = Host::start(&scratch, "host", &config, &[]);
    wait_until("the reminder to fire", || count(brokers, "decided") >= 3);
    stop(host);
    let decided = read_topic(brokers, "decided");
    let payloads: Vec<&str> = decided.iter().map(|r| r.payload.as_str()).collect();
    // The reminder carries the state the decision was made on.
    assert_eq!(payloads, ["|add:a", "a|remind:500", "a|reminded"]);
    let due = sent_at_of(brokers, "in")[1] + 500;
    assert_eq!(
        decided[2].header("sluice-id"),
        Some(format!("timer:in:remind:s:{due}").as_str())
    );
    assert_eq!(decided[2].header("sluice-handler"), Some("test-decider"));
}

/// `replay` shows timer outputs in the canonical form, and runs nothing.
#[test]
fn replay_shows_schedule_and_cancel_in_canonical_form() {
    let scratch = Scratch::new();
    let input = scratch.write(
        "in.jsonl",
        r#"{"topic":"in","key":"k","timestamp":1000,"payload":"schedule a 250 fired x\ncancel b"}"#,
    );
    let out = succeed(
        sluice()
            .args(["replay", "--handler"])
            .arg(component("test-timers"))
            .arg("--input")
            .arg(&input),
    );
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        line["outputs"],
        serde_json::json!([
            { "schedule": {
                "id": "a",
                "due": 1250,
                "publish": {
                    "topic": "fired",
                    "key": "k",
                    "payload": "x",
                    "headers": [{ "name": "scheduled-at-offset", "value": "0" }]
                }
            } },
            { "cancel": { "id": "b" } }
        ]),
        "{out}"
    );
}

/// A timer whose record the producer refuses for good (larger than its
/// `message.max.bytes`) is dead-lettered when due, with its own stage, and
/// without the payload that made it too large; the timers after it fire.
#[test]
fn a_timer_that_cannot_be_published_is_dead_lettered_when_due() {
    let scratch = Scratch::new();
    let store = TestStore::new(StoreBackend::Sqlite, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    let big = "x".repeat(3000);
    produce(
        &broker,
        &[
            &format!("schedule big 200 fired {big}"),
            "schedule small 400 fired s",
        ],
    );
    let handlers = scratch.handlers(&[("test-timers", "0.1.0", &component("test-timers"))]);
    let route = "[[routes]]\ntopic = \"in\"\nhandler = \"test-timers\"\npublish-to = [\"fired\"]\n";
    let text = config(brokers, "refused", &handlers, route)
        + "\n[kafka.producer]\n\"message.max.bytes\" = \"2000\"\n\n"
        + &store.section();
    let config = scratch.write("refused.toml", text);
    let host = Host::start(&scratch, "host", &config, &[]);
    wait_until("the small timer to fire", || count(brokers, "fired") >= 1);
    wait_until("the big one to be dead-lettered", || {
        count(brokers, "in.dlq") >= 1
    });
    stop(host);
    let fired = read_topic(brokers, "fired");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].payload, "s");
    let dead = read_topic(brokers, "in.dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let due = sent_at(brokers)[0] + 200;
    for (name, value) in [
        ("sluice-stage", "timer"),
        ("sluice-reason", "record-too-large"),
        ("sluice-timer-topic", "fired"),
        ("sluice-payload-dropped", "3000"),
        ("sluice-handler", "test-timers"),
    ] {
        assert_eq!(dead[0].header(name), Some(value), "{name} of {dead:?}");
    }
    assert_eq!(
        dead[0].header("sluice-id"),
        Some(format!("timer:in:big:{due}").as_str())
    );
    assert_eq!(dead[0].payload, "");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    // It is done with: not pending, so not fired again.
    let listed = succeed(sluice().args(["timers", "--config"]).arg(&config));
    assert!(listed.starts_with("0 pending"), "{listed}");
}

/// The JavaScript and Python builds of test-timers (through their contract
/// helpers' `schedule` and `cancel`) replay to the Rust build's outputs.
#[test]
fn the_contract_helpers_of_javascript_and_python_make_the_same_timers() {
    let scratch = Scratch::new();
    let input = scratch.write(
        "in.jsonl",
        [
            r#"{"topic":"in","key":"k","timestamp":1000,"payload":"schedule a 250 fired x y\ncancel b"}"#,
            r#"{"topic":"in","key":"k","offset":7,"timestamp":2000,"payload":"at c 99999999999999 fired"}"#,
            r#"{"topic":"in","timestamp":3000,"payload":"schedule  100 fired no-id\ncancel a"}"#,
        ]
        .join("\n"),
    );
    let replay = |component: &std::path::Path| {
        succeed(
            sluice()
                .args(["replay", "--handler"])
                .arg(component)
                .arg("--input")
                .arg(&input),
        )
    };
    let rust = replay(&component("test-timers"));
    assert_eq!(rust.lines().count(), 3, "{rust}");
    assert!(rust.contains(r#""due":99999999999999"#), "{rust}");
    for language in ["js", "python"] {
        let built = guests().join(format!("target/{language}/test-timers.wasm"));
        assert_eq!(replay(&built), rust, "{language}");
    }
}

/// A run until drained also waits for the timers due within
/// `timers.drain-within-ms` (10 s by default), and leaves later ones in the
/// store for the next run.
#[test]
fn a_run_until_drained_fires_the_timers_due_soon_and_keeps_the_later_ones() {
    let scratch = Scratch::new();
    let store = TestStore::new(StoreBackend::Sqlite, &scratch);
    let broker = broker();
    let brokers = broker.bootstrap_servers();
    produce(
        &broker,
        &["schedule soon 4000 fired s", "schedule later 60000 fired l"],
    );
    let config = timers_config(&scratch, brokers, "drained", &store);
    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();
    let fired: Vec<String> = read_topic(brokers, "fired")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(fired, ["s"]);
    let listed = succeed(sluice().args(["timers", "--json", "--config"]).arg(&config));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["pending"], 1);
    assert_eq!(listed["timers"][0]["id"], "later");
}
