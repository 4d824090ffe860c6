//! P3-zipf: P3's effect workload (10,000 messages on one partition, each an
//! HTTP call that waits a uniform 0–5 ms, at most 100 in flight, ordered by
//! key), with keys drawn from a Zipf distribution (s = 1.1 over 1,000 keys,
//! fixed seed) instead of all distinct. Keyed ordering is the real case:
//! the busiest key holds ~18% of the messages, and its calls must run one
//! after another.
//!
//! The floor is whichever is larger: the busiest key's summed waits (its
//! chain cannot be shortened) or all waits / 100. Both are measured by the
//! server, as is the span from the first request's arrival to the last
//! one's answer. Goal: span ≤ 1.5 × floor.

mod support;

use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;
use support::wait_server::{self, WaitServer};

const MESSAGES: usize = 10_000;
const CONCURRENCY: usize = 100;
const MAX_WAIT_MICROS: u64 = 5_000;
const KEYS: usize = 1_000;
const EXPONENT: f64 = 1.1;
const SEED: u64 = 0x5eed_2f1f;

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let handlers = wait_server::faults_handlers(scratch.path());
    let server = WaitServer::start(CONCURRENCY);
    let broker = EmbeddedBroker::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let topic = "p3-zipf";
    broker.create_topic(topic, 1).unwrap();
    let (messages, busiest) = requests(topic, server.addr);
    broker.produce(&messages).unwrap();
    let wall = runtime.block_on(wait_server::run_http_effects(
        broker.bootstrap_servers(),
        &handlers,
        topic,
        "key",
        CONCURRENCY,
    ));

    let served = server.served();
    assert_eq!(served.count, MESSAGES, "requests served");
    assert!(
        served.most_at_once <= CONCURRENCY,
        "{} requests at once",
        served.most_at_once
    );
    let spread = served.total_wait / CONCURRENCY as u32;
    let floor = served.longest_key_wait.max(spread);
    let ratio = served.span.as_secs_f64() / floor.as_secs_f64();
    println!(
        "zipf s={EXPONENT} over {KEYS} keys: busiest key {busiest} messages; {:.3} s from first request to last answer ({:.3} s whole run); floor {:.3} s (busiest key's waits {:.3} s, all waits / {CONCURRENCY} {:.3} s); at most {} at once",
        served.span.as_secs_f64(),
        wall.as_secs_f64(),
        floor.as_secs_f64(),
        served.longest_key_wait.as_secs_f64(),
        spread.as_secs_f64(),
        served.most_at_once,
    );
    println!("RESULT P3-zipf {ratio:.2} ratio");
}

/// The messages, keys drawn by inverting the Zipf distribution's cumulative
/// weights, and how many went to the busiest key. Each asks for a POST that
/// waits a uniform 0–5 ms and names its key, so the server can sum waits per
/// key.
fn requests(topic: &str, server: SocketAddr) -> (Vec<Message>, usize) {
    let mut cumulative = Vec::with_capacity(KEYS);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += (rank as f64).powf(-EXPONENT);
        cumulative.push(total);
    }
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut per_key = vec![0usize; KEYS];
    let messages = (0..MESSAGES)
        .map(|_| {
            let draw = rng.random::<f64>() * total;
            let key = cumulative.partition_point(|&c| c < draw).min(KEYS - 1);
            per_key[key] += 1;
            let wait = rng.random_range(0..=MAX_WAIT_MICROS);
            Message {
                topic: topic.to_owned(),
                partition: 0,
                offset: 0,
                key: Some(format!("k{key}").into_bytes()),
                payload: format!("http:http://{server}/wait/{wait}/k{key}").into_bytes(),
                headers: vec![Header::new("source", "bench")],
                timestamp: 0,
            }
        })
        .collect();
    (messages, per_key.into_iter().max().unwrap())
}
