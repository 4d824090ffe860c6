//! `[[routes]]`: a topic, its handler, and how its messages and effects are run.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{
    Checked, Problem, broken, check_millis, check_range, check_semver, invalid, millis,
};
use super::{Config, distinct, is_handler_name};
use crate::topics::{self, ReservedTopics, TopicPattern};

/// What to do with a message its handler cannot decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalidInput {
    /// Send it to the dead-letter topic (default).
    #[default]
    DeadLetter,
    /// Log it and move on.
    Skip,
}

/// Which messages of a partition must wait for each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Same key in order, different keys concurrently (default).
    #[default]
    Key,
    /// One message at a time per partition.
    Partition,
    /// No order at all.
    Unordered,
}

/// What a dead letter does to the messages of its key that follow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDeadLetter {
    /// Nothing: they are handled as usual (default).
    #[default]
    Continue,
    /// Park the key: its later messages in the partition are dead-lettered
    /// behind it (`key-parked`) until an operator re-drives it; the parking
    /// outlives the process (it is read back from the dead-letter topic).
    ParkKey,
}

/// How a route's effects reach the outside world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Effects run before the offset is committed (default).
    #[default]
    AtLeastOnce,
    /// Outputs and consumed offsets commit in one Kafka transaction; only
    /// for routes whose outputs are all publishes.
    ExactlyOnce,
}

/// Retries of transient effect failures: exponential backoff, full jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RetryPolicy {
    /// First backoff ceiling.
    #[serde(
        rename = "initial-ms",
        with = "millis",
        default = "default_retry_initial"
    )]
    pub initial: Duration,
    /// Largest backoff ceiling.
    #[serde(
        rename = "max-interval-ms",
        with = "millis",
        default = "default_retry_max_interval"
    )]
    pub max_interval: Duration,
    /// Attempts in all, the first included.
    #[serde(default = "default_retry_max_attempts")]
    pub max_attempts: u32,
    /// Time an effect may spend retrying (waiting on an open breaker excluded).
    #[serde(
        rename = "max-elapsed-ms",
        with = "millis",
        default = "default_retry_max_elapsed"
    )]
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: default_retry_initial(),
            max_interval: default_retry_max_interval(),
            max_attempts: default_retry_max_attempts(),
            max_elapsed: default_retry_max_elapsed(),
        }
    }
}

/// The circuit breaker of each effect target (output topic, HTTP host).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Consecutive transient failures that open it.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long it stays open before a probe is let through.
    #[serde(rename = "open-ms", with = "millis", default = "default_breaker_open")]
    pub open: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: default_breaker_failures(),
            open: default_breaker_open(),
        }
    }
}

/// HTTP effects of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpPolicy {
    /// Hosts requests may go to: `host` (any port) or `host:port`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Whole-request timeout.
    #[serde(
        rename = "timeout-ms",
        with = "millis",
        default = "default_http_timeout"
    )]
    pub timeout: Duration,
    /// Connection timeout.
    #[serde(
        rename = "connect-timeout-ms",
        with = "millis",
        default = "default_http_connect_timeout"
    )]
    pub connect_timeout: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allow: Vec::new(),
            timeout: default_http_timeout(),
            connect_timeout: default_http_connect_timeout(),
        }
    }
}

/// One route: messages of a topic go to a handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Route {
    /// Input topic.
    pub topic: String,
    /// Handler name (a folder or file prefix in the handlers directory).
    pub handler: String,
    /// Pin a version instead of running the highest one.
    pub version: Option<String>,
    /// Dead-letter topic (default: `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// Topics the route's handler may publish to: names, or prefixes that
    /// end in `*` (`"orders.*"`; `"*"` alone for any). Required (`[]` for a
    /// handler that publishes nothing). Dead-letter, shadow-diff and
    /// Kafka-internal topics stay out of reach whatever this says.
    pub publish_to: Option<Vec<String>>,
    /// Dead-letter or skip messages the handler cannot decode.
    #[serde(default)]
    pub on_invalid_input: OnInvalidInput,
    /// Which messages wait for each other.
    #[serde(default)]
    pub ordering: Ordering,
    /// Messages in flight (received and not yet committed) per partition:
    /// bounds memory and what a crash can make sluice redo. At the cap the
    /// partition waits, and is paused if that lasts.
    #[serde(default = "default_partition_max_in_flight")]
    pub max_in_flight: usize,
    /// Messages of a partition whose effects run at once (default: as many
    /// as are in flight); bounds the pressure on effect targets.
    pub concurrency: Option<usize>,
    /// What a dead letter does to its key's later messages.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
    /// At-least-once or exactly-once.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Retries of transient effect failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breakers of the route's effect targets.
    #[serde(default)]
    pub breaker: BreakerPolicy,
    /// HTTP effects.
    #[serde(default)]
    pub http: HttpPolicy,
}

impl Route {
    /// The topics (and `*` prefixes) its handler may publish to.
    pub fn publish_to(&self) -> &[String] {
        self.publish_to.as_deref().unwrap_or_default()
    }

