//! What the sandbox costs per call, on the Rust shop handler
//! (order-shipped-email) against the same logic compiled natively, all in
//! this process with no broker: instances reused (`reuse`, the default) or
//! made for every message (`fresh`, pooling allocator and pre-linked
//! instantiation), and what the limits themselves add (epoch deadlines on
//! or off, fuel on or off). Prints
//! `RESULT S1 <reuse / native> ratio`, `RESULT S2 <fresh / native> ratio`,
//! `RESULT S3 <deadlines on / off> ratio` and `RESULT S4 <fuel on / off> ratio`
//! (per-call times; lower is cheaper).

mod support;

use std::sync::Arc;

use sluice::config::{InstanceStrategy, Limits};
use sluice::runtime::{Handler, Runtime};

const CALLS: usize = 20_000;
const ROUNDS: usize = 5;

fn load(runtime: Runtime) -> Arc<dyn Handler> {
    let file = support::handlers_dir().join("order-shipped-email/0.1.0.wasm");
    runtime.load(&file, "order-shipped-email", "0.1.0").unwrap()
}

fn main() {
    let messages = support::order_shipped(CALLS, 4);
    let reuse = Limits::default();
    let fresh = Limits {
        instances: InstanceStrategy::Fresh,
        ..Limits::default()
    };
    let fuel = Limits {
        fuel: Some(u64::MAX / 2),
        ..Limits::default()
    };
    let variants: [(&str, Arc<dyn Handler>, bool); 6] = [
        ("native", support::native_handler(), false),
        ("reuse", load(Runtime::new(&reuse).unwrap()), false),
        ("fresh (pooling)", load(Runtime::new(&fresh).unwrap()), true),
        (
            "fresh (no pooling)",
            load(Runtime::new(&reuse).unwrap()),
            true,
        ),
        (
            "reuse, no deadlines",
            load(Runtime::without_deadlines(&reuse).unwrap()),
            false,
        ),
        ("reuse, fuel", load(Runtime::new(&fuel).unwrap()), false),
    ];
    let mut times = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        let mut line = format!("round {round}:");
        for (i, (name, handler, fresh)) in variants.iter().enumerate() {
            times[i].push(support::per_call(handler, &messages, *fresh));
            line += &format!(" {name} {:.2} µs;", times[i][round]);
        }
        println!("{line}");
    }
    let median: Vec<f64> = times.into_iter().map(support::median).collect();
    for ((name, _, _), us) in variants.iter().zip(&median) {
        println!("median over {ROUNDS} rounds of {CALLS} calls: {name} {us:.2} µs/call");
    }
    let [native, reuse, fresh, _, no_deadlines, fuel] = median[..] else {
        unreachable!()
    };
    println!("RESULT S1 {:.2} ratio", reuse / native);
    println!("RESULT S2 {:.2} ratio", fresh / native);
    println!("RESULT S3 {:.2} ratio", reuse / no_deadlines);
    println!("RESULT S4 {:.2} ratio", fuel / reuse);
}
