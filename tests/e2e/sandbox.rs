//! The sandbox against hostile handlers. Each attack is a real component
//! (guests/test-hostile, one feature each) served by a real host: the attack
//! is contained, its message is dead-lettered with the precise reason, the
//! other messages of its partition flow, nothing leaks out, and the host's
//! memory stays bounded. Deterministic handlers give byte-identical outputs
//! on every replay.

use std::collections::HashSet;
use std::net::TcpListener;

use sluice::embedded::EmbeddedBroker;

use crate::support::*;

const MIB: u64 = 1 << 20;

/// What one attack did to a host.
struct Attacked {
    /// Dead letters, in offset order.
    dead: Vec<Record>,
    /// Payloads the handler echoed.
    echoed: Vec<String>,
    /// Records the handler managed to publish with something it obtained.
    leaked: Vec<Record>,
    /// What the clock-and-random guest observed.
    observed: Vec<String>,
    /// The host's peak resident memory.
    peak_rss: u64,
    log: String,
}

/// Serves `ok-1, attack, ok-2, attack, ok-3` on one partition to the
/// hostile component `attack` (as handler `hostile`, under `limits`, a
/// `[handlers.hostile.limits]` body) until every offset is committed.
fn attack(attack: &str, argument: &str, limits: &str) -> Attacked {
    attack_with(&hostile(attack), &format!("attack:{argument}"), limits)
}

/// Like `attack`, with any component and attacking payload.
fn attack_with(component: &std::path::Path, payload: &str, limits: &str) -> Attacked {
    serve(
        component,
        &["ok-1", payload, "ok-2", payload, "ok-3"],
        limits,
    )
}

/// Serves `inputs` on one partition to `component` (as handler `hostile`,
/// under `limits`) until every offset is committed.
fn serve(component: &std::path::Path, inputs: &[&str], limits: &str) -> Attacked {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let messages: Vec<_> = inputs.iter().map(|p| message("in", 0, "k", p)).collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("hostile", "1.0.0", component)]);
    let routes = format!(
        "[limits]\nworkers = 1\n\n[[routes]]\ntopic = \"in\"\nhandler = \"hostile\"\npublish-to = [\"*\"]\n\n[handlers.hostile.limits]\n{limits}\n"
    );
    let config = scratch.write("host.toml", config(brokers, "attacked", &handlers, &routes));
    let host = Host::start(&scratch, "host", &config, &[]);
    wait_until("every input to be committed", || {
        committed(brokers, "attacked", "in") == vec![(0, Some(inputs.len() as i64))]
    });
    let peak_rss = host.peak_rss();
    host.signal(libc::SIGTERM);
    host.wait_ok();
    Attacked {
        dead: read_topic(brokers, "in.dlq"),
        echoed: read_topic(brokers, "echo")
            .into_iter()
            .map(|r| r.payload)
            .collect(),
        leaked: read_topic(brokers, "leak"),
        observed: read_topic(brokers, "observed")
            .into_iter()
            .map(|r| r.payload)
            .collect(),
        peak_rss,
        log: log_of(&scratch, "host"),
    }
}

