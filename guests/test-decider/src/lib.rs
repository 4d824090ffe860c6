//! A test decider whose payload says what to do: `<stream>:<action>`, with
//! stream `-` for none. Its state is the data of every event folded, joined
//! by `,`, so a test can see exactly what a decision was made on. Actions:
//! `add:<x>` appends an event `Added` with data `x`; `slow:<ms>:<x>` says
//! `deciding slowly` on stdout, sleeps `ms` (really, if the host is not
//! deterministic), then does `add:<x>`; `noop` appends nothing; `fail` and `reject` return that error from `decide`; `panic`
//! traps in `decide`; `poison` appends an event `Poison` that traps `fold`;
//! `fat:<mib>` appends an event `Fat` that `fold` turns into that many MiB
//! of state (a state larger than 4 KiB is published as its size);
//! `remind:<ms>` appends `Added` with data `remind` and also schedules timer
//! `remind:<stream>`, which publishes `<state>|reminded` to `decided` `ms`
//! after the message's timestamp.
//! Every decision publishes `<state>|<action>` to topic `decided`, keyed by
//! the stream.

wit_bindgen::generate!({ world: "decider", path: "../../wit" });

use exports::sluice::handler::decide::Guest;
use sluice::handler::types::{Decision, Event, HandleError, Message, Output, Publish, Schedule};

fn parse(msg: &Message) -> Result<(&str, &str), HandleError> {
    std::str::from_utf8(&msg.payload)
        .ok()
        .and_then(|text| text.split_once(':'))
        .ok_or_else(|| HandleError::InvalidInput("expected <stream>:<action>".into()))
}

fn event(kind: &str, data: &str) -> Event {
    Event {
        type_: kind.into(),
        data: data.as_bytes().to_vec(),
        metadata: b"test".to_vec(),
    }
}

struct TestDecider;

impl Guest for TestDecider {
    fn stream_id(msg: Message) -> Result<Option<String>, HandleError> {
        let (stream, _) = parse(&msg)?;
        Ok((stream != "-").then(|| stream.to_owned()))
    }

    fn initial() -> Vec<u8> {
        Vec::new()
    }

    fn fold(state: Vec<u8>, events: Vec<Event>) -> Vec<u8> {
        let mut state = state;
        for event in events {
            if event.type_ == "Poison" {
                panic!("fold met a poison event");
            }
            if event.type_ == "Fat" {
                let mib: usize = String::from_utf8_lossy(&event.data).parse().unwrap_or(1);
                state.resize(state.len() + (mib << 20), b'f');
                continue;
            }
            if !state.is_empty() {
                state.push(b',');
            }
            state.extend_from_slice(&event.data);
        }
        state
    }

    fn decide(msg: Message, state: Vec<u8>) -> Result<Decision, HandleError> {
        let (stream, action) = parse(&msg)?;
        let mut outputs = Vec::new();
        let events = match action.split_once(':') {
            Some(("add", x)) => vec![event("Added", x)],
            Some(("remind", ms)) => {
                let mut payload = state.clone();
                payload.extend_from_slice(b"|reminded");
                outputs.push(Output::Schedule(Schedule {
                    id: format!("remind:{stream}"),
                    due: msg.timestamp + ms.parse::<u64>().unwrap_or(0),
                    publish: Publish {
                        topic: "decided".into(),
                        key: Some(stream.as_bytes().to_vec()),
                        payload,
                        headers: Vec::new(),
                    },
                }));
                vec![event("Added", "remind")]
            }
            Some(("fat", mib)) => vec![event("Fat", mib)],
            Some(("slow", rest)) => {
                let (ms, x) = rest.split_once(':').unwrap_or((rest, ""));
                println!("deciding slowly");
                let ms = ms.parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                vec![event("Added", x)]
            }
            _ => match action {
                "noop" => Vec::new(),
                "poison" => vec![event("Poison", "")],
                "fail" => return Err(HandleError::Failed("asked to fail".into())),
                "reject" => return Err(HandleError::Rejected("asked to reject".into())),
                "panic" => panic!("decide asked to panic"),
                other => {
                    return Err(HandleError::InvalidInput(format!(
                        "unknown action {other:?}"
                    )));
                }
            },
        };
        let mut payload = match state.len() > 4096 {
            true => format!("{} bytes", state.len()).into_bytes(),
            false => state,
        };
        payload.push(b'|');
        payload.extend_from_slice(action.as_bytes());
        let output = Output::Publish(Publish {
            topic: "decided".into(),
            key: Some(stream.as_bytes().to_vec()),
            payload,
            headers: Vec::new(),
        });
        outputs.insert(0, output);
        Ok(Decision { events, outputs })
    }
}

export!(TestDecider);
