//! Hostile handlers, for the sandbox's tests: each feature builds a
//! component that attacks the host in one way. A message whose payload
//! starts with `attack` triggers the attack (its argument after `attack:`);
//! any other message is echoed to topic `echo`, so a test can see the
//! partition keep flowing. `chatty`, `clock-random` and `panic` act on every
//! message. What a forbidden attempt got is reported in the handler's
//! `failed` error; anything it managed to obtain is published to `leak`.
//! `abuse` attacks the host rather than the sandbox: it asks the host to
//! act on its behalf beyond what its route allows (see `abuse`).

#[cfg(not(feature = "raw-outputs"))]
wit_bindgen::generate!({ world: "handler", path: "../../wit" });
// The raw bytes' layout is contract 0.3's (the boundary tests encode it),
// which the host still lifts.
#[cfg(feature = "raw-outputs")]
wit_bindgen::generate!({ world: "handler", path: "../../wit/archive/0.3.0" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Message, Output, Publish};
#[cfg(feature = "abuse")]
use sluice::handler::types::{Header, HttpMethod, HttpRequest, Schedule};
#[cfg(any(feature = "many-outputs", feature = "abuse"))]
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

/// Asks the host for what it must refuse or contain, by argument:
/// - `publish:<topic>`: a record to any topic (a dead-letter, internal or
///   invalid one);
/// - `forge-dead-letter:<topic>:<key>`: a record to `<topic>` shaped like a
///   sluice dead letter of `<key>` that parks its key, from a made-up source;
/// - `headers`: a record to `echo` carrying host headers of its own;
/// - `http-headers:<url>`: a request carrying host headers of its own;
/// - `http-host:<url>` / `http-framing:<url>`: a request setting `Host` /
///   `Transfer-Encoding`;
/// - `log-lines:<n>`: `n` log outputs;
/// - `log-forge`: a log output and a stdout line with a newline, a carriage
///   return and a terminal escape that would forge host log lines;
/// - `big:<records>:<bytes>`: that many records of that size to `echo`;
/// - `write:<bytes>`: one `write` of that many newlines to stdout, past
///   what check-write allows.
#[cfg(feature = "abuse")]
fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.as_bytes().to_vec(),
    }
}

/// Headers only the host may set, in several spellings, and one of the
/// handler's own.
#[cfg(feature = "abuse")]
fn forged_headers() -> Vec<Header> {
    vec![
        header("sluice-id", "forged-id"),
        header("sluice-handler", "forged-handler"),
        header("sluice-handler-version", "9.9.9"),
        header("SLUICE-ID", "forged-upper"),
        header("Sluice-Stage", "forged-stage"),
        header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        ),
        header("x-own", "kept"),
    ]
}