    /// The topic this route dead-letters to.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| Route::default_dead_letter_topic(&self.topic))
    }

    /// The dead-letter topic of a route on `topic` that names none.
    pub(crate) fn default_dead_letter_topic(topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// Checks what one route says on its own; `key` names a field of it.
    fn validate(&self, key: impl Fn(&str) -> String) -> Checked {
        if self.topic.trim().is_empty() {
            return invalid(key("topic"), Problem::Empty);
        }
        if !is_handler_name(&self.handler) {
            return invalid(
                key("handler"),
                Problem::NotHandlerName(self.handler.clone()),
            );
        }
        check_semver(key("version"), self.version.as_ref())?;
        if let Some(problem) = topics::name_problem(&self.topic) {
            return invalid(key("topic"), Problem::TopicName(problem));
        }
        if let Some(problem) = topics::name_problem(&self.dead_letter_topic()) {
            return invalid(key("dead-letter-topic"), Problem::TopicName(problem));
        }
        if self.dead_letter_topic() == self.topic {
            return broken(
                key("dead-letter-topic"),
                "must differ from the route's own topic",
            );
        }
        check_range(
            &key("max-in-flight"),
            self.max_in_flight as u64,
            1,
            1_000_000,
        )?;
        if let Some(concurrency) = self.concurrency {
            check_range(
                &key("concurrency"),
                concurrency as u64,
                1,
                self.max_in_flight as u64,
            )?;
        }
        let retry = &self.retry;
        check_millis(&key("retry.initial-ms"), retry.initial, 1, 3_600_000)?;
        check_millis(
            &key("retry.max-interval-ms"),
            retry.max_interval,
            millis::of(retry.initial),
            3_600_000,
        )?;
        check_range(
            &key("retry.max-attempts"),
            u64::from(retry.max_attempts),
            1,
            1_000_000,
        )?;
        check_millis(
            &key("retry.max-elapsed-ms"),
            retry.max_elapsed,
            1,
            86_400_000,
        )?;
        check_range(
            &key("breaker.failures"),
            u64::from(self.breaker.failures),
            1,
            1_000_000,
        )?;
        check_millis(&key("breaker.open-ms"), self.breaker.open, 1, 3_600_000)?;
        check_millis(&key("http.timeout-ms"), self.http.timeout, 1, 3_600_000)?;
        check_millis(
            &key("http.connect-timeout-ms"),
            self.http.connect_timeout,
            1,
            3_600_000,
        )?;
        if self.delivery == DeliveryMode::ExactlyOnce && !self.http.allow.is_empty() {
            return broken(
                key("http.allow"),
                "an exactly-once route can only publish: a transaction cannot undo an HTTP request",
            );
        }
        if let Some(bad) = self.http.allow.iter().find(|h| !is_allowed_host_pattern(h)) {
            return broken(
                key("http.allow"),
                format!("{bad:?} is not a host or host:port (no scheme, path or wildcard)"),
            );
        }
        Ok(())
    }
}

impl Config {
    pub(super) fn validate_routes(&self) -> Checked {
        if self.routes.is_empty() {
            return broken(
                "routes",
                "at least one [[routes]] entry (topic and handler) is required",
            );
        }
        let mut topics = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            route.validate(key)?;
            if !topics.insert(route.topic.as_str()) {
                return broken(
                    key("topic"),
                    format!(
                        "topic {:?} is routed twice; one route per topic",
                        route.topic
                    ),
                );
            }
            if route.delivery == DeliveryMode::ExactlyOnce {
                if self.is_embedded() {
                    return broken(
                        key("delivery"),
                        "exactly-once needs a broker with transactions; the embedded broker does not commit offsets in them",
                    );
                }
                if self.source.file.is_some() {
                    return broken(
                        key("delivery"),
                        "exactly-once needs a Kafka source: the offsets it commits are a consumer group's",
                    );
                }
            }
        }
        Ok(())
    }

    /// Every route's dead-letter topic, each once, in route order.
    pub fn dead_letter_topics(&self) -> Vec<String> {
        distinct(self.routes.iter().map(Route::dead_letter_topic))
    }

    /// The topics no handler may publish to: every route's dead-letter
    /// topic and every handler's shadow-diff topic, besides the reserved
    /// prefix and suffixes (`topics::ReservedTopics`).
    pub(crate) fn reserved_topics(&self) -> ReservedTopics {
        let dead_letters = self.dead_letter_topics();
        let shadow_diffs = self.shadow_diff_topics();
        ReservedTopics::new(
            dead_letters.iter().map(String::as_str),
            shadow_diffs.iter().map(String::as_str),
        )
    }

    /// Every route says where its handler may publish, in patterns that
    /// can match something a handler may reach.
    pub(super) fn validate_publish_to(&self) -> Checked {
        let reserved = self.reserved_topics();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}].publish-to");
            let Some(entries) = &route.publish_to else {
                return broken(
                    key,
                    "missing: list the topics this route's handler may publish to, as names or prefixes (\"orders.*\"; \"*\" for any), or [] if it publishes nothing",
                );
            };
            for entry in entries {
                let pattern = match TopicPattern::parse(entry) {
                    Ok(pattern) => pattern,
                    Err(problem) => return invalid(key, Problem::TopicName(problem)),
                };
                if let TopicPattern::Exact(topic) = &pattern
                    && let Some(why) = reserved.reason(topic)
                {
                    return broken(
                        key,
                        format!("{topic:?} is {why}: no handler may publish there"),
                    );
                }
            }
        }
        for name in self.routes.iter().map(|r| &r.handler) {
            let topic = self.shadow_diff_topic(name);
            if let Some(problem) = topics::name_problem(&topic) {
                return invalid(
                    format!("handlers.{name}.shadow-diff-topic"),
                    Problem::TopicName(problem),
                );
            }
        }
        Ok(())
    }
}

/// Whether an allow-list entry is a bare `host` or `host:port`.
fn is_allowed_host_pattern(entry: &str) -> bool {
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

fn default_partition_max_in_flight() -> usize {
    1000
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_max_interval() -> Duration {
    Duration::from_millis(10_000)
}
fn default_retry_max_attempts() -> u32 {
    10
}
fn default_retry_max_elapsed() -> Duration {
    Duration::from_millis(120_000)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open() -> Duration {
    Duration::from_millis(5000)
}
fn default_http_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_http_connect_timeout() -> Duration {
    Duration::from_millis(2000)
}
