//! What a route lets its handler reach through the host. A handler cannot
//! escape its sandbox, but every output it returns is the host acting on
//! its behalf: so each publish must name a topic Kafka accepts, on the
//! route's `publish-to` list and not reserved (dead-letter, shadow-diff,
//! Kafka-internal), and each HTTP request must go to an allowed host with
//! headers a handler may set (`http::HttpClient::check`). All of a
//! message's outputs are checked before any of them runs; a refusal is
//! permanent (dead-lettered at once, never retried, never held against a
//! target's breaker).

use std::sync::Arc;

use super::http::HttpClient;
use super::{EffectError, Failure};
use crate::config::Route;
use crate::contract::Output;
use crate::topics::{self, ReservedTopics, TopicPattern};
use crate::wire::Reason;

/// A route's grants.
pub(crate) struct Authority {
    publish_to: Vec<TopicPattern>,
    reserved: Arc<ReservedTopics>,
    /// An exactly-once route can only publish: a transaction cannot undo
    /// an HTTP request.
    transactional: bool,
}

impl Authority {
    /// The grants of `route` (its `publish-to` list was checked when the
    /// config was loaded).
    pub(crate) fn new(route: &Route, reserved: Arc<ReservedTopics>, transactional: bool) -> Self {
        Authority {
            publish_to: route
                .publish_to()
                .iter()
                .filter_map(|entry| TopicPattern::parse(entry).ok())
                .collect(),
            reserved,
            transactional,
        }
    }

    /// Whether every one of `outputs` is within the route's grants; the
    /// first that is not, as the failure that dead-letters its message.
    pub(crate) fn check(&self, outputs: &[Output], http: &HttpClient) -> Result<(), Failure> {
        let refused = |error| match error {
            EffectError::Permanent { reason, detail } => Failure {
                reason,
                detail,
                attempts: 0,
            },
            EffectError::Transient(detail) => unreachable!("a check is never transient: {detail}"),
        };
        for output in outputs {
            match output {
                Output::Log(_) => {}
                Output::Publish(record) => self.publish(&record.topic).map_err(refused)?,
                Output::Http(request) if self.transactional => {
                    return Err(not_transactional(format!(
                        "{} {}",
                        request.method.as_str(),
                        request.url
                    )));
                }
                Output::Http(request) => {
                    http.check(request).map_err(refused)?;
                }
                Output::Schedule(schedule) if self.transactional => {
                    return Err(not_transactional(format!("timer {:?}", schedule.id)));
                }
                Output::Cancel(id) if self.transactional => {
                    return Err(not_transactional(format!("cancelling timer {id:?}")));
                }
                Output::Schedule(schedule) => {
                    timer_id(&schedule.id).map_err(refused)?;
                    self.publish(&schedule.publish.topic).map_err(refused)?;
                }
                Output::Cancel(id) => timer_id(id).map_err(refused)?,
            }
        }
        Ok(())
    }

