//! Event-sourced deciders against the real stores: the embedded SQLite file
//! and PostgreSQL on 127.0.0.1:5432 (each test in a schema of its own).
//! Real hosts decide real components (`sku-coupon`, `test-decider`); the
//! tests read the stores back through the library's own store API.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{Value, json};
use sluice::config::{DeciderSettings, Limits, StoreBackend, StoreConfig};
use sluice::contract::Event;
use sluice::decider::Decider;
use sluice::embedded::EmbeddedBroker;
use sluice::runtime::Handler;
use sluice::store::{self, Cause, EventStore, Snapshot, SnapshotKey, Store, StoreError};
use sluice::workers::WorkerPool;

use crate::support::*;

/// PostgreSQL as `.ci/run` provides it.
const POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// One test's event store, and a runtime to drive the library's async API.
pub(crate) struct TestStore {
    backend: StoreBackend,
    /// The SQLite file, or the PostgreSQL schema.
    place: String,
    /// PostgreSQL connection text hosts use (may point at a proxy).
    pub(crate) url: String,
    /// `store.timeout-ms` for hosts, if not the default.
    pub(crate) timeout_ms: Option<u64>,
    runtime: tokio::runtime::Runtime,
}

impl TestStore {
    pub(crate) fn new(backend: StoreBackend, scratch: &Scratch) -> TestStore {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let place = match backend {
            StoreBackend::Sqlite => scratch.path().join("events.db").display().to_string(),
            StoreBackend::Postgres => format!(
                "t_{}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos()
            ),
        };
        TestStore {
            backend,
            place,
            url: POSTGRES.into(),
            timeout_ms: None,
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// The `[store]` section for hosts.
    pub(crate) fn section(&self) -> String {
        match self.backend {
            StoreBackend::Sqlite => format!("[store]\npath = {:?}\n", self.place),
            StoreBackend::Postgres => format!(
                "[store]\nbackend = \"postgres\"\nurl = {:?}\nschema = {:?}\n{}",
                self.url,
                self.place,
                self.timeout_ms
                    .map_or(String::new(), |ms| format!("timeout-ms = {ms}\n"))
            ),
        }
    }

    fn config(&self) -> StoreConfig {
        let text = self.section().replace("[store]\n", "");
        let mut config: StoreConfig = toml::from_str(&text).unwrap();
        config.url = POSTGRES.into();
        config
    }

    fn open(&self) -> Arc<dyn Store> {
        self.runtime
            .block_on(store::open(&self.config(), Path::new("/")))
            .unwrap()
    }

    /// The event data of a stream, in order.
    fn events(&self, store: &dyn EventStore, stream: &str) -> Vec<(String, String)> {
        let tail = self
            .runtime
            .block_on(store.read(stream, 0, None, ""))
            .unwrap();
        tail.events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e.version, i as u64 + 1, "versions are dense");
                let data = String::from_utf8(e.event.data.clone()).unwrap();
                (e.event.kind.clone(), data)
            })
            .collect()
    }

    /// A stream's state as `component` (labelled `version`) folds it.
    fn state(
        &self,
        store: &Arc<dyn Store>,
        component: &Path,
        name: &str,
        version: &str,
        stream: &str,
        snapshots: bool,
    ) -> (String, u64) {
        let runtime = sluice::runtime::Runtime::new(&Limits::default()).unwrap();
        let handler: Arc<dyn Handler> = runtime.load(component, name, version).unwrap();
        let pool = WorkerPool::start(1);
        let decider = Decider::new(store.clone(), DeciderSettings::default(), Arc::default());
        let (state, version) = self
            .runtime
            .block_on(decider.state(&pool, &handler, stream, snapshots))
            .unwrap();
        (String::from_utf8(state).unwrap(), version)
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if self.backend == StoreBackend::Postgres && !std::thread::panicking() {
            let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.place);
            self.runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&drop).await;
                }
            });
        }
    }
}

/// A host config: the routes' topics to the handler `name`, with the store.
fn decider_config(
    brokers: &str,
    group: &str,
    handlers: &Path,
    routes: &[(&str, &str)],
    store: &TestStore,
    extra: &str,
) -> String {
    let routes: String = routes
        .iter()
        .map(|(topic, handler)| {
            format!(
                "[[routes]]\ntopic = \"{topic}\"\nhandler = \"{handler}\"\npublish-to = [\"*\"]\n\n"
            )
        })
        .collect();
    let routes = format!("{routes}{}\n{extra}", store.section());
    config(brokers, group, handlers, &routes)
}

