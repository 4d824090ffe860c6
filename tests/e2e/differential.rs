//! Differential testing of the three builds of every shop handler: payloads
//! no vector thought of, made by mutating the vectors' own (duplicated keys
//! whose earlier or later value is odd, retyped and extreme numbers, odd
//! escapes, deep nesting, bad UTF-8), and for the deciders generated
//! histories of mutated event data. `sluice replay` must give byte-identical
//! outcomes from the Rust, JavaScript and Python builds.
//!
//! Seeded: `SLUICE_DIFF_SEED=<n>` runs another seed (the seed is printed on
//! a failure), `SLUICE_DIFF_CASES=<n>` more cases per handler.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::support::*;

/// Each vector file and the handler version it specifies.
const HANDLERS: [(&str, &str); 5] = [
    ("order-shipped-email", "order-shipped-email/0.1.0.wasm"),
    ("cancel-order", "cancel-order/0.1.0.wasm"),
    ("cancel-order-decider", "cancel-order/0.2.0.wasm"),
    ("sku-coupon", "sku-coupon/0.1.0.wasm"),
    ("order-overdue", "order-overdue/0.1.0.wasm"),
];

/// splitmix64: small, and the same on every machine and every version of
/// everything, so a seed names the same cases forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// JSON text the builds have been seen to read differently, or could:
/// numbers at the edges of f64, u64 and i64, escapes of surrogates (paired,
/// lone, and a backslash that only looks like one), every type.
const ODD: &[&str] = &[
    "99.99999999999999",
    "0.49999999999999994",
    "1.7976931348623157e308",
    "1e308",
    "1e309",
    "-1e400",
    "1e-400",
    "5e-324",
    "2.2250738585072014e-308",
    "-0",
    "-0.0",
    "0.0",
    "1E2",
    "1.0",
    "100.0",
    "0.1",
    "0.5",
    "1",
    "0",
    "100",
    "101",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "\"\\ud800\"",
    "\"\\udc00x\"",
    "\"a\\ud83d\\ude00\"",
    "\"\\\\ud800\"",
    "\"\\u0000\"",
    "\"\\/\"",
    "\"\\u00e9t\\u00e9\"",
    "\"\"",
    "\" \"",
    "\"__proto__\"",
    "\"constructor\"",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1,\"a\"]",
    "{\"a\":1}",
];

/// A JSON document with one change somewhere in it, as text.
struct Mutation {
    /// The preorder index of the value changed.
    target: usize,
    kind: Change,
}

enum Change {
    /// The value becomes this text.
    Replace(String),
    /// (An object member) the member comes twice: first with this text,
    /// then as it was, or the other way round.
    Duplicate { odd: String, odd_first: bool },
    /// The value inside this many arrays.
    Nest(usize),
    /// (An object member) its key written with `\u` escapes.
    EscapeKey,
}

/// `value` as JSON text, with `mutation` applied where its target is.
fn emit(value: &Value, mutation: &Mutation) -> String {
    let mut out = String::new();
    let mut index = 0;
    emit_value(value, None, mutation, &mut index, &mut out);
    out
}

fn emit_value(
    value: &Value,
    key: Option<&str>,
    mutation: &Mutation,
    index: &mut usize,
    out: &mut String,
) {
    let here = *index == mutation.target;
    *index += 1;
    let plain = |out: &mut String, index: &mut usize| match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                emit_value(item, None, mutation, index, out);
            }
            out.push(']');
        }
        Value::Object(members) => emit_object(members, mutation, index, out),
        other => out.push_str(&other.to_string()),
    };
    let key_text = |escaped: bool| match key {
        Some(key) if escaped => {
            let mut text = String::from("\"");
            for c in key.chars() {
                let _ = write!(text, "\\u{:04x}", c as u32);
            }
            text + "\":"
        }
        Some(key) => format!("{}:", Value::String(key.to_owned())),
        None => String::new(),
    };
    if !here {
        out.push_str(&key_text(false));
        return plain(out, index);
    }
    match &mutation.kind {
        Change::Replace(text) => {
            out.push_str(&key_text(false));
            out.push_str(text);
            // The values inside are skipped, but still counted.
            plain(&mut String::new(), index);
        }
        Change::Duplicate { odd, odd_first } => {
            let mut original = String::new();
            plain(&mut original, index);
            let key = key_text(false);
            let (first, second) = match odd_first {
                true => (odd, &original),
                false => (&original, odd),
            };
            match key.is_empty() {
                // Not a member: an array of both.
                true => {
                    let _ = write!(out, "[{first},{second}]");
                }
                false => {
                    let _ = write!(out, "{key}{first},{key}{second}");
                }
            }
        }
        Change::Nest(depth) => {
            out.push_str(&key_text(false));
            out.push_str(&"[".repeat(*depth));
            plain(out, index);
            out.push_str(&"]".repeat(*depth));
        }
        Change::EscapeKey => {
            out.push_str(&key_text(true));
            plain(out, index);
        }
    }
}

