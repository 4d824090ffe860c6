//! SP1: the status page of a host with 50 handlers and 500 partitions. A
//! host on the embedded broker serves 50 routes of 10 partitions each, each
//! route with a handler of its own (copies of order-shipped-email). Once
//! every message is handled and the charts hold samples, `GET /` is timed
//! against `GET /healthz` on the same server (the HTTP round trip alone:
//! the baseline). Prints both, the page's size, and
//! `RESULT SP1 <page p50 ms> ms` (the goal: well under 100 ms).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice::contract::Message;
use sluice::{Config, RunOptions};

const ROUTES: usize = 50;
const PARTITIONS: i32 = 10;
const MESSAGES_PER_ROUTE: usize = 40;
const ROUNDS: usize = 40;
/// Samples the charts hold before the page is timed.
const SAMPLES: usize = 20;

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Milliseconds of each of `ROUNDS` GETs of `path`, sorted.
fn timed(address: &str, path: &str) -> Vec<f64> {
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let response = get(address, path);
            assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

fn main() {
    let built = support::handlers_dir().join("order-shipped-email/0.1.0.wasm");
    let scratch = tempfile::tempdir().unwrap();
    let handlers = scratch.path().join("handlers");
    let broker = sluice::embedded::EmbeddedBroker::start().unwrap();
    let mut routes = String::new();
    for route in 0..ROUTES {
        let (topic, handler) = (format!("orders-{route:02}"), format!("email-{route:02}"));
        std::fs::create_dir_all(handlers.join(&handler)).unwrap();
        std::fs::copy(&built, handlers.join(&handler).join("0.1.0.wasm")).unwrap();
        broker.create_topic(&topic, PARTITIONS).unwrap();
        let messages: Vec<Message> = support::order_shipped(MESSAGES_PER_ROUTE, PARTITIONS)
            .into_iter()
            .map(|message| Message {
                topic: topic.clone(),
                ..message
            })
            .collect();
        broker.produce(&messages).unwrap();
        routes.push_str(&format!(
            "[[routes]]\ntopic = \"{topic}\"\nhandler = \"{handler}\"\npublish-to = [\"email-requests\"]\n\n"
        ));
    }
    // A free port for the admin server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let text = format!(
        "brokers = \"{}\"\ngroup-id = \"status-page\"\nhandlers-dir = \"{}\"\n\n{routes}[admin]\nlisten = \"{port}\"\n",
        broker.bootstrap_servers(),
        handlers.display()
    );
    let config = Config::parse(&text, "bench.toml".as_ref(), ".".as_ref()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = runtime.spawn(async move {
        sluice::run(&config, RunOptions::default(), async {
            let _ = stopped.await;
        })
        .await
    });

    let total = ROUTES * MESSAGES_PER_ROUTE;
    wait_for("every message handled", || {
        TcpStream::connect(&address).is_ok()
            && get(&address, "/metrics").contains(&format!("sluice_consumed_total {total}"))
    });
    wait_for("the charts' samples", || {
        get(&address, "/api/history").matches("\"at\":").count() >= SAMPLES
    });
    let page = get(&address, "/");
    assert!(page.contains("chart-handled") && page.contains("orders-49[9]"));
    let page_ms = timed(&address, "/");
    let baseline_ms = timed(&address, "/healthz");
    stop.send(()).unwrap();
    runtime.block_on(host).unwrap().unwrap();

    let p = |times: &[f64], q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "status page, {ROUTES} handlers and {} partitions, {SAMPLES}+ samples: {} kB",
        ROUTES * PARTITIONS as usize,
        page.len() / 1024
    );
    println!(
        "GET /        p50 {:.2} ms, p99 {:.2} ms",
        p(&page_ms, 0.5),
        p(&page_ms, 0.99)
    );
    println!(
        "GET /healthz p50 {:.2} ms, p99 {:.2} ms (baseline: the round trip)",
        p(&baseline_ms, 0.5),
        p(&baseline_ms, 0.99)
    );
    println!("RESULT SP1 {:.2} ms", p(&page_ms, 0.5));
}