impl Attacked {
    /// Both attacks were dead-lettered with `reason` and a detail holding
    /// `detail`, the three good messages were echoed, nothing leaked, and the
    /// host stayed under `max_rss` bytes.
    fn assert_contained(&self, reason: &str, detail: &str, max_rss: u64) {
        assert_eq!(self.dead.len(), 2, "{:#?}", self.dead);
        for (record, offset) in self.dead.iter().zip(["1", "3"]) {
            assert_eq!(record.header("sluice-source-offset"), Some(offset));
            assert_eq!(record.header("sluice-reason"), Some(reason), "{record:?}");
            let got = record.header("sluice-detail").unwrap();
            assert!(got.contains(detail), "detail {got:?} lacks {detail:?}");
            assert_eq!(record.header("sluice-handler"), Some("hostile"));
        }
        assert_eq!(self.echoed, ["ok-1", "ok-2", "ok-3"], "the partition flows");
        assert!(self.leaked.is_empty(), "leaked: {:#?}", self.leaked);
        eprintln!("{reason}: host peak RSS {} MiB", self.peak_rss / MIB);
        assert!(
            self.peak_rss > 0 && self.peak_rss < max_rss,
            "peak RSS {} MiB, allowed under {} MiB",
            self.peak_rss / MIB,
            max_rss / MIB
        );
    }
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline() {
    attack("loop", "", "deadline-ms = 300").assert_contained(
        "deadline",
        "deadline of 300 ms exceeded",
        200 * MIB,
    );
}

#[test]
fn an_infinite_loop_with_fuel_runs_out_of_fuel() {
    attack("loop", "", "fuel = 5_000_000").assert_contained(
        "fuel",
        "fuel of 5000000 exhausted",
        200 * MIB,
    );
}

#[test]
fn a_memory_bomb_stops_at_the_handlers_memory_cap() {
    // Without the cap it would grow until the machine ran out.
    attack("memory-bomb", "", "memory-mib = 32").assert_contained(
        "memory",
        "over the cap of 33554432 bytes",
        200 * MIB,
    );
}

#[test]
fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    attack("recursion", "", "").assert_contained("stack", "stack overflow", 200 * MIB);
}

#[test]
fn a_100_mib_output_is_refused_before_the_host_copies_it() {
    // Memory enough for the guest to build it; the host's copy stops at the
    // copy budget (about twice max-output-bytes), so only the guest's 100 MiB
    // is ever resident.
    attack("huge-output", "", "memory-mib = 160").assert_contained(
        "output-bytes",
        "max-output-bytes is 16777216",
        220 * MIB,
    );
}

#[test]
fn a_million_outputs_are_refused_on_the_length_of_the_list() {
    attack("many-outputs", "", "memory-mib = 256").assert_contained(
        "output-count",
        "1000000 outputs, over the cap of 10000 per call",
        220 * MIB,
    );
}

#[test]
fn outputs_over_the_byte_cap_are_refused_after_an_exact_count() {
    // Small enough to be copied, larger than this handler's cap: the
    // output's key, topic and payload count.
    attack_with(
        &component("test-faults"),
        "big:5000",
        "max-output-bytes = 1000",
    )
    .assert_contained(
        "output-bytes",
        "bytes, over the cap of 1000 bytes per call",
        200 * MIB,
    );
}

#[test]
fn a_guest_cannot_read_the_hosts_files() {
    let attacked = attack("read-file", "", "");
    attacked.assert_contained(
        "failed",
        "read /etc/passwd: No such file or directory",
        200 * MIB,
    );
}

#[test]
fn a_guest_sees_no_environment_and_no_arguments() {
    // The host itself runs with PATH, HOME and the rest set.
    assert!(std::env::var("PATH").is_ok());
    attack("read-env", "PATH", "").assert_contained(
        "failed",
        "env PATH: environment variable not found; 0 variables, 0 arguments",
        200 * MIB,
    );
}

#[test]
fn a_guest_cannot_open_a_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    attack("socket", &address, "").assert_contained(
        "failed",
        &format!("connect {address}: "),
        200 * MIB,
    );
    assert!(listener.accept().is_err(), "nothing connected to {address}");
}

#[test]
fn a_guest_that_panics_on_every_call_is_dead_lettered_every_time() {
    let attacked = attack("panic", "", "");
    assert_eq!(attacked.dead.len(), 5, "{:#?}", attacked.dead);
    for record in &attacked.dead {
        assert_eq!(record.header("sluice-reason"), Some("trap"));
        let detail = record.header("sluice-detail").unwrap();
        assert!(
            detail.contains("test-hostile: panic on every call"),
            "{detail}"
        );
    }
    assert!(attacked.echoed.is_empty());
}

#[test]
fn a_guest_printing_a_megabyte_a_call_is_rate_limited_in_the_log() {
    let attacked = attack("chatty", "", "stdio-lines-per-second = 50");
    assert!(attacked.dead.is_empty(), "{:#?}", attacked.dead);
    assert_eq!(attacked.echoed.len(), 5, "every message was handled");
    // It printed 5 x 1024 lines of 1 KiB; the log took fewer than one call's.
    let logged = attacked
        .log
        .lines()
        .filter(|l| l.contains("yyyyyyyy"))
        .count();
    assert!(
        (1..1024).contains(&logged),
        "{logged} guest lines were logged"
    );
    assert!(
        attacked.log.len() < 1 << 20,
        "log of {} bytes",
        attacked.log.len()
    );
    assert!(
        attacked
            .log
            .contains("guest log over 50 lines per second: dropping lines"),
        "the drop is announced"
    );
}