    /// Whether a handler may publish to `topic` (now, or when a timer fires).
    fn publish(&self, topic: &str) -> Result<(), EffectError> {
        if let Some(problem) = topics::name_problem(topic) {
            return Err(EffectError::Permanent {
                reason: Reason::InvalidTopic,
                detail: format!("topic {topic:?}: {problem}"),
            });
        }
        if let Some(why) = self.reserved.reason(topic) {
            return Err(EffectError::Permanent {
                reason: Reason::TopicReserved,
                detail: format!("{topic:?} is {why}: no handler may publish there"),
            });
        }
        if !self.publish_to.iter().any(|p| p.matches(topic)) {
            let allowed: Vec<String> = self.publish_to.iter().map(|p| format!("\"{p}\"")).collect();
            return Err(EffectError::Permanent {
                reason: Reason::TopicNotAllowed,
                detail: format!(
                    "{topic:?} is not on the route's publish-to list [{}]",
                    allowed.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// The failure of an output an exactly-once route cannot take: a
/// transaction can undo publishes only (an HTTP request is sent, a timer is
/// kept in the store, outside it).
fn not_transactional(what: String) -> Failure {
    Failure {
        reason: Reason::NotTransactional,
        detail: format!(
            "an exactly-once route can only publish; {what} cannot be undone by a transaction"
        ),
        attempts: 0,
    }
}

/// The longest timer id, in bytes: it is a key of the store's table.
pub(crate) const MAX_TIMER_ID: usize = 512;

/// Whether `id` can name a timer.
fn timer_id(id: &str) -> Result<(), EffectError> {
    // PostgreSQL's text refuses NUL: kept, such an id would fail every
    // write as if the store were down.
    let problem = match id.len() {
        0 => "is empty",
        n if n > MAX_TIMER_ID => "is longer than 512 bytes",
        _ if id.contains('\0') => "holds a NUL character",
        _ => return Ok(()),
    };
    Err(EffectError::Permanent {
        reason: Reason::InvalidTimer,
        detail: format!("timer id {:?} {problem}", truncate(id)),
    })
}

/// At most 64 bytes of `text`, for a message.
fn truncate(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpPolicy;
    use crate::contract::{Header, HttpMethod, HttpRequest, LogEntry, LogLevel, Publish, Schedule};

    fn authority(publish_to: &[&str], transactional: bool) -> Authority {
        let mut route: Route = toml::from_str("topic = \"in\"\nhandler = \"h\"").unwrap();
        route.publish_to = Some(publish_to.iter().map(|s| s.to_string()).collect());
        let reserved = ReservedTopics::new(["errors"], ["h.diffs"]);
        Authority::new(&route, Arc::new(reserved), transactional)
    }

    fn publish(topic: &str) -> Output {
        Output::Publish(Publish {
            topic: topic.into(),
            key: None,
            payload: vec![],
            headers: vec![],
        })
    }

    fn http(headers: &[(&str, &str)]) -> Output {
        Output::Http(HttpRequest {
            method: HttpMethod::Post,
            url: "http://api.example.com/x".into(),
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            body: vec![],
        })
    }

    fn client() -> HttpClient {
        HttpClient::new(&HttpPolicy {
            allow: vec!["api.example.com".into()],
            ..HttpPolicy::default()
        })
        .unwrap()
    }

    fn reason(authority: &Authority, outputs: &[Output]) -> &'static str {
        authority
            .check(outputs, &client())
            .unwrap_err()
            .reason
            .as_str()
    }

    #[test]
    fn a_publish_must_be_named_by_the_list_and_not_reserved() {
        let a = authority(&["emails", "orders.*", "in.*"], false);
        let log = Output::Log(LogEntry {
            level: LogLevel::Info,
            text: "x".into(),
        });
        assert!(
            a.check(&[publish("emails"), publish("orders.new"), log], &client())
                .is_ok()
        );
        assert_eq!(reason(&a, &[publish("payments")]), "topic-not-allowed");
        // A pattern never reaches what sluice keeps for itself.
        for reserved in [
            "in.dlq",
            "errors",
            "h.diffs",
            "x.shadow-diffs",
            "__consumer_offsets",
        ] {
            assert_eq!(
                reason(&authority(&["*"], false), &[publish(reserved)]),
                "topic-reserved"
            );
        }
        assert_eq!(reason(&a, &[publish("in.dlq")]), "topic-reserved");
        for invalid in ["", "a\0b", "a b", &"x".repeat(250)] {
            assert_eq!(
                reason(&authority(&["*"], false), &[publish(invalid)]),
                "invalid-topic"
            );
        }
        // The first refused output fails the whole list, whatever comes before.
        let failure = a
            .check(
                &[publish("emails"), publish("__transaction_state")],
                &client(),
            )
            .unwrap_err();
        assert_eq!(failure.attempts, 0);
        assert!(
            failure.detail.contains("Kafka-internal"),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn nothing_is_allowed_by_an_empty_list() {
        let failure = authority(&[], false)
            .check(&[publish("emails")], &client())
            .unwrap_err();
        assert_eq!(failure.reason, Reason::TopicNotAllowed);
        assert!(
            failure.detail.contains("publish-to list []"),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn http_requests_are_checked_and_refused_in_a_transaction() {
        let a = authority(&[], false);
        assert!(a.check(&[http(&[("x-custom", "1")])], &client()).is_ok());
        assert_eq!(
            reason(&a, &[http(&[("Host", "internal")])]),
            "invalid-request"
        );
        assert_eq!(
            reason(&authority(&[], true), &[http(&[])]),
            "not-transactional"
        );
    }

    fn schedule(id: &str, topic: &str) -> Output {
        let Output::Publish(publish) = publish(topic) else {
            unreachable!()
        };
        Output::Schedule(Schedule {
            id: id.into(),
            due: 1,
            publish,
        })
    }

    #[test]
    fn a_timer_needs_an_id_and_a_topic_the_route_may_publish_to() {
        let a = authority(&["fired"], false);
        let cancel = Output::Cancel("t".into());
        assert!(
            a.check(&[schedule("t", "fired"), cancel], &client())
                .is_ok()
        );
        assert_eq!(
            reason(&a, &[schedule("t", "elsewhere")]),
            "topic-not-allowed"
        );
        assert_eq!(reason(&a, &[schedule("t", "in.dlq")]), "topic-reserved");
        assert_eq!(reason(&a, &[schedule("", "fired")]), "invalid-timer");
        assert_eq!(reason(&a, &[schedule("a\0b", "fired")]), "invalid-timer");
        let long = "é".repeat(MAX_TIMER_ID);
        let failure = a.check(&[Output::Cancel(long)], &client()).unwrap_err();
        assert_eq!(failure.reason, Reason::InvalidTimer);
        // The detail quotes a cut of the id, not the whole of it.
        assert!(failure.detail.len() < 200, "{}", failure.detail);
    }

    #[test]
    fn a_transaction_cannot_keep_or_cancel_a_timer() {
        let a = authority(&["fired"], true);
        for output in [schedule("t", "fired"), Output::Cancel("t".into())] {
            let failure = a.check(&[output], &client()).unwrap_err();
            assert_eq!(failure.reason, Reason::NotTransactional);
            assert!(failure.detail.contains("timer \"t\""), "{}", failure.detail);
        }
    }
}
