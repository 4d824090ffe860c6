//! A handler that schedules and cancels timers as its messages say, one
//! command per line of the payload:
//!
//! - `schedule <id> <delay ms> <topic> <payload>`: publish `<payload>` to
//!   `<topic>` (keyed by the message's key) `<delay ms>` after the message's
//!   timestamp;
//! - `at <id> <due ms> <topic> <payload>`: the same at an absolute time;
//! - `cancel <id>`.
//!
//! Anything else is invalid input.

wit_bindgen::generate!({ world: "handler", path: "../../wit" });

use exports::sluice::handler::handle::Guest;
use sluice::handler::types::{HandleError, Header, Message, Output, Publish, Schedule};

struct Timers;

impl Guest for Timers {
    fn handle(msg: Message) -> Result<Vec<Output>, HandleError> {
        let text = String::from_utf8(msg.payload)
            .map_err(|_| HandleError::InvalidInput("not UTF-8".into()))?;
        let invalid = |line: &str| HandleError::InvalidInput(format!("cannot read {line:?}"));
        let mut outputs = Vec::new();
        for line in text.lines() {
            let mut words = line.splitn(5, ' ');
            let output = match words.next() {
                Some(command @ ("schedule" | "at")) => {
                    let (Some(id), Some(time), Some(topic), payload) =
                        (words.next(), words.next(), words.next(), words.next())
                    else {
                        return Err(invalid(line));
                    };
                    let time: u64 = time.parse().map_err(|_| invalid(line))?;
                    let due = match command {
                        "schedule" => msg.timestamp + time,
                        _ => time,
                    };
                    Output::Schedule(Schedule {
                        id: id.into(),
                        due,
                        publish: Publish {
                            topic: topic.into(),
                            key: msg.key.clone(),
                            payload: payload.unwrap_or_default().as_bytes().to_vec(),
                            headers: vec![Header {
                                name: "scheduled-at-offset".into(),
                                value: msg.offset.to_string().into_bytes(),
                            }],
                        },
                    })
                }
                Some("cancel") => Output::Cancel(words.next().ok_or_else(|| invalid(line))?.into()),
                _ => return Err(invalid(line)),
            };
            outputs.push(output);
        }
        Ok(outputs)
    }
}

export!(Timers);
