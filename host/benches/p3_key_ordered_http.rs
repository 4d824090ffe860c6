//! P3: the Parallel Consumer's published workload. 10,000 messages on one
//! partition, each one's effect an HTTP call to a local server that waits a
//! uniform 0–5 ms, at most 100 in flight. The ideal time is the sum of the
//! waits / 100; Parallel Consumer reports 8.4× that. Goal: ≤ 2×.
//!
//! Measured with 10,000 distinct keys (the headline, `RESULT P3`), 10 keys,
//! 1 key, and `ordering = "partition"`; fewer keys than 100 cannot go faster
//! than their waits / keys, which is printed as their own floor. Time is the
//! server's: from the first request's arrival to the last one's answer
//! (start-up and the final commit are left out; they are printed too, as the
//! whole run's wall time). The server checks that no more than 100 requests
//! were ever in progress at once.

mod support;

use std::net::SocketAddr;

use sluice::contract::{Header, Message};
use sluice::embedded::EmbeddedBroker;
use support::wait_server::{self, WaitServer};

const MESSAGES: usize = 10_000;
const CONCURRENCY: usize = 100;
const MAX_WAIT_MICROS: u64 = 5_000;

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let handlers = wait_server::faults_handlers(scratch.path());
    let server = WaitServer::start(CONCURRENCY);

    let broker = EmbeddedBroker::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // (name, keys, ordering, how many can go at once)
    let cases = [
        ("10000 keys", 10_000, "key", CONCURRENCY),
        ("10 keys", 10, "key", 10),
        ("1 key", 1, "key", 1),
        ("partition mode", 10_000, "partition", 1),
    ];
    let mut headline = None;
    for (n, (name, keys, ordering, parallel)) in cases.into_iter().enumerate() {
        let topic = format!("p3-{n}");
        broker.create_topic(&topic, 1).unwrap();
        broker
            .produce(&requests(&topic, keys, server.addr))
            .unwrap();
        server.reset();
        let wall = runtime.block_on(wait_server::run_http_effects(
            broker.bootstrap_servers(),
            &handlers,
            &topic,
            ordering,
            CONCURRENCY,
        ));
        let served = server.served();
        assert_eq!(served.count, MESSAGES, "{name}: requests served");
        assert!(
            served.most_at_once <= parallel,
            "{name}: {} requests at once",
            served.most_at_once
        );
        let ideal = served.total_wait / CONCURRENCY as u32;
        let ratio = served.span.as_secs_f64() / ideal.as_secs_f64();
        let floor = served.total_wait / parallel as u32;
        println!(
            "{name:>15}: {:.3} s from first request to last answer ({:.3} s whole run); ideal {:.3} s (waits {:.2} s / {CONCURRENCY}): {ratio:.2}x; own floor {:.3} s (waits / {parallel}): {:.2}x; at most {} at once",
            served.span.as_secs_f64(),
            wall.as_secs_f64(),
            ideal.as_secs_f64(),
            served.total_wait.as_secs_f64(),
            floor.as_secs_f64(),
            served.span.as_secs_f64() / floor.as_secs_f64(),
            served.most_at_once,
        );
        headline.get_or_insert(ratio);
    }
    println!("RESULT P3 {:.2} ratio", headline.unwrap());
}

/// The messages: each asks for a POST to the server, which waits the time
/// named in the URL (uniform in 0–5 ms).
fn requests(topic: &str, keys: usize, server: SocketAddr) -> Vec<Message> {
    (0..MESSAGES)
        .map(|i| {
            let wait = rand::random_range(0..=MAX_WAIT_MICROS);
            Message {
                topic: topic.to_owned(),
                partition: 0,
                offset: 0,
                key: Some(format!("k{}", i % keys).into_bytes()),
                payload: format!("http:http://{server}/wait/{wait}").into_bytes(),
                headers: vec![Header::new("source", "bench")],
                timestamp: 0,
            }
        })
        .collect()
}
