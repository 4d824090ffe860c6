//! P3-floor: what P3's harness allows at best on this machine. The same
//! 10,000 POSTs to the same wait server (uniform 0–5 ms each, at most 100 in
//! flight), sent by a bare reqwest client with no Kafka, no handler and no
//! ordering: the time from the first request's arrival to the last answer,
//! against the same ideal as P3 (the waits / 100). P3's own ratio cannot be
//! better than this one; the gap between them is sluice's.
//! Prints `RESULT P3-floor <time / ideal> ratio`.

mod support;

use futures::stream::{self, StreamExt};
use support::wait_server::WaitServer;

const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 100;
const MAX_WAIT_MICROS: u64 = 5_000;
const ROUNDS: usize = 3;

fn main() {
    let server = WaitServer::start(CONCURRENCY);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let urls: Vec<String> = (0..REQUESTS)
            .map(|_| {
                let wait = rand::random_range(0..=MAX_WAIT_MICROS);
                format!("http://{}/wait/{wait}", server.addr)
            })
            .collect();
        server.reset();
        runtime.block_on(
            stream::iter(urls)
                .map(|url| {
                    let client = client.clone();
                    async move {
                        let answer = client.post(url).send().await.unwrap();
                        assert!(answer.status().is_success());
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<()>>(),
        );
        let served = server.served();
        assert_eq!(served.count, REQUESTS, "requests served");
        assert!(served.most_at_once <= CONCURRENCY);
        let ideal = served.total_wait / CONCURRENCY as u32;
        let ratio = served.span.as_secs_f64() / ideal.as_secs_f64();
        println!(
            "round {round}: {:.3} s from first request to last answer; ideal {:.3} s: {ratio:.2}x",
            served.span.as_secs_f64(),
            ideal.as_secs_f64(),
        );
        ratios.push(ratio);
    }
    println!("RESULT P3-floor {:.2} ratio", support::median(ratios));
}
