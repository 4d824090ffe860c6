//! P1: messages per second of a sluice run with the Rust order-shipped-email
//! component, against a minimal hand-written native rdkafka loop doing the
//! same work (consume → the same logic → produce, offsets stored once the
//! output is delivered), on the same embedded broker in the same process.
//! Prints `RESULT P1 <sluice rate / native rate> ratio` (goal ≥ 0.8) and
//! `RESULT P1-cpu <sluice CPU per message / native's> ratio` (goal ≤ 1.8),
//! each the median over the rounds. CPU is the whole process's (the
//! embedded broker's threads included, alike for both sides).

mod support;

use std::time::Duration;

use support::p1::{MESSAGES, PARTITIONS, native_loop, sluice_run};

const ROUNDS: usize = 3;

fn main() {
    let handlers = support::handlers_dir();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = support::order_shipped_broker(MESSAGES, PARTITIONS);
    let brokers = broker.bootstrap_servers().to_owned();

    let (mut native, mut sluice) = (Vec::new(), Vec::new());
    let (mut native_cpu, mut sluice_cpu) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (rate, cpu) =
            measure(|| runtime.block_on(native_loop(&brokers, &format!("native-{round}"))));
        println!("round {round}: native {rate:.0} msg/s ({cpu:.1} µs CPU/msg)");
        native.push(rate);
        native_cpu.push(cpu);
        let (rate, cpu) = measure(|| {
            runtime.block_on(sluice_run(&brokers, &handlers, &format!("sluice-{round}")))
        });
        println!("round {round}: sluice {rate:.0} msg/s ({cpu:.1} µs CPU/msg)");
        sluice.push(rate);
        sluice_cpu.push(cpu);
    }
    let (native, sluice) = (support::median(native), support::median(sluice));
    let (native_cpu, sluice_cpu) = (support::median(native_cpu), support::median(sluice_cpu));
    println!(
        "median over {ROUNDS} rounds of {MESSAGES} messages on {PARTITIONS} partitions: native {native:.0} msg/s at {native_cpu:.1} µs CPU/msg, sluice {sluice:.0} msg/s at {sluice_cpu:.1} µs CPU/msg"
    );
    println!("RESULT P1 {:.2} ratio", sluice / native);
    println!("RESULT P1-cpu {:.2} ratio", sluice_cpu / native_cpu);
}

/// Messages per second of `run`, and process CPU time per message.
fn measure(run: impl FnOnce() -> Duration) -> (f64, f64) {
    let cpu_before = support::cpu_time();
    let elapsed = run();
    let cpu = support::cpu_time() - cpu_before;
    (
        MESSAGES as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / MESSAGES as f64,
    )
}
