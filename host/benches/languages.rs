//! What a handler costs per language: the shop's order-shipped-email built
//! from Rust, JavaScript (componentize-js) and Python (componentize-py), all
//! meeting the same vectors, against the same logic compiled natively, in
//! this process with no broker. Per call with the instance reused (`reuse`,
//! the default) and with a fresh instance per message (`fresh`: pooling
//! allocator, pre-linked instantiation, so it is the instantiation cost plus
//! one call). Prints, per language, `RESULT L-<language>-reuse <µs per call /
//! native> ratio` and `RESULT L-<language>-fresh <...> ratio`, and the time
//! to compile each component (informational: the artifact cache makes it a
//! one-off per version).

mod support;

use std::sync::Arc;
use std::time::Instant;

use sluice::config::{InstanceStrategy, Limits};
use sluice::runtime::{Handler, Runtime};

const ROUNDS: usize = 3;

fn main() {
    let rust = support::handlers_dir();
    let guests = rust.parent().unwrap().to_owned();
    // Calls per measurement: each takes a few hundred milliseconds.
    let languages = [
        ("rust", rust, 20_000, 5_000),
        ("javascript", guests.join("dist-js"), 3_000, 300),
        ("python", guests.join("dist-python"), 5_000, 200),
    ];
    let messages = support::order_shipped(20_000, 4);
    let reuse = Runtime::new(&Limits::default()).unwrap();
    let fresh = Runtime::new(&Limits {
        instances: InstanceStrategy::Fresh,
        ..Limits::default()
    })
    .unwrap();
    let native = support::native_handler();
    let mut variants: Vec<(String, Arc<dyn Handler>, bool, usize)> =
        vec![("native".into(), native, false, 20_000)];
    for (language, dir, reused_calls, fresh_calls) in &languages {
        let file = dir.join("order-shipped-email/0.1.0.wasm");
        let started = Instant::now();
        let handler: Arc<dyn Handler> = reuse.load(&file, "order-shipped-email", "0.1.0").unwrap();
        println!(
            "{language}: {:.1} MB component compiled in {:.2} s",
            std::fs::metadata(&file).unwrap().len() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        variants.push((format!("{language}-reuse"), handler, false, *reused_calls));
        let handler: Arc<dyn Handler> = fresh.load(&file, "order-shipped-email", "0.1.0").unwrap();
        variants.push((format!("{language}-fresh"), handler, true, *fresh_calls));
    }
    // The first calls after loading fault code pages in: not what is measured.
    for (_, handler, fresh, _) in &variants {
        support::per_call(handler, &messages[..50], *fresh);
    }
    let mut times = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        let mut line = format!("round {round}:");
        for (i, (name, handler, fresh, calls)) in variants.iter().enumerate() {
            times[i].push(support::per_call(handler, &messages[..*calls], *fresh));
            line += &format!(" {name} {:.2} µs;", times[i][round]);
        }
        println!("{line}");
    }
    let median: Vec<f64> = times.into_iter().map(support::median).collect();
    for ((name, ..), us) in variants.iter().zip(&median) {
        println!("median over {ROUNDS} rounds: {name} {us:.2} µs/call");
    }
    let native = median[0];
    for ((name, ..), us) in variants.iter().zip(&median).skip(1) {
        println!("RESULT L-{name} {:.1} ratio", us / native);
    }
}