#[test]
fn a_deterministic_guest_gives_byte_identical_outputs_on_every_replay() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 2).unwrap();
    let messages: Vec<_> = (0..40)
        .map(|i| message("in", i % 2, &format!("k{i}"), &format!("m{i}")))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("clock", "1.0.0", &hostile("clock-random"))]);

    // Two hosts over the same messages: reused instances on two workers,
    // then a fresh instance per message.
    let mut runs: Vec<Vec<Record>> = Vec::new();
    for (group, instances) in [("first", "reuse"), ("second", "fresh")] {
        let routes = format!(
            "[limits]\nworkers = 2\ninstances = \"{instances}\"\n\n[[routes]]\ntopic = \"in\"\nhandler = \"clock\"\npublish-to = [\"*\"]\n"
        );
        let config = scratch.write(
            &format!("{group}.toml"),
            config(brokers, group, &handlers, &routes),
        );
        Host::start(&scratch, group, &config, &["--until-drained"]).wait_ok();
        let earlier: HashSet<(i32, i64)> = runs
            .iter()
            .flatten()
            .map(|r| (r.partition, r.offset))
            .collect();
        let observed = read_topic(brokers, "observed");
        runs.push(
            observed
                .into_iter()
                .filter(|r| !earlier.contains(&(r.partition, r.offset)))
                .collect(),
        );
    }
    assert_eq!(runs[0].len(), 40);
    let by_source = |records: &[Record]| {
        let mut seen: Vec<(i32, i64, String)> = records
            .iter()
            .map(|r| {
                let (partition, offset) = r.source();
                (partition, offset, r.payload.clone())
            })
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(by_source(&runs[0]), by_source(&runs[1]));

    // `sluice replay`, twice, on messages with known timestamps.
    let input = scratch.write(
        "in.jsonl",
        (0..20)
            .map(|i| {
                format!(
                    "{{\"topic\":\"in\",\"partition\":1,\"offset\":{i},\"timestamp\":{},\"payload\":\"m\"}}\n",
                    1_700_000_000_000u64 + i * 1_500
                )
            })
            .collect::<String>(),
    );
    let replay = || {
        let out = sluice()
            .args(["replay", "--handler"])
            .arg(hostile("clock-random"))
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let first = replay();
    assert_eq!(first, replay(), "byte-identical replays");

    let lines: Vec<&str> = std::str::from_utf8(&first).unwrap().lines().collect();
    assert_eq!(lines.len(), 20);
    let mut randoms = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let millis = 1_700_000_000_000u64 + i as u64 * 1_500;
        let wall = format!("wall={}.{:09}", millis / 1000, (millis % 1000) * 1_000_000);
        assert!(line.contains(&wall), "{line} lacks {wall}");
        assert!(line.contains(&format!("std-time={millis}")), "{line}");
        assert!(line.contains("monotonic-start=0 "), "{line}");
        // A 1 ms sleep to an instant and a ten-second sleep under a
        // one-second deadline passed in virtual time.
        assert!(
            line.contains("monotonic-after-sleep=10001000000 "),
            "{line}"
        );
        let random = line.split("random=").nth(1).unwrap()[..32].to_owned();
        randoms.insert(random);
    }
    assert_eq!(randoms.len(), 20, "each message has a seed of its own");
}

#[test]
fn a_real_sleep_past_the_deadline_ends_the_call_at_the_deadline() {
    // Real clocks: the guest's ten-second sleep is cut at the 300 ms
    // deadline, and the call counts as past it, whatever it returns then.
    let attacked = attack(
        "clock-random",
        "",
        "deterministic = false\ndeadline-ms = 300",
    );
    assert_eq!(attacked.dead.len(), 5, "{:#?}", attacked.dead);
    for record in &attacked.dead {
        assert_eq!(record.header("sluice-reason"), Some("deadline"));
        assert_eq!(
            record.header("sluice-detail"),
            Some("deadline of 300 ms exceeded")
        );
    }
}

