//! What the long-lived Kafka clients (the consumer, the producers) say,
//! said once. librdkafka reports a broker it cannot reach three ways (a
//! `FAIL` log line, a global error, and an error from every consumer poll)
//! and again on every reconnect attempt, about 20 times a second: an
//! unreachable broker wrote ~700 lines in 15 s. Here each kind of error is
//! logged as `Repeats` admits it (when first seen, then at most once per
//! 30 s with the count held back meanwhile), and brokers answering again
//! are said once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::repeats::Repeats;

/// A client's logs, with repeats held back.
pub(crate) struct ClientLogs {
    /// Which client: `consumer` or `producer`.
    client: &'static str,
    /// Each kind's repeats held back.
    said: Mutex<HashMap<String, Repeats>>,
    /// Since when the brokers have not answered, and the errors since.
    down: Mutex<Option<(Instant, u64)>>,
}

impl ClientLogs {
    pub(crate) fn new(client: &'static str) -> Self {
        ClientLogs {
            client,
            said: Mutex::default(),
            down: Mutex::default(),
        }
    }

    /// The brokers answered (a query of the consumer's succeeded): if they
    /// had not been, that is said once, with how long and how many errors.
    pub(crate) fn answered(&self) {
        let Some((since, errors)) = self.down.lock().expect("client logs lock").take() else {
            return;
        };
        self.said.lock().expect("client logs lock").clear();
        tracing::info!(
            client = self.client,
            down_ms = since.elapsed().as_millis() as u64,
            errors,
            "kafka brokers answer again"
        );
    }

    /// A client error: from librdkafka's error callback, with its reason
    /// (which broker, what failed), or from a consumer poll, without.
    /// librdkafka recovers from all but fatal ones by itself, hence a warning.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        {
            let mut down = self.down.lock().expect("client logs lock");
            let (_, errors) = down.get_or_insert_with(|| (Instant::now(), 0));
            *errors += 1;
        }
        let Some(held_back) = self.admit(format!("{code:?}")) else {
            return;
        };
        if code == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(client = self.client, %error, reason, held_back, "kafka client failed");
        } else {
            tracing::warn!(client = self.client, %error, reason, held_back, "kafka client error; retrying");
        }
    }

    /// A librdkafka log line. `FAIL` lines say again what the error that
    /// follows them says, so they are kept for debugging.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let client = self.client;
        match level {
            _ if facility == "FAIL" => tracing::debug!(client, facility, "{message}"),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Some(held_back) = self.admit(facility.to_owned()) {
                    tracing::error!(client, facility, held_back, "{message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                if let Some(held_back) = self.admit(facility.to_owned()) {
                    tracing::warn!(client, facility, held_back, "{message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(client, facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(client, facility, "{message}"),
        }
    }

    /// Whether `kind` is to be logged now: if so, how many of it were held
    /// back since it last was.
    fn admit(&self, kind: String) -> Option<u64> {
        let mut said = self.said.lock().expect("client logs lock");
        said.entry(kind).or_default().admit()
    }
}

/// A producer's client context: its logs, said once.
pub(crate) struct ProducerContext(ClientLogs);

impl Default for ProducerContext {
    fn default() -> Self {
        ProducerContext(ClientLogs::new("producer"))
    }
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::repeats::REPEAT_EVERY;

    #[test]
    fn a_kind_is_said_once_then_again_with_its_repeats_after_the_interval() {
        let logs = ClientLogs::new("consumer");
        assert_eq!(logs.admit("AllBrokersDown".into()), Some(0));
        for _ in 0..5 {
            assert_eq!(logs.admit("AllBrokersDown".into()), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(logs.admit("BrokerTransportFailure".into()), Some(0));
        // As if the interval had passed.
        let mut said = logs.said.lock().unwrap();
        let last = &mut said.get_mut("AllBrokersDown").unwrap().last;
        *last = last.map(|at| at - REPEAT_EVERY);
        drop(said);
        assert_eq!(logs.admit("AllBrokersDown".into()), Some(5));
        assert_eq!(logs.admit("AllBrokersDown".into()), None);
    }

    #[test]
    fn brokers_that_answer_again_are_said_once_and_errors_are_new_again() {
        let logs = ClientLogs::new("consumer");
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        logs.error(&down, "1/1 brokers are down");
        logs.error(&down, "1/1 brokers are down");
        assert_eq!(logs.down.lock().unwrap().map(|(_, n)| n), Some(2));
        logs.answered();
        assert!(logs.down.lock().unwrap().is_none());
        // The next outage is said at once, not held back by the last.
        assert_eq!(
            logs.admit(format!("{:?}", down.rdkafka_error_code())),
            Some(0)
        );
    }
}
