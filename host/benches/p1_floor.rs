//! P1-floor: how much CPU per message any Wasm host must spend on P1's
//! workload on this machine, to tell P1-cpu's goal from what is possible.
//! Three loops over the same embedded broker and topic, each the median of
//! its rounds: the native loop of P1 (the logic compiled in), the same loop
//! calling the order-shipped-email component instead (consume, lower the
//! message, call, lift, produce: no ordering, no traces, no metrics, no
//! policy), and sluice itself. Prints `RESULT P1-floor-cpu <the Wasm loop's
//! CPU per message / native's> ratio` (the lowest P1-cpu any Wasm host could
//! reach) and `RESULT P1-over-floor-cpu <sluice's / the Wasm loop's> ratio`
//! (what sluice adds on top of the sandbox).

mod support;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Headers as _, Message as _};
use sluice::config::Limits;
use sluice::contract::{Header, Message, Output};
use sluice::runtime::{Handler, Runtime};
use support::p1::{MESSAGES, PARTITIONS, native_loop, sluice_run};

const ROUNDS: usize = 3;

fn main() {
    let handlers = support::handlers_dir();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = support::order_shipped_broker(MESSAGES, PARTITIONS);
    let brokers = broker.bootstrap_servers().to_owned();
    let wasm = Runtime::new(&Limits::default()).unwrap();
    let component: Arc<dyn Handler> = wasm
        .load(
            &handlers.join("order-shipped-email/0.1.0.wasm"),
            "order-shipped-email",
            "0.1.0",
        )
        .unwrap();

    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let native =
            measure(|| runtime.block_on(native_loop(&brokers, &format!("native-{round}"))));
        let mut instance = component.instantiate().unwrap();
        let floor = measure(|| {
            runtime.block_on(support::p1::run(
                &brokers,
                &format!("wasm-{round}"),
                MESSAGES,
                |msg| {
                    let message = Message {
                        topic: msg.topic().to_owned(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().unwrap_or_default().to_vec(),
                        headers: msg
                            .headers()
                            .map(|headers| {
                                headers
                                    .iter()
                                    .map(|h| Header {
                                        name: h.key.to_owned(),
                                        value: h.value.unwrap_or_default().to_vec(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        timestamp: msg.timestamp().to_millis().unwrap_or(0) as u64,
                    };
                    let outputs = instance.handle(&message).unwrap();
                    outputs
                        .into_iter()
                        .find_map(|output| match output {
                            Output::Publish(record) => {
                                Some((record.key.unwrap_or_default(), record.payload))
                            }
                            _ => None,
                        })
                        .expect("a record to publish")
                },
            ))
        });
        let sluice = measure(|| {
            runtime.block_on(sluice_run(&brokers, &handlers, &format!("sluice-{round}")))
        });
        println!(
            "round {round}: CPU per message: native {native:.1} µs, Wasm loop {floor:.1} µs, sluice {sluice:.1} µs"
        );
        for (side, value) in cpu.iter_mut().zip([native, floor, sluice]) {
            side.push(value);
        }
    }
    let [native, floor, sluice] = cpu.map(support::median);
    println!(
        "median over {ROUNDS} rounds of {MESSAGES} messages: native {native:.1} µs, Wasm loop {floor:.1} µs, sluice {sluice:.1} µs CPU per message"
    );
    println!("RESULT P1-floor-cpu {:.2} ratio", floor / native);
    println!("RESULT P1-over-floor-cpu {:.2} ratio", sluice / floor);
}

/// Process CPU time per message of `run` (every thread's, the embedded
/// broker's included, alike for each loop).
fn measure(run: impl FnOnce() -> Duration) -> f64 {
    let before = support::cpu_time();
    run();
    (support::cpu_time() - before).as_secs_f64() * 1e6 / MESSAGES as f64
}