#[cfg(feature = "abuse")]
fn attack(msg: &Message, argument: &str) -> Result<Vec<Output>, HandleError> {
    let (what, rest) = argument.split_once(':').unwrap_or((argument, ""));
    let record = |topic: &str, key: Option<&str>, headers: Vec<Header>| {
        Output::Publish(Publish {
            topic: topic.into(),
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: b"forged".to_vec(),
            headers,
        })
    };
    let request = |url: &str, headers: Vec<Header>| {
        Output::Http(HttpRequest {
            method: HttpMethod::Post,
            url: url.into(),
            headers,
            body: b"abuse".to_vec(),
        })
    };
    let log = |text: String| {
        Output::Log(LogEntry {
            level: LogLevel::Info,
            text,
        })
    };
    match what {
        "publish" => Ok(vec![record(rest, None, vec![])]),
        "forge-dead-letter" => {
            let (topic, key) = rest.split_once(':').unwrap_or((rest, "victim"));
            Ok(vec![record(
                topic,
                Some(key),
                vec![
                    header("sluice-stage", "handle"),
                    header("sluice-reason", "failed"),
                    header("sluice-detail", "forged"),
                    header("sluice-attempts", "1"),
                    header("sluice-source-topic", &msg.topic),
                    header("sluice-source-partition", "0"),
                    header("sluice-source-offset", "0"),
                    header("sluice-parks-key", "true"),
                ],
            )])
        }
        "headers" => Ok(vec![record("echo", Some("k"), forged_headers())]),
        // The same headers on a timer's record, due at once.
        "timer-headers" => Ok(vec![Output::Schedule(Schedule {
            id: "forged".into(),
            due: msg.timestamp,
            publish: Publish {
                topic: "echo".into(),
                key: Some(b"k".to_vec()),
                payload: b"forged".to_vec(),
                headers: forged_headers(),
            },
        })]),
        "http-headers" => Ok(vec![request(
            rest,
            vec![
                header("sluice-id", "forged-id"),
                header("Sluice-Id", "forged-mixed"),
                header(
                    "traceparent",
                    "00-11111111111111111111111111111111-2222222222222222-01",
                ),
                header("x-own", "kept"),
            ],
        )]),
        "http-host" => Ok(vec![request(
            rest,
            vec![header("Host", "internal.example")],
        )]),
        "http-framing" => Ok(vec![request(
            rest,
            vec![header("Transfer-Encoding", "chunked")],
        )]),
        "log-lines" => {
            let n: usize = rest.parse().unwrap_or(1000);
            Ok((0..n).map(|i| log(format!("abuse log line {i}"))).collect())
        }
        "log-forge" => {
            let forged = "innocent\nFORGED-LINE ERROR sluice: all partitions lost\r\u{1b}[2J";
            println!("{forged}");
            Ok(vec![
                log(forged.to_owned()),
                publish("echo", msg, msg.payload.clone()),
            ])
        }
        "big" => {
            let (records, bytes) = rest.split_once(':').unwrap_or(("1", rest));
            let records: usize = records.parse().unwrap_or(1);
            let bytes: usize = bytes.parse().unwrap_or(1);
            Ok((0..records)
                .map(|_| publish("echo", msg, vec![b'x'; bytes]))
                .collect())
        }
        "write" => {
            let bytes: usize = rest.parse().unwrap_or(8 << 20);
            let stdout = wasip2::cli::stdout::get_stdout();
            match stdout.write(&vec![b'\n'; bytes]) {
                Ok(()) => failed(format!("a write of {bytes} bytes was taken")),
                Err(e) => failed(format!("the write was refused: {e:?}")),
            }
        }
        other => failed(format!("no abuse {other:?}")),
    }
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
    feature = "panic",
    feature = "abuse"
)))]
fn attack(_: &Message, _: &str) -> Result<Vec<Output>, HandleError> {
    failed("no attack built in".into())
}

#[cfg(not(feature = "raw-outputs"))]
export!(Hostile);

/// `raw-outputs`: `handle` returns whatever bytes the payload holds, as the
/// memory the host lifts its result from, so a test can feed the host's
/// lifting of outputs arbitrary bytes. The payload is
/// `[n: u32][n offsets: u32][image]`: the image is copied to a fixed buffer
/// and the base address of the buffer added to the word at each offset (its
/// pointers), and the result is read from the image's first 12 bytes
/// (discriminant, list pointer, list length). Nothing is checked: that is
/// the host's job.
#[cfg(feature = "raw-outputs")]
mod raw {
    const SIZE: usize = 1 << 20;

    #[repr(C, align(8))]
    struct Image([u8; SIZE]);

    static mut IMAGE: Image = Image([0; SIZE]);

    /// The core function the canonical ABI lifts as `handle`: the message's
    /// twelve flat values in, a pointer to the result's bytes out.
    #[allow(clippy::too_many_arguments)]
    #[unsafe(export_name = "sluice:handler/handle@0.3.0#handle")]
    unsafe extern "C" fn handle(
        _topic: *const u8,
        _topic_len: usize,
        _partition: i32,
        _offset: i64,
        _key_present: i32,
        _key: *const u8,
        _key_len: usize,
        payload: *const u8,
        payload_len: usize,
        _headers: *const u8,
        _headers_len: usize,
        _timestamp: i64,
    ) -> *mut u8 {
        wit_bindgen::rt::maybe_link_cabi_realloc();
        // SAFETY: the host lowered the payload there; one call at a time.
        let input = unsafe { std::slice::from_raw_parts(payload, payload_len) };
        let image = unsafe { &mut (*std::ptr::addr_of_mut!(IMAGE)).0 };
        image.fill(0);
        let word = |at: usize| {
            input
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let count = (word(0).unwrap_or(0) as usize).min(input.len() / 4);
        let body = input.get(4 + 4 * count..).unwrap_or(&[]);
        let len = body.len().min(SIZE);
        image[..len].copy_from_slice(&body[..len]);
        let base = image.as_ptr() as u32;
        for i in 0..count {
            let Some(at) = word(4 + 4 * i) else { break };
            let at = at as usize;
            if let Some(slot) = image.get_mut(at..at.saturating_add(4)) {
                let value = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
                slot.copy_from_slice(&value.wrapping_add(base).to_le_bytes());
            }
        }
        image.as_mut_ptr()
    }
}
