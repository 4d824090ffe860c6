//! `sluice check`: what a host started with a config would find, without
//! starting one. For CI pipelines and init containers: every finding is one
//! line, and any problem fails the check.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{Config, StoreBackend};
use crate::registry::{self, VersionState};
use crate::runtime::Runtime;
use crate::source::kafka::consumer_client;

/// How long the brokers and the store may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing the check looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// It is as a host needs it.
    Fine(String),
    /// It would stop a host, or keep a handler out of service.
    Problem(String),
    /// A host would run, and miss something (a collector that does not
    /// answer); it does not fail the check.
    Warning(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Fine(what) => write!(f, "ok: {what}"),
            Finding::Problem(what) => write!(f, "problem: {what}"),
            Finding::Warning(what) => write!(f, "warning: {what}"),
        }
    }
}

/// The handlers directory as `sluice handlers` evaluates it: each route's
/// handler must have a version to serve, and no version may be rejected.
pub fn handlers(config: &Config) -> Vec<Finding> {
    let statuses = match Runtime::for_config(config)
        .map_err(|e| e.to_string())
        .and_then(|runtime| registry::evaluate(config, runtime).map_err(|e| e.to_string()))
    {
        Ok(statuses) => statuses,
        Err(error) => return vec![Finding::Problem(format!("handlers: {error}"))],
    };
    let mut findings = Vec::new();
    for status in &statuses {
        if let VersionState::Rejected { reason } = &status.state {
            findings.push(Finding::Problem(format!(
                "handler {} {} ({}) is rejected: {reason}",
                status.handler,
                status.version,
                status.file.display()
            )));
        }
    }
    for route in &config.routes {
        let serving = statuses
            .iter()
            .find(|s| s.handler == route.handler && s.state == VersionState::Active);
        findings.push(match serving {
            Some(status) => Finding::Fine(format!(
                "route {} -> handler {} {}",
                route.topic, status.handler, status.version
            )),
            None => Finding::Problem(format!(
                "route {}: handler {} has no version to serve",
                route.topic, route.handler
            )),
        });
    }
    findings
}

/// Whether the brokers answer (with the host consumer's own settings, so
/// security settings are checked too) and hold every routed topic.
pub fn brokers(config: &Config) -> Vec<Finding> {
    if config.is_embedded() {
        return vec![Finding::Fine(
            "brokers: embedded (the host starts its own)".into(),
        )];
    }
    let client = consumer_client(config, &config.brokers);
    let consumer: BaseConsumer<Heard> = match client.create_with_context(Heard::default()) {
        Ok(consumer) => consumer,
        Err(error) => return vec![Finding::Problem(format!("brokers: {error}"))],
    };
    let metadata = match consumer.fetch_metadata(None, ANSWER_TIMEOUT) {
        Ok(metadata) => metadata,
        Err(error) => {
            // The metadata error only says "transport failure"; the
            // client's own last error says why (a refused connection, a
            // failed TLS handshake, a SASL mechanism the broker lacks).
            // Errors arrive as events, served by a poll.
            let _ = consumer.poll(Duration::from_millis(100));
            let heard = consumer.context().last();
            let why = heard.map_or(String::new(), |reason| format!(" ({reason})"));
            return vec![Finding::Problem(format!(
                "brokers {} do not answer: {error}{why}",
                config.brokers
            ))];
        }
    };
    let mut findings = vec![Finding::Fine(format!(
        "brokers {} answer ({} brokers)",
        config.brokers,
        metadata.brokers().len()
    ))];
    for route in &config.routes {
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == route.topic && t.error().is_none());
        if !exists {
            findings.push(Finding::Problem(format!(
                "topic {} (routed) does not exist on the brokers",
                route.topic
            )));
        }
    }
    findings
}

/// Whether a PostgreSQL store answers. A SQLite store is a file the host
/// creates; the check does not create it.
pub async fn store(config: &Config) -> Vec<Finding> {
    if config.store.backend != StoreBackend::Postgres {
        return Vec::new();
    }
    let opened = tokio::time::timeout(
        ANSWER_TIMEOUT,
        crate::store::open(&config.store, &config.base_dir),
    )
    .await;
    vec![match opened {
        Ok(Ok(store)) => Finding::Fine(format!("store {} answers", store.describe())),
        Ok(Err(error)) => Finding::Problem(format!("store: {error}")),
        Err(_) => Finding::Problem(format!(
            "store: no answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }]
}

/// The client's last error, kept instead of logged: `check` says it once,
/// in its finding.
#[derive(Default)]
struct Heard(Mutex<Option<String>>);

impl Heard {
    fn last(&self) -> Option<String> {
        self.0.lock().expect("heard lock").clone()
    }
}

impl ClientContext for Heard {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let mut heard = self.0.lock().expect("heard lock");
        // "n/m brokers are down" says less than the error before it.
        let summary = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if !summary || heard.is_none() {
            *heard = Some(reason.to_owned());
        }
    }
}

impl ConsumerContext for Heard {}

/// Where the OTLP export goes, and (unless `offline`) whether the
/// receiver takes an empty export. One that does not is a warning: a host
/// runs without it, dropping what it cannot export.
pub async fn otlp(config: &Config, offline: bool) -> Vec<Finding> {
    let Ok(Some(export)) = config.otlp.export_here() else {
        return Vec::new();
    };
    let targets = [("spans", &export.traces), ("metrics", &export.metrics)];
    let mut findings = Vec::new();
    for (signal, url) in targets {
        let Some(url) = url else { continue };
        findings.push(match offline {
            true => Finding::Fine(format!("otlp: {signal} to {url} (not asked: --offline)")),
            false => match crate::telemetry::otlp::probe(&export, url).await {
                Ok(()) => Finding::Fine(format!("otlp: {signal} to {url}, which answers")),
                Err(problem) => Finding::Warning(format!(
                    "otlp: {signal} to {url}: {problem}; a host would run and drop them"
                )),
            },
        });
    }
    findings
}