#[test]
fn a_real_sleep_to_an_instant_reads_the_guests_own_clock() {
    // Real clocks, one instance for all four calls: each sleeps 1 ms to an
    // instant on the guest's monotonic clock, then `<ms>`. The instant is
    // measured from the instance's start; read against any other origin the
    // later calls would sleep past their deadline.
    let inputs = ["attack:200", "attack:5", "attack:5", "attack:5"];
    let attacked = serve(
        &hostile("clock-random"),
        &inputs,
        "deterministic = false\ndeadline-ms = 300",
    );
    assert!(attacked.dead.is_empty(), "{:#?}", attacked.dead);
    assert_eq!(attacked.observed.len(), inputs.len());
    for (observed, input) in attacked.observed.iter().zip(inputs) {
        let slept_ms: u64 = input["attack:".len()..].parse().unwrap();
        let after: u64 = observed
            .split("monotonic-after-sleep=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let started: u64 = observed
            .split("monotonic-start=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(
            after - started >= (slept_ms + 1) * 1_000_000,
            "slept for real: {observed}"
        );
    }
}

#[test]
fn a_fresh_instance_serves_each_message_when_asked() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let messages: Vec<_> = (0..6)
        .map(|i| message("in", 0, "k", &format!("m{i}")))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[
        ("reused", "0.1.0", &component("test-faults")),
        ("fresh", "0.1.0", &component("test-faults")),
    ]);
    // Same component, same messages: one handler keeps its instance, the
    // other gets a new one per message (its per-handler setting).
    broker.create_topic("also", 1).unwrap();
    let also: Vec<_> = (0..6)
        .map(|i| message("also", 0, "k", &format!("m{i}")))
        .collect();
    broker.produce(&also).unwrap();
    let routes = "[limits]\nworkers = 1\n\n[[routes]]\ntopic = \"in\"\nhandler = \"reused\"\npublish-to = [\"*\"]\n\n[[routes]]\ntopic = \"also\"\nhandler = \"fresh\"\npublish-to = [\"*\"]\n\n[handlers.fresh.limits]\ninstances = \"fresh\"\n";
    let config = scratch.write("host.toml", config(brokers, "fresh", &handlers, routes));
    Host::start(&scratch, "host", &config, &["--until-drained"]).wait_ok();
    let calls = |handler: &str| -> Vec<u32> {
        read_topic(brokers, "echo")
            .iter()
            .filter(|r| r.header("sluice-handler") == Some(handler))
            .map(|r| r.header("instance-calls").unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(calls("fresh"), vec![1; 6]);
    let reused = calls("reused");
    assert_eq!(reused.len(), 6);
    assert_eq!(*reused.iter().max().unwrap(), 6, "{reused:?}");
}

#[test]
fn table_and_instance_caps_refuse_a_component_when_it_is_loaded() {
    // No host runs: `sluice handlers` checks the directory as a starting
    // host would, and says why nothing can serve.
    let verdict = |limits: &str| {
        let scratch = Scratch::new();
        let handlers = scratch.handlers(&[("capped", "1.0.0", &component("test-echo"))]);
        let routes = format!(
            "[[routes]]\ntopic = \"a\"\nhandler = \"capped\"\npublish-to = [\"*\"]\n\n[handlers.capped.limits]\n{limits}\n"
        );
        let config = scratch.write(
            "host.toml",
            config("127.0.0.1:9", "caps", &handlers, &routes),
        );
        let output = sluice()
            .args(["handlers", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), text)
    };
    let (served, few) = verdict("max-instances = 1");
    assert!(!served, "nothing can serve");
    assert!(
        few.contains("fails to instantiate under the sandbox")
            && few.contains("instance count too high"),
        "{few}"
    );
    let (served, small) = verdict("max-table-elements = 1");
    assert!(!served, "nothing can serve");
    assert!(
        small.contains("fails to instantiate under the sandbox")
            && small.contains("over the cap of 1 elements"),
        "{small}"
    );
    let (served, uncapped) = verdict("");
    assert!(served, "the same component loads uncapped: {uncapped}");
}
