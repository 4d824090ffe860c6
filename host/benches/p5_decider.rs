//! P5: what a decision costs as its stream grows, and appends under
//! contention. `sku-coupon` (a real decider component) against the
//! embedded SQLite store, driven through the library's decider with no
//! broker:
//!
//! - decide latency (load, fold, decide, append one event) at stream
//!   length 10 and 10,000, with snapshots every 100 events and without,
//!   cold each time (no state kept in memory, as on a fresh host or one
//!   whose cache lost the stream), and warm (state kept in memory);
//! - four deciders with their own store connections and caches (as four
//!   hosts) appending to one stream at once: appends per second and the
//!   share of appends that met a version conflict; on SQLite, and on
//!   PostgreSQL when 127.0.0.1:5432 answers.
//!
//! Prints `RESULT P5 <cold latency at 10,000 / at 10, with snapshots> ratio`
//! (goal ≤ 2), `RESULT P5-no-snapshots <the same without> ratio`,
//! `RESULT P5-contended-<store> <appends per second> appends/s` and
//! `RESULT P5-conflicts-<store> <conflicts / attempts> ratio`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::{DeciderSettings, Limits, StoreBackend, StoreConfig};
use sluice::contract::{Event, Message};
use sluice::decider::{Decider, DeciderStats};
use sluice::runtime::{Handler, Runtime};
use sluice::store::{self, Cause, EventStore, Store};
use sluice::workers::WorkerPool;

const DECISIONS: usize = 100;
const CONTENDED: usize = 250;
const POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn settings(snapshot_every: u64, cache_streams: usize) -> DeciderSettings {
    DeciderSettings {
        snapshot_every,
        cache_streams,
        conflict_attempts: 1000,
        ..DeciderSettings::default()
    }
}

/// A coupon command for `sku`, numbered `n` (a new code and offset each).
fn apply(sku: &str, n: usize) -> Arc<Message> {
    let payload = format!(
        r#"{{"type":"ApplyCoupon","sku":"{sku}","coupon":"C{n}","percent":{}}}"#,
        n % 50 + 1
    );
    Arc::new(Message {
        topic: "sku-commands".into(),
        partition: 0,
        offset: n as i64,
        key: Some(sku.as_bytes().to_vec()),
        payload: payload.into_bytes(),
        headers: Vec::new(),
        timestamp: 1_767_225_600_000,
    })
}

/// A stream of `length` assortment events, in the assortment at the end.
async fn populate(store: &dyn EventStore, stream: &str, length: usize) {
    let events: Vec<Event> = (0..length)
        .map(|i| Event {
            kind: if i % 2 == length % 2 {
                "SkuRemovedFromAssortment"
            } else {
                "SkuAddedToAssortment"
            }
            .into(),
            data: b"{}".to_vec(),
            metadata: Vec::new(),
        })
        .collect();
    let cause = Cause {
        handler: "bench".into(),
        handler_version: "0".into(),
        source: "populate".into(),
    };
    store.append(stream, 0, &events, &cause).await.unwrap();
}

async fn open(backend: StoreBackend, place: &str) -> Arc<dyn Store> {
    let mut config: StoreConfig = toml::from_str("").unwrap();
    config.backend = backend;
    match backend {
        StoreBackend::Sqlite => config.path = place.into(),
        StoreBackend::Postgres => {
            config.url = POSTGRES.into();
            config.schema = place.into();
        }
    }
    store::open(&config, Path::new("/")).await.unwrap()
}

/// Median microseconds per decision on a stream of `length`.
async fn latency(
    handler: &Arc<dyn Handler>,
    dir: &Path,
    length: usize,
    snapshot_every: u64,
    cached: bool,
) -> f64 {
    let path = dir.join(format!("latency-{length}-{snapshot_every}-{cached}.db"));
    let store = open(StoreBackend::Sqlite, path.to_str().unwrap()).await;
    populate(store.as_ref(), "sku-S", length).await;
    let decider = Decider::new(
        store,
        settings(snapshot_every, if cached { 100 } else { 0 }),
        Arc::default(),
    );
    let pool = WorkerPool::start(1);
    // The first decision folds the whole stream (and writes its first snapshot).
    decider
        .decide(&pool, handler, &apply("S", 0), "sku-S")
        .await
        .unwrap();
    let mut times = Vec::with_capacity(DECISIONS);
    for n in 1..=DECISIONS {
        let message = apply("S", n);
        let started = Instant::now();
        let decided = decider
            .decide(&pool, handler, &message, "sku-S")
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(decided.appended, 1, "each coupon is new");
    }
    support::median(times)
}