fn emit_object(
    members: &Map<String, Value>,
    mutation: &Mutation,
    index: &mut usize,
    out: &mut String,
) {
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        emit_value(value, Some(key), mutation, index, out);
    }
    out.push('}');
}

/// How many values `value` holds, itself included.
fn size(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Object(members) => members.values().map(size).sum(),
        _ => 0,
    }
}

/// Every string and number in the vectors: plausible values, so that a
/// mutated document gets past the first check more often.
fn scalars(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| scalars(v, into)),
        Value::Object(members) => members.values().for_each(|v| scalars(v, into)),
        Value::String(_) | Value::Number(_) => into.push(value.to_string()),
        _ => {}
    }
}

/// One to three mutations of `base`, as bytes; sometimes bytes that are
/// not UTF-8 (`utf8` false allows it).
fn mutate(rng: &mut Rng, base: &Value, plausible: &[String], utf8: bool) -> Vec<u8> {
    let mut text = base.to_string();
    for _ in 0..1 + rng.below(3) {
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            break;
        };
        let odd = |rng: &mut Rng| match rng.chance(60) {
            true => rng.pick(ODD).to_string(),
            false => rng.pick(plausible).clone(),
        };
        let kind = match rng.below(10) {
            0..=3 => Change::Replace(odd(rng)),
            4..=6 => Change::Duplicate {
                odd: odd(rng),
                odd_first: rng.chance(50),
            },
            7 => Change::Nest(*rng.pick(&[1, 125, 126, 127, 128, 200])),
            _ => Change::EscapeKey,
        };
        let mutation = Mutation {
            target: rng.below(size(&value)),
            kind,
        };
        text = emit(&value, &mutation);
    }
    let mut bytes = text.into_bytes();
    match rng.below(12) {
        0 if !utf8 => {
            let at = rng.below(bytes.len() + 1);
            let bad: &[&[u8]] = &[b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"];
            bytes.splice(at..at, rng.pick(bad).iter().copied());
        }
        1 => bytes.splice(0..0, "\u{feff}".bytes()).for_each(drop),
        2 => {
            let tails: &[&[u8]] = &[b" \n\t", b"x", b",", b"{}"];
            let tail: &[u8] = rng.pick::<&[u8]>(tails);
            bytes.extend_from_slice(tail);
        }
        _ => {}
    }
    bytes
}

/// The vectors of a handler: their lines, read as JSON.
fn vectors(name: &str) -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(repo().join(format!("tests/vectors/{name}.jsonl"))).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A vector's payload as a JSON document, if it is one.
fn document(vector: &Map<String, Value>) -> Option<Value> {
    match vector.get("payload")? {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => Some(other.clone()),
    }
}

