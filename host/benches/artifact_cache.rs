//! Start-up with the artifact cache: 20 handlers (the same code with 20
//! content hashes, so 20 artifacts), loaded, checked and trial-instantiated
//! as a host does at start, with an empty cache (cold: every one compiled)
//! and then with the cache the cold start left (warm: a restart). Three
//! rounds each, medians. Goal: a warm start of 20 handlers well under a second.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::Config;
use sluice::config::Limits;
use sluice::registry::{self, VersionState};
use sluice::runtime::Runtime;

const HANDLERS: usize = 20;
const ROUNDS: usize = 3;

fn main() {
    support::handlers_dir();
    let scratch = tempfile::tempdir().unwrap();
    let handlers = scratch.path().join("handlers");
    let order_email =
        std::fs::read(support::repo().join("guests/dist/order-shipped-email/0.1.0.wasm")).unwrap();
    let mut routes = String::new();
    for n in 0..HANDLERS {
        let name = format!("handler-{n}");
        std::fs::create_dir_all(handlers.join(&name)).unwrap();
        let bytes = support::with_custom_section(&order_email, &name);
        std::fs::write(handlers.join(&name).join("1.0.0.wasm"), bytes).unwrap();
        routes.push_str(&format!(
            "[[routes]]\ntopic = \"in-{n}\"\nhandler = \"{name}\"\npublish-to = [\"email-requests\"]\n\n"
        ));
    }
    let cache = scratch.path().join("cache");
    let config = config(&handlers, &cache, &routes);

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let _ = std::fs::remove_dir_all(&cache);
        let took = start(&config);
        println!("round {round}: cold {:.0} ms", took.as_secs_f64() * 1000.0);
        cold.push(took.as_secs_f64());
        let took = start(&config);
        println!("round {round}: warm {:.0} ms", took.as_secs_f64() * 1000.0);
        warm.push(took.as_secs_f64());
    }
    let (cold, warm) = (support::median(cold), support::median(warm));
    println!(
        "median start-up of {HANDLERS} handlers: cold {:.0} ms, warm {:.0} ms",
        cold * 1000.0,
        warm * 1000.0
    );
    println!("RESULT CACHE {:.3} ratio", warm / cold);
}

/// What a host does with its handlers at start, timed (a new engine each time).
fn start(config: &Config) -> Duration {
    let started = Instant::now();
    let statuses = registry::evaluate(config, Runtime::new(&Limits::default()).unwrap()).unwrap();
    let took = started.elapsed();
    assert_eq!(statuses.len(), HANDLERS);
    assert!(statuses.iter().all(|s| s.state == VersionState::Active));
    took
}

fn config(handlers: &Path, cache: &Path, routes: &str) -> Config {
    let text = format!(
        "brokers = \"embedded\"\nhandlers-dir = \"{}\"\nartifact-cache = \"{}\"\nhandler-settle-ms = 0\n\n{routes}",
        handlers.display(),
        cache.display()
    );
    Config::parse(&text, "bench.toml".as_ref(), ".".as_ref()).unwrap()
}
