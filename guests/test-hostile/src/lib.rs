//! Hostile handlers, for the sandbox's tests: each feature builds a
//! component that attacks the host in one way. A message whose payload
//! starts with `attack` triggers the attack (its argument after `attack:`);
//! any other message is echoed to topic `echo`, so a test can see the
//! partition keep flowing. `chatty`, `clock-random` and `panic` act on every
//! message. What a forbidden attempt got is reported in the handler's
//! `failed` error; anything it managed to obtain is published to `leak`.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Message, Output, Publish};
#[cfg(feature = "many-outputs")]
use sluice::handler::types::{LogEntry, LogLevel};

struct Hostile;

impl Guest for Hostile {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let argument = match msg.payload.strip_prefix(b"attack") {
            Some(rest) => {
                String::from_utf8_lossy(rest.strip_prefix(b":").unwrap_or(rest)).into_owned()
            }
            None if cfg!(any(
                feature = "chatty",
                feature = "clock-random",
                feature = "panic"
            )) =>
            {
                String::new()
            }
            None => return Ok(vec![publish("echo", &msg, msg.payload.clone())]),
        };
        attack(&msg, &argument)
    }
}

fn publish(topic: &str, msg: &Message, payload: Vec<u8>) -> Output {
    Output::Publish(Publish {
        topic: topic.into(),
        key: msg.key.clone(),
        payload,
        headers: vec![],
    })
}

#[allow(dead_code, reason = "not every attack fails")]
fn failed(what: String) -> Result<Vec<Output>, HandleError> {
    Err(HandleError::Failed(what))
}

#[cfg(feature = "loop")]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

#[cfg(feature = "memory-bomb")]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![7u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

#[cfg(feature = "recursion")]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    fn deeper(depth: u64) -> u64 {
        if depth == u64::MAX {
            return 0;
        }
        let frame = std::hint::black_box([depth as u8; 64]);
        deeper(depth + 1).wrapping_add(frame[0] as u64)
    }
    let depth = deeper(0);
    failed(format!("recursion ended at {depth}"))
}

#[cfg(feature = "huge-output")]
fn attack(msg: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    Ok(vec![publish("echo", msg, vec![b'x'; 100 << 20])])
}

#[cfg(feature = "many-outputs")]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    Ok((0..1_000_000)
        .map(|_| {
            Output::Log(LogEntry {
                level: LogLevel::Info,
                text: String::new(),
            })
        })
        .collect())
}

#[cfg(feature = "read-file")]
fn attack(msg: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    match std::fs::read("/etc/passwd") {
        Ok(stolen) => Ok(vec![publish("leak", msg, stolen)]),
        Err(e) => failed(format!("read /etc/passwd: {e}")),
    }
}

#[cfg(feature = "read-env")]
fn attack(msg: &Message, name: &str) -> Result<Vec<Output>, HandleError> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    match std::env::var(name) {
        Ok(stolen) => Ok(vec![publish("leak", msg, stolen.into_bytes())]),
        _ if !vars.is_empty() || !args.is_empty() => Ok(vec![publish(
            "leak",
            msg,
            format!("{vars:?} {args:?}").into_bytes(),
        )]),
        Err(e) => failed(format!(
            "env {name}: {e}; {} variables, {} arguments",
            vars.len(),
            args.len()
        )),
    }
}

#[cfg(feature = "socket")]
fn attack(msg: &Message, address: &str) -> Result<Vec<Output>, HandleError> {
    match std::net::TcpStream::connect(address) {
        Ok(_) => Ok(vec![publish("leak", msg, address.as_bytes().to_vec())]),
        Err(e) => failed(format!("connect {address}: {e}")),
    }
}

#[cfg(feature = "chatty")]
fn attack(msg: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    let line = "y".repeat(1023);
    for _ in 0..1024 {
        println!("{line}");
    }
    Ok(vec![publish("echo", msg, msg.payload.clone())])
}

#[cfg(feature = "clock-random")]
fn attack(msg: &Message, millis: &str) -> Result<Vec<Output>, HandleError> {
    use wasip2::clocks::{monotonic_clock, wall_clock};
    use wasip2::random::{insecure, random};
    let wall = wall_clock::now();
    let started = monotonic_clock::now();
    // A millisecond until an instant, then `attack:<ms>` or ten seconds, well
    // past any deadline: only virtual time lets that end.
    monotonic_clock::subscribe_instant(started + 1_000_000).block();
    let millis: u64 = millis.parse().unwrap_or(10_000);
    monotonic_clock::subscribe_duration(millis * 1_000_000).block();
    let slept = monotonic_clock::now();
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let observed = format!(
        "wall={}.{:09} monotonic-start={started} monotonic-after-sleep={slept} random={} insecure={} std-time={:?}",
        wall.seconds,
        wall.nanoseconds,
        hex(random::get_random_bytes(16)),
        hex(insecure::get_insecure_random_bytes(16)),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
    );
    Ok(vec![publish("observed", msg, observed.into_bytes())])
}

#[cfg(feature = "panic")]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    panic!("test-hostile: panic on every call")
}

#[cfg(not(any(
    feature = "loop",
    feature = "memory-bomb",
    feature = "recursion",
    feature = "huge-output",
    feature = "many-outputs",
    feature = "read-file",
    feature = "read-env",
    feature = "socket",
    feature = "chatty",
    feature = "clock-random",
    feature = "panic"
)))]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    failed("no attack built in".into())
}

export!(Hostile);