/// `count` cases for the handler of `name`, as JSONL replay input.
fn cases(name: &str, rng: &mut Rng, count: usize) -> String {
    let vectors = vectors(name);
    let bases: Vec<(&Map<String, Value>, Value)> = vectors
        .iter()
        .filter_map(|v| Some((v, document(v)?)))
        .collect();
    let mut plausible = Vec::new();
    let mut events: Vec<(String, Value)> = Vec::new();
    for (vector, base) in &bases {
        scalars(base, &mut plausible);
        for event in vector
            .get("history")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = event["type"].as_str().unwrap().to_owned();
            events.push((kind, event.get("data").cloned().unwrap_or(Value::Null)));
        }
    }
    // Every event kind a decider's vectors use, with each kind's data.
    let mut emitted = Vec::new();
    for (vector, _) in &bases {
        if let Some(expect) = vector.get("expect") {
            for event in expect["events"].as_array().into_iter().flatten() {
                let data = event["data"].as_str().unwrap_or("null");
                let data = serde_json::from_str(data).unwrap_or(Value::Null);
                emitted.push((event["type"].as_str().unwrap().to_owned(), data));
            }
        }
    }
    events.extend(emitted);
    let decider = vectors.iter().any(|v| v.contains_key("history"));
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::new();
    for _ in 0..count {
        let (vector, base) = rng.pick(&bases);
        let mut line = Map::new();
        line.insert("topic".into(), vector["topic"].clone());
        for field in ["key", "timestamp"] {
            if let Some(value) = vector.get(field) {
                line.insert(field.into(), value.clone());
            }
        }
        let payload = match rng.chance(90) {
            true => mutate(rng, base, &plausible, false),
            false => base.to_string().into_bytes(),
        };
        line.insert("payload-base64".into(), encode(&payload).into());
        if decider && !events.is_empty() {
            let history: Vec<Value> = (0..rng.below(4))
                .map(|_| {
                    let (kind, data) = rng.pick(&events);
                    let data = match rng.chance(70) {
                        true => String::from_utf8(mutate(rng, data, &plausible, true)).unwrap(),
                        false => data.to_string(),
                    };
                    serde_json::json!({"type": kind, "data": data})
                })
                .collect();
            line.insert("history".into(), history.into());
        }
        out.push_str(&Value::Object(line).to_string());
        out.push('\n');
    }
    out
}

fn replay(handler: &Path, input: &Path) -> String {
    succeed(
        sluice()
            .args(["replay", "--handler"])
            .arg(handler)
            .arg("--input")
            .arg(input)
            .arg("--artifact-cache")
            .arg(shared_artifact_cache())
            // What is compared is meaning, not speed: a first call on a
            // busy machine may take more than the default second.
            .args(["--deadline-ms", "30000"]),
    )
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap())
}

#[test]
fn every_build_of_every_shop_handler_reads_mutated_inputs_the_same() {
    let seed = env_or("SLUICE_DIFF_SEED", 18);
    let count = env_or("SLUICE_DIFF_CASES", 300) as usize;
    let scratch = Scratch::new();
    let mut report = String::new();
    for (name, handler) in HANDLERS {
        let mut rng = Rng(seed ^ name.len() as u64);
        let input = scratch.write(&format!("{name}.jsonl"), cases(name, &mut rng, count));
        let lines: Vec<String> = std::fs::read_to_string(&input)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let outcomes: Vec<(&str, String)> = dists()
            .iter()
            .map(|(language, dist)| (*language, replay(&dist.join(handler), &input)))
            .collect();
        let rust: Vec<&str> = outcomes[0].1.lines().collect();
        assert_eq!(rust.len(), count, "{name}: one outcome per case");
        let mut outcome_kinds = std::collections::BTreeSet::new();
        for line in &rust {
            let value: Value = serde_json::from_str(line).unwrap();
            let kind = match value.get("error") {
                Some(error) => format!("error {}", error["kind"]),
                None => "outputs".into(),
            };
            outcome_kinds.insert(kind);
        }
        // The cases reach the handlers' logic, not only their JSON parser.
        assert!(
            outcome_kinds.contains("outputs") && outcome_kinds.len() >= 2,
            "{name}: {outcome_kinds:?}"
        );
        for (language, text) in &outcomes[1..] {
            let theirs: Vec<&str> = text.lines().collect();
            assert_eq!(
                theirs.len(),
                count,
                "{name} {language}: one outcome per case"
            );
            let differing: Vec<usize> = (0..count).filter(|&i| rust[i] != theirs[i]).collect();
            for &i in differing.iter().take(5) {
                let _ = writeln!(
                    report,
                    "{name} {language} case {i}:\n  input  {}\n  rust   {}\n  {language:<6} {}",
                    lines[i], rust[i], theirs[i]
                );
            }
            if !differing.is_empty() {
                let _ = writeln!(
                    report,
                    "{name} {language}: {} of {count} outcomes differ from rust\n",
                    differing.len()
                );
            }
        }
    }
    assert!(report.is_empty(), "seed {seed}:\n{report}");
}