/// The number in a run summary's "deciders: ..." line before `what`.
fn summary_count(stdout: &str, what: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("deciders:"))
        .unwrap_or_else(|| panic!("no deciders line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    words[at - 1].parse().unwrap()
}

fn sku_coupon() -> PathBuf {
    dist().join("sku-coupon/0.1.0.wasm")
}

fn coupons_from_four_hosts_equal_serial_application(backend: StoreBackend) {
    const HOSTS: usize = 4;
    const COMMANDS: usize = 1000;
    const SKUS: usize = 10;
    const CODES: usize = 40;
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let handlers = scratch.handlers(&[("sku-coupon", "0.1.0", &sku_coupon())]);

    // Every SKU in the assortment first, so that every coupon can apply.
    broker.create_topic("assortment", 1).unwrap();
    let adds: Vec<_> = (0..SKUS)
        .map(|s| {
            let add = json!({"type": "AddToAssortment", "sku": format!("SKU-{s}")});
            message("assortment", 0, "a", &add.to_string())
        })
        .collect();
    broker.produce(&adds).unwrap();
    let text = decider_config(
        brokers,
        "assort",
        &handlers,
        &[("assortment", "sku-coupon")],
        &store,
        "",
    );
    let config = scratch.write("assort.toml", text);
    Host::start(&scratch, "assort", &config, &["--until-drained"]).wait_ok();

    // 1000 coupon commands over 10 SKUs, each (SKU, code) asked for 2 or 3
    // times, dealt round robin to 4 hosts (a topic each), all at once.
    let command = |i: usize| {
        let code = (i / SKUS) % CODES;
        json!({"type": "ApplyCoupon", "sku": format!("SKU-{}", i % SKUS),
               "coupon": format!("C{code}"), "percent": code % 50 + 1})
    };
    for h in 0..HOSTS {
        broker.create_topic(&format!("coupons-{h}"), 1).unwrap();
    }
    let commands: Vec<_> = (0..COMMANDS)
        .map(|i| {
            message(
                &format!("coupons-{}", i % HOSTS),
                0,
                &i.to_string(),
                &command(i).to_string(),
            )
        })
        .collect();
    broker.produce(&commands).unwrap();
    let hosts: Vec<_> = (0..HOSTS)
        .map(|h| {
            let topic = format!("coupons-{h}");
            let text = decider_config(
                brokers,
                &format!("h{h}"),
                &handlers,
                &[(&topic, "sku-coupon")],
                &store,
                "",
            );
            let config = scratch.write(&format!("h{h}.toml"), text);
            Host::start(&scratch, &format!("h{h}"), &config, &["--until-drained"])
        })
        .collect();
    let conflicts: u64 = hosts
        .into_iter()
        .map(|host| summary_count(&host.wait_ok().stdout, "version"))
        .sum();

    // The serial application: each (SKU, code) applies once, the first time.
    let mut serial: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for i in 0..COMMANDS {
        let c = command(i);
        serial
            .entry(c["sku"].as_str().unwrap().to_owned())
            .or_default()
            .entry(c["coupon"].as_str().unwrap().to_owned())
            .or_insert(c["percent"].as_u64().unwrap());
    }
    let opened = store.open();
    for (sku, coupons) in &serial {
        let stream = format!("sku-{sku}");
        let (state, version) = store.state(
            &opened,
            &sku_coupon(),
            "sku-coupon",
            "0.1.0",
            &stream,
            false,
        );
        let expected = json!({"inAssortment": true, "coupons": coupons});
        assert_eq!(
            serde_json::from_str::<Value>(&state).unwrap(),
            expected,
            "{stream}"
        );
        let events = store.events(opened.as_ref(), &stream);
        assert_eq!(version, events.len() as u64);
        let applied: Vec<_> = events
            .iter()
            .filter(|(k, _)| k == "CouponApplied")
            .collect();
        assert_eq!(
            applied.len(),
            CODES,
            "{stream}: each code applied exactly once"
        );
    }

    let published = read_topic(brokers, "sku-events");
    let mut applied: HashMap<(String, String), usize> = HashMap::new();
    let (mut rejected, mut added) = (0, 0);
    for record in &published {
        let event: Value = serde_json::from_str(&record.payload).unwrap();
        match event["type"].as_str().unwrap() {
            "CouponApplied" => {
                let key = (event["sku"].to_string(), event["coupon"].to_string());
                *applied.entry(key).or_default() += 1;
            }
            "CouponRejected" => {
                assert_eq!(event["reason"], "already-applied", "{event}");
                rejected += 1;
            }
            "SkuAddedToAssortment" => added += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(added, SKUS);
    assert_eq!(applied.len(), SKUS * CODES);
    assert!(
        applied.values().all(|&n| n == 1),
        "a coupon was applied twice"
    );
    assert_eq!(rejected, COMMANDS - SKUS * CODES);
    for h in 0..HOSTS {
        assert_eq!(
            count(brokers, &format!("coupons-{h}.dlq")),
            0,
            "nothing dead-lettered"
        );
    }
    assert!(conflicts > 0, "4 hosts on 10 streams never conflicted");
    eprintln!("{backend:?}: {conflicts} version conflicts, all decided again");
}

on_both_stores!(coupons_from_four_hosts_equal_serial_application);

/// The `decided` outputs of test-decider, by source (partition, offset).
fn decided(brokers: &str) -> BTreeMap<(i32, i64), String> {
    read_topic(brokers, "decided")
        .into_iter()
        .map(|r| (r.source(), r.payload))
        .collect()
}

fn redelivery_appends_nothing_and_failures_dead_letter_at_decide(backend: StoreBackend) {
    let inputs = [
        "s1:add:a",
        "s1:noop",
        "s2:add:b",
        "s1:add:c",
        "-:noop",
        "s2:fail",
        "s2:reject",
        "s2:panic",
        "s3:poison",
        "s3:add:x",
        "s2:add:d",
    ];
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let messages: Vec<_> = inputs.iter().map(|p| message("in", 0, "k", p)).collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let handlers = scratch.handlers(&[("test-decider", "0.1.0", &component("test-decider"))]);
    let run = |group: &str| {
        let text = decider_config(
            brokers,
            group,
            &handlers,
            &[("in", "test-decider")],
            &store,
            "",
        );
        let config = scratch.write(&format!("{group}.toml"), text);
        Host::start(&scratch, group, &config, &["--until-drained"]).wait_ok()
    };

    let first = run("first");
    let outputs: BTreeMap<i64, String> = decided(brokers)
        .into_iter()
        .map(|((_, offset), payload)| (offset, payload))
        .collect();
    let expected: BTreeMap<i64, String> = [
        (0, "|add:a"),
        (1, "a|noop"),
        (2, "|add:b"),
        (3, "a|add:c"),
        (8, "|poison"),
        (10, "b|add:d"),
    ]
    .into_iter()
    .map(|(o, p)| (o, p.to_owned()))
    .collect();
    assert_eq!(outputs, expected);
    let dead: Vec<_> = read_topic(brokers, "in.dlq")
        .into_iter()
        .map(|r| {
            let header = |n| r.header(n).unwrap().to_owned();
            (
                r.source().1,
                header("sluice-stage"),
                header("sluice-reason"),
            )
        })
        .collect();
    let dead_expected: Vec<(i64, String, String)> = [
        (5, "failed"),
        (6, "rejected"),
        (7, "trap"),
        // The poison event was appended; folding it traps every later decision.
        (9, "trap"),
    ]
    .into_iter()
    .map(|(o, reason)| (o, "decide".to_owned(), reason.to_owned()))
    .collect();
    let mut dead_sorted = dead.clone();
    dead_sorted.sort();
    assert_eq!(dead_sorted, dead_expected, "dead letters");
    let opened = store.open();
    let streams = |s: &str| store.events(opened.as_ref(), s);
    let added = |data: &[&str]| -> Vec<(String, String)> {
        data.iter()
            .map(|d| ("Added".to_owned(), (*d).to_owned()))
            .collect()
    };
    assert_eq!(streams("s1"), added(&["a", "c"]));
    assert_eq!(streams("s2"), added(&["b", "d"]));
    assert_eq!(streams("s3"), vec![("Poison".to_owned(), String::new())]);
    assert_eq!(summary_count(&first.stdout, "events"), 5);
    assert_eq!(summary_count(&first.stdout, "redeliveries"), 0);

    // Everything again, to a new group: a redelivery of every message.
    let again = run("again");
    assert_eq!(
        streams("s1"),
        added(&["a", "c"]),
        "redelivery appended to s1"
    );
    assert_eq!(
        streams("s2"),
        added(&["b", "d"]),
        "redelivery appended to s2"
    );
    assert_eq!(streams("s3").len(), 1);
    assert_eq!(summary_count(&again.stdout, "events"), 0);
    assert_eq!(summary_count(&again.stdout, "redeliveries"), 6);
    // Each redelivered message decided on the state it was decided on
    // first: same outputs ("a|noop", not "a,c|noop").
    let repeated: Vec<_> = read_topic(brokers, "decided")
        .into_iter()
        .map(|r| (r.source().1, r.payload))
        .collect();
    assert_eq!(repeated.len(), 2 * expected.len());
    for (offset, payload) in repeated {
        assert_eq!(expected[&offset], payload, "offset {offset}");
    }
}

on_both_stores!(redelivery_appends_nothing_and_failures_dead_letter_at_decide);

fn snapshots_fold_like_the_full_stream_and_belong_to_one_version(backend: StoreBackend) {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let messages: Vec<_> = (1..=25)
        .map(|i| message("in", 0, "k", &format!("s:add:{i}")))
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let decider = component("test-decider");
    let run = |name: &str, version: &str| {
        let handlers = scratch.handlers(&[("test-decider", version, &decider)]);
        let text = decider_config(
            brokers,
            "g",
            &handlers,
            &[("in", "test-decider")],
            &store,
            "[decider]\nsnapshot-every = 10\n",
        );
        let config = scratch.write(&format!("{name}.toml"), text);
        Host::start(&scratch, name, &config, &["--until-drained"]).wait_ok()
    };
    run("first", "0.1.0");

    let opened = store.open();
    let full: String = (1..=25)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let key = |handler_version| SnapshotKey {
        stream: "s",
        handler: "test-decider",
        handler_version,
    };
    let kept = store
        .runtime
        .block_on(opened.snapshot(key("0.1.0")))
        .unwrap()
        .expect("a snapshot every 10 events");
    assert_eq!(kept.version, 20);
    let twenty: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(String::from_utf8(kept.state).unwrap(), twenty.join(","));
    let state = |version, snapshots| {
        store.state(&opened, &decider, "test-decider", version, "s", snapshots)
    };
    assert_eq!(state("0.1.0", true), (full.clone(), 25), "snapshot + tail");
    assert_eq!(state("0.1.0", false), (full.clone(), 25), "full fold");

    // A snapshot is only read by the version that wrote it: give 0.1.0 a
    // wrong one, and 0.1.0 reads it while 0.2.0 ignores it.
    let bogus = Snapshot {
        version: 25,
        state: b"BOGUS".to_vec(),
    };
    store
        .runtime
        .block_on(opened.save_snapshot(key("0.1.0"), &bogus))
        .unwrap();
    assert_eq!(state("0.1.0", true), ("BOGUS".to_owned(), 25));
    assert_eq!(state("0.2.0", true), (full.clone(), 25));

    // A host serving 0.2.0 decides on the full fold, not on 0.1.0's state.
    broker
        .produce(&[message("in", 0, "k", "s:add:26")])
        .unwrap();
    run("second", "0.2.0");
    let last = decided(brokers)
        .remove(&(0, 25))
        .expect("the new message decided");
    assert_eq!(last, format!("{full}|add:26"));
}

on_both_stores!(snapshots_fold_like_the_full_stream_and_belong_to_one_version);

fn appends_are_checked_against_the_expected_version(backend: StoreBackend) {
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let opened = store.open();
    let rt = &store.runtime;
    let event = |data: &str| Event {
        kind: "E".into(),
        data: data.as_bytes().to_vec(),
        metadata: Vec::new(),
    };
    let cause = |source: &str| Cause {
        handler: "h".into(),
        handler_version: "1".into(),
        source: source.into(),
    };
    let two = [event("a"), event("b")];
    assert_eq!(
        rt.block_on(opened.append("x", 0, &two, &cause("m1"))),
        Ok(2)
    );
    let conflict = |expected| {
        Err(StoreError::Conflict {
            stream: "x".into(),
            expected,
        })
    };
    // Behind (a writer that read before the append) and ahead (a gap).
    assert_eq!(
        rt.block_on(opened.append("x", 0, &[event("c")], &cause("m2"))),
        conflict(0)
    );
    assert_eq!(
        rt.block_on(opened.append("x", 5, &[event("c")], &cause("m2"))),
        conflict(5)
    );
    assert_eq!(
        rt.block_on(opened.append("x", 2, &[event("c")], &cause("m2"))),
        Ok(3)
    );
    let tail = rt.block_on(opened.read("x", 1, Some(2), "m2")).unwrap();
    assert_eq!(tail.events.len(), 1, "versions 2..=2");
    assert_eq!(tail.events[0].event, event("b"));
    assert_eq!(tail.decided_at, Some(2), "m2 was decided on version 2");
    assert_eq!(
        rt.block_on(opened.read("x", 3, None, "m1"))
            .unwrap()
            .decided_at,
        Some(0)
    );
    let unseen = rt.block_on(opened.read("x", 3, None, "m3")).unwrap();
    assert!(unseen.events.is_empty() && unseen.decided_at.is_none());
    rt.block_on(opened.mark_decided("x", 3, &cause("m3")))
        .unwrap();
    assert_eq!(
        rt.block_on(opened.read("x", 3, None, "m3"))
            .unwrap()
            .decided_at,
        Some(3)
    );
    // Snapshots only move forward.
    let key = SnapshotKey {
        stream: "x",
        handler: "h",
        handler_version: "1",
    };
    let at = |version| Snapshot {
        version,
        state: vec![version as u8],
    };
    rt.block_on(opened.save_snapshot(key, &at(3))).unwrap();
    rt.block_on(opened.save_snapshot(key, &at(2))).unwrap();
    assert_eq!(rt.block_on(opened.snapshot(key)).unwrap(), Some(at(3)));
}

on_both_stores!(appends_are_checked_against_the_expected_version);

/// A TCP proxy to PostgreSQL that a test can cut (connections broken and
/// refused: the server is down) or stall (bytes held: it stops answering),
/// and restore.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    flowing: Flowing,
}

/// Whether bytes flow through the proxy, and the signal that they do again.
type Flowing = Arc<(Mutex<bool>, Condvar)>;

impl Proxy {
    pub(crate) fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let flowing: Flowing = Arc::new((Mutex::new(true), Condvar::new()));
        let (is_down, streams, flow) = (down.clone(), open.clone(), flowing.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let upstream = match TcpStream::connect(upstream) {
                    Ok(upstream) if !is_down.load(Ordering::SeqCst) => upstream,
                    _ => {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                };
                let mut kept = streams.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(upstream.try_clone().unwrap());
                let (a, b) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(a, b, flow.clone());
                pipe(upstream, client, flow.clone());
            }
        });
        Proxy {
            port,
            down,
            open,
            flowing,
        }
    }

    /// Breaks every connection and refuses new ones until `restore`.
    pub(crate) fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Holds every byte (old and new connections) until `restore`.
    fn stall(&self) {
        *self.flowing.0.lock().unwrap() = false;
    }

    pub(crate) fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        *self.flowing.0.lock().unwrap() = true;
        self.flowing.1.notify_all();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, flowing: Flowing) {
    std::thread::spawn(move || {
        let mut buffer = [0; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            let (flows, signal) = &*flowing;
            drop(
                signal
                    .wait_while(flows.lock().unwrap(), |flows| !*flows)
                    .unwrap(),
            );
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn postgres_down_or_silent_mid_stream_is_retried_and_loses_nothing() {
    const MESSAGES: usize = 2000;
    const STREAMS: usize = 5;
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 2).unwrap();
    let messages: Vec<_> = (0..MESSAGES)
        .map(|i| {
            message(
                "in",
                (i % 2) as i32,
                "k",
                &format!("s{}:add:{i}", i % STREAMS),
            )
        })
        .collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let proxy = Proxy::start("127.0.0.1:5432");
    let mut store = TestStore::new(StoreBackend::Postgres, &scratch);
    store.url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.port
    );
    let opened = store.open();
    let handlers = scratch.handlers(&[("test-decider", "0.1.0", &component("test-decider"))]);
    // Quick retries and breaker, so the outage is seen and outlived quickly.
    let quick = "[routes.retry]\ninitial-ms = 20\nmax-interval-ms = 200\n\
                 [routes.breaker]\nfailures = 3\nopen-ms = 300\n";
    store.timeout_ms = Some(1000);
    let text = decider_config(
        brokers,
        "g",
        &handlers,
        &[("in", "test-decider")],
        &store,
        quick,
    );
    let config = scratch.write("g.toml", text);
    let host = Host::start(&scratch, "host", &config, &["--until-drained"]);
    let appended = || -> usize {
        (0..STREAMS)
            .map(|s| store.events(opened.as_ref(), &format!("s{s}")).len())
            .sum()
    };
    wait_until("some appends", || appended() >= 30);
    proxy.cut();
    wait_until("the host to meet the outage", || {
        log_of(&scratch, "host").contains("event store unavailable")
    });
    wait_until("the breaker to open", || {
        log_of(&scratch, "host").contains("circuit breaker open")
    });
    proxy.restore();
    // Then a server that stops answering: operations time out.
    wait_until("more appends", || appended() >= 600);
    proxy.stall();
    wait_until("the host to give up waiting", || {
        log_of(&scratch, "host").contains("no answer within 1000 ms")
    });
    proxy.restore();
    let exit = host.wait_ok();

    let mut all: Vec<usize> = Vec::new();
    for s in 0..STREAMS {
        for (kind, data) in store.events(opened.as_ref(), &format!("s{s}")) {
            assert_eq!(kind, "Added");
            let i: usize = data.parse().unwrap();
            assert_eq!(i % STREAMS, s, "event on the wrong stream");
            all.push(i);
        }
    }
    all.sort();
    assert_eq!(
        all,
        (0..MESSAGES).collect::<Vec<_>>(),
        "each message appended exactly once"
    );
    assert_eq!(count(brokers, "in.dlq"), 0, "nothing dead-lettered");
    assert_eq!(
        decided(brokers).len(),
        MESSAGES,
        "every message's output published"
    );
    assert_committed_to_the_end(brokers, "g");
    eprintln!(
        "{}",
        exit.stdout.lines().take(2).collect::<Vec<_>>().join("\n")
    );
}

/// A decision made slow, and another writer appending to its stream in
/// the meantime: with `attempts` allowed, the host decides again on the new
/// event, or dead-letters the message with reason `conflict`.
fn a_writer_in_between(
    backend: StoreBackend,
    attempts: u32,
) -> (Vec<Record>, Vec<Record>, TestStore, Scratch) {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker
        .produce(&[message("in", 0, "k", "s:slow:2000:mine")])
        .unwrap();
    let scratch = Scratch::new();
    let store = TestStore::new(backend, &scratch);
    let handlers = scratch.handlers(&[("test-decider", "0.1.0", &component("test-decider"))]);
    // A real sleep needs a non-deterministic guest and room in the deadline.
    let extra = format!(
        "[decider]\nconflict-attempts = {attempts}\n\n\
         [handlers.test-decider.limits]\ndeterministic = false\ndeadline-ms = 10000\n"
    );
    let text = decider_config(
        brokers,
        "g",
        &handlers,
        &[("in", "test-decider")],
        &store,
        &extra,
    );
    let config = scratch.write("g.toml", text);
    let host = Host::start(&scratch, "host", &config, &["--until-drained"]);
    wait_until("the decision to be under way", || {
        log_of(&scratch, "host").contains("deciding slowly")
    });
    let opened = store.open();
    let theirs = Cause {
        handler: "other".into(),
        handler_version: "1".into(),
        source: "elsewhere".into(),
    };
    let event = Event {
        kind: "Added".into(),
        data: b"theirs".to_vec(),
        metadata: Vec::new(),
    };
    store
        .runtime
        .block_on(opened.append("s", 0, &[event], &theirs))
        .unwrap();
    host.wait_ok();
    let (decided, dead) = (
        read_topic(brokers, "decided"),
        read_topic(brokers, "in.dlq"),
    );
    (decided, dead, store, scratch)
}

#[test]
fn a_conflict_is_decided_again_on_the_other_writers_events() {
    for backend in [StoreBackend::Sqlite, StoreBackend::Postgres] {
        let (decided, dead, store, _scratch) = a_writer_in_between(backend, 3);
        assert!(dead.is_empty(), "{backend:?}: dead-lettered {dead:?}");
        let payloads: Vec<_> = decided.iter().map(|r| r.payload.as_str()).collect();
        assert_eq!(
            payloads,
            ["theirs|slow:2000:mine"],
            "{backend:?}: decided again on their event"
        );
        let events = store.events(store.open().as_ref(), "s");
        let data: Vec<_> = events.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data, ["theirs", "mine"], "{backend:?}");
    }
}

#[test]
fn conflicts_on_every_attempt_dead_letter_the_message_with_reason_conflict() {
    let (decided, dead, store, _scratch) = a_writer_in_between(StoreBackend::Sqlite, 1);
    assert!(decided.is_empty(), "nothing ran: {decided:?}");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("sluice-stage"), Some("decide"));
    assert_eq!(dead[0].header("sluice-reason"), Some("conflict"));
    assert_eq!(dead[0].header("sluice-attempts"), Some("1"));
    let detail = dead[0].header("sluice-detail").unwrap();
    assert!(
        detail.contains("version conflict on every attempt (1)"),
        "{detail}"
    );
    let events = store.events(store.open().as_ref(), "s");
    assert_eq!(events.len(), 1, "only the other writer's event");
}

