//! A decider built against the frozen 0.3.0 contract, to prove the host
//! keeps running deciders built before timers: each message's key is its
//! stream, its payload an event `Added`; each decision publishes the state
//! it was made on (the payloads so far, joined by `,`) and the new payload
//! to topic `decided-v0-3`.

wit_bindgen::generate!({ world: "decider", path: "../../wit/archive/0.3.0" });

use exports::sluice::handler::decide::Guest;
use sluice::handler::types::{Decision, Event, HandleError, Message, Output, Publish};

struct Legacy;

impl Guest for Legacy {
    fn stream_id(msg: Message) -> Result<Option<String>, HandleError> {
        Ok(msg.key.map(|k| String::from_utf8_lossy(&k).into_owned()))
    }

    fn initial() -> Vec<u8> {
        Vec::new()
    }

    fn fold(mut state: Vec<u8>, events: Vec<Event>) -> Vec<u8> {
        for event in events {
            if !state.is_empty() {
                state.push(b',');
            }
            state.extend_from_slice(&event.data);
        }
        state
    }

    fn decide(msg: Message, state: Vec<u8>) -> Result<Decision, HandleError> {
        let mut payload = state;
        payload.push(b'+');
        payload.extend_from_slice(&msg.payload);
        Ok(Decision {
            events: vec![Event {
                type_: "Added".into(),
                data: msg.payload,
                metadata: Vec::new(),
            }],
            outputs: vec![Output::Publish(Publish {
                topic: "decided-v0-3".into(),
                key: msg.key,
                payload,
                headers: Vec::new(),
            })],
        })
    }
}

export!(Legacy);
