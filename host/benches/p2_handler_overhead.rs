//! P2: the Wasm order-shipped-email component against the same logic as a
//! native handler, both inside sluice on the JSONL file source (publishing
//! to the embedded broker). Prints `RESULT P2 <wasm rate / native rate> ratio`
//! (goal ≥ 0.5).

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use sluice::embedded::EmbeddedBroker;
use sluice::{Config, RunOptions};

const MESSAGES: usize = 100_000;
const ROUNDS: usize = 3;

fn main() {
    let handlers = support::handlers_dir();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = EmbeddedBroker::start().unwrap();
    let input = tempfile::NamedTempFile::new().unwrap();
    {
        let mut out = std::io::BufWriter::new(input.as_file());
        for msg in support::order_shipped(MESSAGES, 4) {
            let line = serde_json::json!({
                "topic": msg.topic,
                "partition": msg.partition,
                "key": String::from_utf8(msg.key.unwrap()).unwrap(),
                "payload": String::from_utf8(msg.payload).unwrap(),
            });
            writeln!(out, "{line}").unwrap();
        }
    }
    let text = format!(
        r#"brokers = "{}"
handlers-dir = "{}"

[source]
file = "{}"

[[routes]]
topic = "order-shipped"
handler = "order-shipped-email"
publish-to = ["email-requests"]
"#,
        broker.bootstrap_servers(),
        handlers.display(),
        input.path().display()
    );
    let config = Config::parse(&text, "p2.toml".as_ref(), ".".as_ref()).unwrap();

    let run = |native: bool| {
        let handlers = if native {
            HashMap::from([("order-shipped-email".to_owned(), support::native_handler())])
        } else {
            HashMap::new()
        };
        let options = RunOptions {
            handlers,
            ..RunOptions::default()
        };
        let started = Instant::now();
        let report = runtime
            .block_on(sluice::run(&config, options, std::future::pending()))
            .unwrap();
        assert_eq!(report.published as usize, MESSAGES);
        MESSAGES as f64 / started.elapsed().as_secs_f64()
    };
    let (mut native, mut wasm) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        native.push(run(true));
        wasm.push(run(false));
        println!(
            "round {round}: native handler {:.0} msg/s, wasm handler {:.0} msg/s",
            native[round], wasm[round]
        );
    }
    let (native, wasm) = (support::median(native), support::median(wasm));
    println!(
        "median over {ROUNDS} rounds of {MESSAGES} messages: native {native:.0} msg/s, wasm {wasm:.0} msg/s"
    );
    println!("RESULT P2 {:.2} ratio", wasm / native);
}