#[test]
fn a_store_that_cannot_be_opened_at_start_is_one_line_and_a_failed_run() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-decider", "0.1.0", &component("test-decider"))]);
    // Nothing listens on port 1.
    let store = "[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 port=1 user=postgres dbname=test\"\n";
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-decider\"\npublish-to = [\"*\"]\n\n{store}"
    );
    let config = scratch.write("g.toml", config(brokers, "g", &handlers, &routes));
    let exit = Host::start(&scratch, "host", &config, &["--until-drained"]).wait();
    assert!(!exit.status.success());
    let said = exit.stderr.lines().last().unwrap_or_default();
    assert!(
        said.contains("event store unavailable: postgres") && said.contains("onnection refused"),
        "{said}"
    );
}

#[test]
fn a_decider_version_dropped_in_takes_over_from_a_handler_and_opens_the_store_then() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("order-cancel-requests", 1).unwrap();
    let scratch = Scratch::new();
    let store = TestStore::new(StoreBackend::Sqlite, &scratch);
    let handlers = scratch.handlers(&[(
        "cancel-order",
        "0.1.0",
        &dist().join("cancel-order/0.1.0.wasm"),
    )]);
    let routes = [("order-cancel-requests", "cancel-order")];
    let text = decider_config(brokers, "g", &handlers, &routes, &store, "");
    let config = scratch.write("g.toml", text);
    let host = Host::start(&scratch, "host", &config, &[]);
    let request = |payload: &str| {
        let message = message("order-cancel-requests", 0, "o-1", payload);
        broker.produce(&[message]).unwrap();
    };
    let published = |n: usize| {
        wait_until(&format!("{n} order events"), || {
            count(brokers, "order-events") >= n as i64
        });
        read_topic(brokers, "order-events")
    };

    request(r#"{"type":"CustomerCancelRequest","orderId":"o-1"}"#);
    published(1);
    assert!(
        !Path::new(&store.place).exists(),
        "no decider serves yet: no store is created"
    );
    // Deployed as a deployment would: copied aside, renamed in.
    let target = handlers.join("cancel-order/0.2.0.wasm");
    std::fs::copy(
        dist().join("cancel-order/0.2.0.wasm"),
        target.with_extension("part"),
    )
    .unwrap();
    std::fs::rename(target.with_extension("part"), &target).unwrap();
    wait_until("the decider to serve", || {
        log_of(&scratch, "host").contains("handler swapped")
    });
    request(r#"{"type":"FraudSuspected","orderId":"o-1","score":0.9}"#);
    request(r#"{"type":"CustomerCancelRequest","orderId":"o-1"}"#);
    let records = published(3);
    host.signal(libc::SIGTERM);
    host.wait_ok();

    let seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let version = r.header("sluice-handler-version").unwrap().to_owned();
            let event: Value = serde_json::from_str(&r.payload).unwrap();
            (version, format!("{} {}", event["type"], event["reason"]))
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("0.1.0", r#""OrderCancelled" "customer-request""#),
        // The handler appended nothing: the stream starts with the decider.
        ("0.2.0", r#""OrderCancelled" "fraud-suspected""#),
        (
            "0.2.0",
            r#""OrderCancelFailed" "already cancelled (fraud-suspected)""#,
        ),
    ]
    .into_iter()
    .map(|(v, e)| (v.to_owned(), e.to_owned()))
    .collect();
    assert_eq!(seen, expected);
    let events = store.events(store.open().as_ref(), "order-o-1");
    assert_eq!(events.len(), 1, "one cancellation appended: {events:?}");
}
