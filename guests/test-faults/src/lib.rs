//! A test handler that misbehaves on demand, so the host's containment can be
//! tested with a real component. The payload selects the behaviour:
//! `panic` traps, `loop` never returns, `oom` allocates without bound,
//! `invalid`/`reject`/`fail` return that error, `spin:<ms>` busy-waits that
//! long and then echoes, `http:<url>` POSTs the payload to the URL (and
//! publishes nothing), `big:<bytes>` publishes a payload of that size to
//! `echo`, `ignore` returns no outputs; anything else is echoed to topic
//! `echo` with the same key and headers, plus an `instance-calls` header
//! counting the calls this instance has served (1 on a fresh instance).

wit_bindgen::generate!({ world: "handler", path: "../../wit/archive/0.2.0" });

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{
    HandleError, Header, HttpMethod, HttpRequest, LogEntry, LogLevel, Message, Output, Publish,
};

/// Calls served by this instance: instance memory starts fresh with it.
static CALLS: AtomicU32 = AtomicU32::new(0);

struct TestFaults;

impl Guest for TestFaults {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(ms) = msg.payload.strip_prefix(b"spin:") {
            let ms: u64 = std::str::from_utf8(ms)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .ok_or_else(|| HandleError::InvalidInput("spin:<ms> wants a number".into()))?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(ms) {
                std::hint::spin_loop();
            }
        }
        if let Some(url) = msg.payload.strip_prefix(b"http:") {
            let url = String::from_utf8(url.to_vec())
                .map_err(|_| HandleError::InvalidInput("http:<url> wants a UTF-8 URL".into()))?;
            return Ok(vec![Output::Http(HttpRequest {
                method: HttpMethod::Post,
                url,
                headers: msg.headers,
                body: msg.payload,
            })]);
        }
        if let Some(size) = msg.payload.strip_prefix(b"big:") {
            let size: usize = std::str::from_utf8(size)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| HandleError::InvalidInput("big:<bytes> wants a number".into()))?;
            return Ok(vec![Output::Publish(Publish {
                topic: "echo".into(),
                key: msg.key,
                payload: vec![b'x'; size],
                headers: msg.headers,
            })]);
        }
        match msg.payload.as_slice() {
            b"panic" => panic!("test-faults: panic requested"),
            b"loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            b"oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"ignore" => Ok(vec![]),
            b"invalid" => Err(HandleError::InvalidInput("invalid requested".into())),
            b"reject" => Err(HandleError::Rejected("rejection requested".into())),
            b"fail" => Err(HandleError::Failed("failure requested".into())),
            _ => {
                println!("echo {} bytes", msg.payload.len());
                let mut headers = msg.headers;
                headers.push(Header {
                    name: "instance-calls".into(),
                    value: calls.to_string().into_bytes(),
                });
                Ok(vec![
                    Output::Publish(Publish {
                        topic: "echo".into(),
                        key: msg.key,
                        payload: msg.payload,
                        headers,
                    }),
                    Output::Log(LogEntry {
                        level: LogLevel::Debug,
                        text: format!("echoed offset {}", msg.offset),
                    }),
                ])
            }
        }
    }
}

export!(TestFaults);