/// Four deciders appending to one stream at once: appends per second and
/// the share of attempts that conflicted.
async fn contention(handler: &Arc<dyn Handler>, backend: StoreBackend, place: &str) -> (f64, f64) {
    let first = open(backend, place).await;
    populate(first.as_ref(), "sku-hot", 1).await;
    let stats = Arc::new(DeciderStats::default());
    let mut deciders = Vec::new();
    for _ in 0..4 {
        let store = open(backend, place).await;
        deciders.push(Arc::new(Decider::new(
            store,
            settings(100, 100),
            stats.clone(),
        )));
    }
    let started = Instant::now();
    let tasks: Vec<_> = deciders
        .into_iter()
        .enumerate()
        .map(|(d, decider)| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let pool = WorkerPool::start(1);
                for n in 0..CONTENDED {
                    let message = apply("hot", d * CONTENDED + n);
                    decider
                        .decide(&pool, &handler, &message, "sku-hot")
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let counts = stats.counts();
    assert_eq!(counts.appends as usize, 4 * CONTENDED);
    let rate = counts.appends as f64 / elapsed.as_secs_f64();
    let conflicts = counts.conflicts as f64 / (counts.conflicts + counts.appends) as f64;
    (rate, conflicts)
}

async fn postgres_up() -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls),
    )
    .await
    .is_ok_and(|connected| connected.is_ok())
}

#[tokio::main]
async fn main() {
    let file = support::handlers_dir().join("sku-coupon/0.1.0.wasm");
    let runtime = Runtime::new(&Limits::default()).unwrap();
    let handler: Arc<dyn Handler> = runtime.load(&file, "sku-coupon", "0.1.0").unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut cold = std::collections::BTreeMap::new();
    for snapshot_every in [100, 0] {
        for length in [10, 10_000] {
            let us = latency(&handler, dir.path(), length, snapshot_every, false).await;
            let label = if snapshot_every > 0 {
                "snapshots"
            } else {
                "no snapshots"
            };
            println!("cold decide, stream of {length:>6}, {label:<12}: {us:>9.0} µs");
            cold.insert((snapshot_every, length), us);
        }
    }
    for length in [10, 10_000] {
        let us = latency(&handler, dir.path(), length, 100, true).await;
        println!("warm decide, stream of {length:>6}, state in memory: {us:>9.0} µs");
    }

    let mut contended = vec![(
        "sqlite",
        contention(
            &handler,
            StoreBackend::Sqlite,
            dir.path().join("hot.db").to_str().unwrap(),
        )
        .await,
    )];
    if postgres_up().await {
        let schema = format!("bench_p5_{}", std::process::id());
        contended.push((
            "postgres",
            contention(&handler, StoreBackend::Postgres, &schema).await,
        ));
        let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    } else {
        println!("PostgreSQL not reachable on 127.0.0.1:5432: contention measured on SQLite only");
    }
    for (store, (rate, conflicts)) in &contended {
        println!(
            "4 writers on one stream, {store}: {rate:.0} appends/s, {:.0}% of attempts conflicted",
            conflicts * 100.0
        );
    }

    println!(
        "RESULT P5 {:.2} ratio",
        cold[&(100, 10_000)] / cold[&(100, 10)]
    );
    println!(
        "RESULT P5-no-snapshots {:.2} ratio",
        cold[&(0, 10_000)] / cold[&(0, 10)]
    );
    for (store, (rate, conflicts)) in contended {
        println!("RESULT P5-contended-{store} {rate:.0} appends/s");
        println!("RESULT P5-conflicts-{store} {conflicts:.2} ratio");
    }
}
